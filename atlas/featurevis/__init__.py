"""Batched feature visualisation for any PyTorch CNN: parameterisations, random views, objectives, render.

Three small pieces (after lucid/lucent's ``optvis``) and one loop::

    from atlas.featurevis import Direction, fourier, render, render_channel

    result = render_channel(model, model.blocks[4], channel=17, size=96)   # one channel, defaults
    result = render(model, layer, Direction.whitened(directions, whitening), fourier(3, 80),
                    seeds=range(len(directions)), mean=mean, std=std, steps=512, tries=4)

Each image of a batch has its own target and its own seed, and renders the same
alone or in a batch.
"""

from atlas.featurevis.capture import LayerCapture, layer_output
from atlas.featurevis.objectives import (
    Channel,
    Direction,
    Lambda,
    Neuron,
    Objective,
    Scaled,
    Sum,
    TotalVariation,
    centre,
)
from atlas.featurevis.param import (
    FourierParam,
    ImageParam,
    ParamFactory,
    PixelParam,
    decorrelate_colors,
    fourier,
    pixels,
)
from atlas.featurevis.render import RenderResult, render, render_channel, score_images
from atlas.featurevis.seeding import derive_seed, try_seeds
from atlas.featurevis.transforms import RandomViews, Transforms, resize

__all__ = [
    "Channel",
    "Direction",
    "FourierParam",
    "ImageParam",
    "Lambda",
    "LayerCapture",
    "Neuron",
    "Objective",
    "ParamFactory",
    "PixelParam",
    "RandomViews",
    "RenderResult",
    "Scaled",
    "Sum",
    "TotalVariation",
    "Transforms",
    "centre",
    "decorrelate_colors",
    "derive_seed",
    "fourier",
    "layer_output",
    "pixels",
    "render",
    "render_channel",
    "resize",
    "score_images",
    "try_seeds",
]
