"""Feature visualisation in one call, as lucent's ``render.render_vis(model, "mixed4a:476")`` is, on any module.

    images = render_vis(model, "layer3:17")                        # one channel: PIL images
    images = render_vis(model, "blocks.2", direction=vector)        # a direction in the layer's channels
    images = render_vis(model, "blocks.2")                          # the whole layer (its mean squared activation)
    images = render_vis(model, my_objective, layer="blocks.2")      # an Objective, or any fn(activation, pixels) -> [B]

This is a front door, not a second loop: it builds a :class:`ModelView` (preprocessing from the arguments, else the
model's timm ``pretrained_cfg``, else :meth:`ModelView.of_module`'s defaults; the layer's layout read as a run reads
it, so channels-last maps and transformer tokens work), an objective from :mod:`atlas.featurevis.objectives`, and
calls :func:`atlas.featurevis.render.render` with the same parameterisation, seeds and batching as an atlas's icons:
image ``k`` is seeded by ``seed + k`` and renders the same alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Unpack

import torch
from PIL import Image
from torch import nn

from atlas.bundle.writer import icon_picture
from atlas.errors import AtlasError
from atlas.featurevis.objectives import ArrayLike, Channel, Direction, Lambda, Objective
from atlas.featurevis.param import fourier
from atlas.featurevis.render import RenderKeywords, render
from atlas.models.input_sizes import only_input_size
from atlas.models.layout_reading import AUTO, LayoutRequest, read_layout
from atlas.models.view import CHANNELS_FIRST, ModelView

Target = str | Objective | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_SIZE = 128  # lucent's image size


def render_vis(
    model: nn.Module | ModelView,
    target: Target,
    *,
    layer: str | None = None,
    direction: ArrayLike | None = None,
    images: int = 1,
    seed: int = 0,
    size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
    layout: str = AUTO,
    **options: Unpack[RenderKeywords],
) -> list[Image.Image]:
    """``images`` renders of ``target`` at a layer of ``model``, as PIL images (RGB, or L for one-channel models).

    ``target``: ``"layer:channel"``; a layer name alone (with ``direction=``: that vector at the layer's centre
    position, as atlas icons are; without: the whole layer, its mean squared activation); or an
    :class:`Objective` or any ``fn(activation, pixels) -> [B]`` with ``layer=`` (the activation is channels first,
    ``[B, C, H, W]``, whatever the layer's own layout). ``size``: the image's side (default: the model's input
    size up to 128). ``mean``/``std``/``channels`` and ``input_size`` (the size the model is fed; default: the image's
    own, or the one size a model takes): the model's preprocessing where it cannot be read from the model (a timm
    model carries its own). ``layout``: ``auto`` or ``channels_first``, ``channels_last``,
    ``tokens``. Any option of :func:`render` may follow (``steps``, ``tries``, ``lr``, ``transforms``, ...).
    """
    if images < 1:
        raise AtlasError(f"render_vis: images={images}; ask for at least 1")
    layer_name, objective = objective_at(target, layer, direction)
    if isinstance(model, ModelView):
        if mean is not None or std is not None or channels is not None or layout != AUTO:
            raise AtlasError(
                "render_vis: a ModelView carries its preprocessing and layout; pass mean, std, channels and layout only with a module"
            )
        if model.layer_name != layer_name:
            raise AtlasError(f"render_vis: the ModelView is at {model.layer_name!r}, the target at {layer_name!r}; name the view's layer")
        view = model
    else:
        view = module_view(model, layer_name, mean, std, channels, options.get("input_size"), layout)
    if isinstance(objective, Channel) and int(objective.indices.max()) >= view.channels:
        raise AtlasError(f"render_vis: {layer_name} has {view.channels} channels (0 to {view.channels - 1}); {target!r} asks for another")
    seeds = list(range(seed, seed + images))
    prep = view.preprocessing
    if "input_size" not in options:
        options["input_size"] = only_input_size(view)  # a model that takes one size sees every view at it
    side = size or min(prep.input_size, DEFAULT_SIZE)
    result = render(view, objective, fourier(prep.channels, side), seeds=seeds, **options)
    return [icon_picture(image) for image in result.images.cpu().numpy()]


def objective_at(target: Target, layer: str | None, direction: ArrayLike | None) -> tuple[str, Objective]:
    """The layer a target names and its objective (see :func:`render_vis` for the forms)."""
    if not isinstance(target, str):
        if layer is None:
            raise AtlasError("render_vis: an objective needs layer= (the name of the layer it reads)")
        if direction is not None:
            raise AtlasError("render_vis: give either an objective or direction=, not both")
        return layer, target if isinstance(target, Objective) else Lambda(target, getattr(target, "__name__", "objective"))
    if layer is not None:
        raise AtlasError(f"render_vis: {target!r} names its layer already; leave out layer={layer!r}")
    name, colon, channel = target.rpartition(":")
    if colon and channel.strip().isdigit():
        if direction is not None:
            raise AtlasError(f"render_vis: {target!r} names a channel; give either a channel or direction=, not both")
        return name, Channel(int(channel))
    if colon and not channel.strip().isdigit():
        raise AtlasError(f"render_vis: {target!r}: the part after ':' must be a channel number, as in 'layer3:17'")
    if direction is not None:
        return target, Direction(direction)
    return target, Lambda(lambda activation, pixels: activation.pow(2).mean(dim=tuple(range(1, activation.ndim))), "layer")


def module_view(
    module: nn.Module,
    layer: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    channels: int | None,
    input_size: int | tuple[int, int] | None,
    layout: str,
) -> ModelView:
    """A view of ``module`` at ``layer`` with its preprocessing and the layer's layout read as a run reads it.

    What is not given comes from a timm model's ``pretrained_cfg`` (input size and channels here; mean and std in
    :meth:`ModelView.of_module`), else of_module's defaults."""
    if (mean is None) != (std is None):
        raise AtlasError("render_vis: give mean= and std= together (the model's input normalisation), or neither")
    config = getattr(module, "pretrained_cfg", None)
    timm_size = config.get("input_size") if isinstance(config, Mapping) else None
    view = ModelView.of_module(
        module,
        layer,
        mean=mean,
        std=std,
        channels=channels or (int(timm_size[0]) if timm_size else None),
        input_size=input_size if isinstance(input_size, int) else (int(timm_size[-1]) if timm_size else None),
    )
    reading = read_layout(view, LayoutRequest(layout=layout))
    return view if reading == CHANNELS_FIRST else ModelView(view.model, view.layer_name, view.layer, reading)
