"""Batched feature visualisation for any PyTorch CNN: parameterisations, random views, objectives, render.

In one call, as lucent's ``render_vis``: ``render_vis(model, "layer3:17")`` returns PIL images (:mod:`vis`).

Three small pieces (after lucid/lucent's ``optvis``) and one loop::

    from atlas.featurevis import Direction, fourier, render, render_channel

    result = render_channel(model, model.blocks[4], channel=17, size=96)   # one channel, defaults
    result = render(model, Direction.whitened(directions, whitening), fourier(3, 80), layer=model.blocks[4],
                    seeds=range(len(directions)), mean=mean, std=std, steps=512, tries=4)

``render`` takes a bare module (with ``layer=``, and ``mean``/``std`` or their defaults) or an
:class:`atlas.models.ModelView`, which carries the layer and the preprocessing.

Each image of a batch has its own target and its own seed, and renders the same
alone or in a batch. Besides ``fourier`` and ``pixels``: ``maco(channels, size,
estimate_spectrum(images, size))`` (phase only, MaCo) and ``accentuate(channels, size,
starts)`` with ``+ Proximity(starts, weight)`` (feature accentuation); ``render(...,
alpha=True)`` adds MaCo's transparency map. ``Log(Direction(...)) + Retrieval(all_directions,
own_rows)`` also pushes each icon away from the cells next to its own (what fidelity's top-1 asks).

An atlas's icons build on these: ``icons`` (a cell's objective, one batch of cells rendered), ``framing`` (the
canvas and the receptive-field crop), ``probe`` with ``choice`` (settings chosen by rendering a few cells),
``fidelity`` (icons fed back) and ``icon_files`` (a bundle's icons as tensors).
"""

from atlas.featurevis.objectives import (
    Channel,
    Direction,
    Lambda,
    Log,
    Neuron,
    Objective,
    Proximity,
    Retrieval,
    Scaled,
    Sum,
    TotalVariation,
    centre,
)
from atlas.featurevis.param import (
    AccentuateParam,
    FourierParam,
    ImageParam,
    MacoParam,
    ParamFactory,
    PixelParam,
    accentuate,
    decorrelate_colors,
    fourier,
    maco,
    pixels,
)
from atlas.featurevis.render import RenderOptions, RenderResult, render, render_channel, score_images
from atlas.featurevis.seeding import derive_seed, try_seeds
from atlas.featurevis.spectrum import estimate_spectrum
from atlas.featurevis.transforms import RandomViews, Transforms, resize
from atlas.featurevis.vis import render_vis
from atlas.models.capture import LayerCapture
from atlas.models.capture import run_to_layer as layer_output
from atlas.models.view import ModelView

__all__ = [
    "AccentuateParam",
    "Channel",
    "Direction",
    "FourierParam",
    "ImageParam",
    "Lambda",
    "LayerCapture",
    "Log",
    "MacoParam",
    "ModelView",
    "Neuron",
    "Objective",
    "ParamFactory",
    "PixelParam",
    "Proximity",
    "RandomViews",
    "RenderOptions",
    "RenderResult",
    "Retrieval",
    "Scaled",
    "Sum",
    "TotalVariation",
    "Transforms",
    "accentuate",
    "centre",
    "decorrelate_colors",
    "derive_seed",
    "estimate_spectrum",
    "fourier",
    "layer_output",
    "maco",
    "pixels",
    "render",
    "render_channel",
    "render_vis",
    "resize",
    "score_images",
    "try_seeds",
]
