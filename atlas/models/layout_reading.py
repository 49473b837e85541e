"""Which layout a layer's output has, decided for certain or asked for: never guessed.

The settings come first (``model.layout``, ``model.prefix_tokens``, ``model.output``); then what the output itself
shows when the input size changes (the dimensions that follow it are the spatial ones); then what the model says
(timm's ``feature_info``, ``num_prefix_tokens`` and ``patch_embed.grid_size``, and the widths of the layer's
convolutions, norms and linear layers). Where these leave two readings open, one line names the shape and the key.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.models.capture import zeros_input
from atlas.models.input_sizes import REFUSALS, declared_input_size, output_at, output_if_accepted
from atlas.models.layers import LayerInfo, trace_modules
from atlas.models.layouts import ChannelsLast, Element, Tokens
from atlas.models.record import LoadedModel
from atlas.models.view import CHANNELS_FIRST, LayerLayout, ModelView

AUTO = "auto"
LAYOUTS = ("channels_first", "channels_last", "tokens")
MAX_INFERRED_PREFIX = 5  # class, distillation and a few register tokens; more must be set (model.prefix_tokens)


class UnclearLayout(AtlasError):
    """A layer output with more than one reading (or none): the message names the shape, ``key`` the setting."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class LayoutRequest:
    """The settings: ``layout`` (auto or one of :data:`LAYOUTS`), ``prefix_tokens`` (auto or a count) and
    ``output`` (auto, or the index or name of the element of a tuple or dict output to read)."""

    layout: str = AUTO
    prefix_tokens: int | str = AUTO
    output: int | str = AUTO


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(["B", *map(str, shape)]) + "]"


def choose_element(layer_name: str, output: Any, setting: int | str) -> int | str | None:
    """Which element of a tuple, list or dict output to read (None: the output is one tensor)."""
    if isinstance(output, torch.Tensor):
        if setting != AUTO:
            raise UnclearLayout(
                f"model.output is {setting!r} but layer {layer_name!r} outputs one tensor {shape_text(tuple(output.shape[1:]))}; "
                "set model.output: auto",
                "model.output",
            )
        return None
    if isinstance(output, dict):
        tensors = [k for k, v in output.items() if isinstance(v, torch.Tensor)]
        described = ", ".join(f"{k}: {_describe(output[k])}" for k in output)
        if setting == AUTO and len(tensors) == 1:
            return tensors[0]
        if setting not in tensors:
            raise UnclearLayout(
                f"layer {layer_name!r} outputs a dict ({described}); set model.output to the key of the tensor to read", "model.output"
            )
        return setting
    if isinstance(output, (tuple, list)):
        indices = [k for k, v in enumerate(output) if isinstance(v, torch.Tensor)]
        described = ", ".join(f"{k}: {_describe(v)}" for k, v in enumerate(output))
        if setting == AUTO and len(indices) == 1:
            return indices[0]
        if setting not in indices:
            raise UnclearLayout(
                f"layer {layer_name!r} outputs a {type(output).__name__} of {len(output)} ({described}); "
                "set model.output to the index of the tensor to read",
                "model.output",
            )
        return setting
    raise UnclearLayout(
        f"layer {layer_name!r} outputs a {type(output).__name__}, not a tensor; choose another layer (model.layer)", "model.layer"
    )


def _describe(value: Any) -> str:
    return shape_text(tuple(value.shape[1:])) if isinstance(value, torch.Tensor) else type(value).__name__


def tensor_layout(
    module: nn.Module,
    layer_name: str,
    layer: nn.Module,
    shape: tuple[int, ...],
    request: LayoutRequest,
    resized: Callable[[], tuple[int, ...] | None] = lambda: None,
) -> LayerLayout:
    """The layout of a layer output tensor of ``shape`` (batch left out). ``resized``: the same tensor's shape at
    another input size, or None when the model accepts no other size (asked only when the settings do not decide)."""
    rank, text = len(shape), shape_text(shape)
    if rank == 1 and request.layout != "tokens":
        return CHANNELS_FIRST
    if rank == 3:
        if request.layout == "channels_first":
            return CHANNELS_FIRST
        if request.layout == "channels_last":
            return ChannelsLast()
        if request.layout == "tokens":
            raise UnclearLayout(
                f"model.layout tokens reads [B, N, C], but layer {layer_name!r} outputs {text}; set model.layout", "model.layout"
            )
        return _map_layout(module, layer_name, layer, shape, resized)
    if rank == 2:
        if request.layout in ("channels_first", "channels_last"):
            raise UnclearLayout(
                f"model.layout {request.layout} reads a 4-D map, but layer {layer_name!r} outputs {text}; set model.layout: tokens",
                "model.layout",
            )
        return _token_layout(module, layer_name, shape, request.prefix_tokens, resized)
    raise UnclearLayout(
        f"layer {layer_name!r} outputs {text}, which is not [B, C, H, W], [B, H, W, C], [B, N, C] or [B, C]; "
        "choose another layer (model.layer)",
        "model.layer",
    )


def _map_layout(
    module: nn.Module, layer_name: str, layer: nn.Module, shape: tuple[int, ...], resized: Callable[[], tuple[int, ...] | None]
) -> LayerLayout:
    """A 4-D output: the dimensions that follow the input size are the grid; else the model's channel widths."""
    other = resized()
    if other is not None and len(other) == 3:
        changed = [axis for axis in range(3) if shape[axis] != other[axis]]
        if changed == [1, 2]:
            return CHANNELS_FIRST
        if changed == [0, 1]:
            return ChannelsLast()
    first, last = _channel_votes(module, layer_name, layer, shape)
    if first and not last:
        return CHANNELS_FIRST
    if last and not first:
        return ChannelsLast()
    raise UnclearLayout(
        f"layer {layer_name!r} outputs {shape_text(shape)}: its channels could be {shape[0]} (channels first) or {shape[2]} "
        "(channels last) and the model does not say which; set model.layout to channels_first or channels_last",
        "model.layout",
    )


def _channel_votes(module: nn.Module, layer_name: str, layer: nn.Module, shape: tuple[int, ...]) -> tuple[bool, bool]:
    """Whether the model's widths point at channels first, at channels last: timm's ``feature_info`` for this layer,
    and the layer's convolutions and 2-D norms (channels first) or linear layers and last-dimension LayerNorms."""
    leading, trailing = shape[0], shape[2]
    first = last = False

    def vote(width: int, axis: str | None) -> None:
        nonlocal first, last
        if leading == trailing:
            return
        if width == leading and axis in (None, "first"):
            first = True
        if width == trailing and axis in (None, "last"):
            last = True

    for info in getattr(module, "feature_info", None) or []:
        if isinstance(info, dict) and info.get("module") == layer_name and isinstance(info.get("num_chs"), int):
            vote(info["num_chs"], None)
    for sub in layer.modules():
        if isinstance(sub, nn.Conv2d):
            vote(sub.out_channels, "first")
        elif isinstance(sub, nn.BatchNorm2d):
            vote(sub.num_features, "first")
        elif isinstance(sub, nn.LayerNorm) and len(sub.normalized_shape) == 1:
            vote(sub.normalized_shape[0], "first" if type(sub).__name__.endswith("2d") else "last")  # timm's LayerNorm2d
        elif isinstance(sub, nn.Linear):
            vote(sub.out_features, "last")
    return first, last


def _token_layout(
    module: nn.Module, layer_name: str, shape: tuple[int, ...], setting: int | str, resized: Callable[[], tuple[int, ...] | None]
) -> Tokens:
    """``[B, N, C]``: the prefix from the setting, the model's ``num_prefix_tokens``, or the one small count that
    leaves a square (at both input sizes when the model takes another); the grid from ``patch_embed`` or the square."""
    count, width = shape
    text = shape_text(shape)
    declared = getattr(module, "num_prefix_tokens", None)
    embed_grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)
    embed_patches = math.prod(embed_grid) if embed_grid is not None and len(tuple(embed_grid)) == 2 else None
    if isinstance(setting, int):
        prefix = setting
    elif embed_patches == count:
        prefix = 0  # exactly the patch embedding's grid: before the prefix tokens are put in front
    elif isinstance(declared, int):
        prefix = declared
    else:
        other = resized()
        if other is not None and (len(other) != 2 or other[0] == count) and other[-1] != width:
            raise UnclearLayout(f"layer {layer_name!r} outputs {text}, not tokens; set model.layout", "model.layout")
        candidates = [p for p in range(min(MAX_INFERRED_PREFIX, count - 1) + 1) if _side(count - p) is not None]
        if other is not None and len(other) == 2 and other[0] != count:
            candidates = [p for p in candidates if _side(other[0] - p) is not None]
        if len(candidates) != 1:
            read = "no" if not candidates else " or ".join(map(str, candidates))
            raise UnclearLayout(
                f"layer {layer_name!r} outputs {text}: {read} leading non-patch tokens leave a square grid; set model.prefix_tokens",
                "model.prefix_tokens",
            )
        (prefix,) = candidates
    patches = count - prefix
    if embed_grid is not None and embed_patches == patches:
        return Tokens(prefix, (int(embed_grid[0]), int(embed_grid[1])))
    side = _side(patches)
    if side is None:
        raise UnclearLayout(
            f"layer {layer_name!r} outputs {text}: {patches} tokens after {prefix} prefix tokens do not make a square grid; "
            "set model.prefix_tokens",
            "model.prefix_tokens",
        )
    return Tokens(prefix, (side, side))


def _side(patches: int) -> int | None:
    side = math.isqrt(patches) if patches > 0 else 0
    return side if side > 0 and side * side == patches else None


def read_layout(view: ModelView, request: LayoutRequest) -> LayerLayout:
    """The layout of ``view``'s layer: one dummy forward at the model's input size, and one at twice it when the
    settings and the model's metadata leave the reading open."""
    size = view.preprocessing.input_size
    output = output_at(view, size)
    key = choose_element(view.layer_name, output, request.output)

    def pick(raw: Any) -> torch.Tensor:
        return raw if key is None else raw[key]

    def resized() -> tuple[int, ...] | None:
        other = output_if_accepted(view, 2 * size)
        if other is None:
            return None
        try:
            return tuple(pick(other).shape[1:])
        except (IndexError, KeyError, TypeError, AttributeError):
            return None

    layout = tensor_layout(view.module, view.layer_name, view.layer, tuple(pick(output).shape[1:]), request, resized)
    return layout if key is None else Element(layout, key)


def view_with_layout(model: LoadedModel, layer_name: str, request: LayoutRequest = LayoutRequest()) -> ModelView:
    """The view of ``model`` at ``layer_name`` reading the layer's output in its layout (see :func:`read_layout`)."""
    view = ModelView.of(model, layer_name)
    layout = read_layout(view, request)
    return view if layout == CHANNELS_FIRST else ModelView(model, layer_name, view.layer, layout)


def shapes_at_twice_the_size(model: LoadedModel) -> dict[str, tuple[int, ...] | None]:
    """Every module's output shape for an input twice the model's size (empty for a model that takes only its own):
    the dimensions that changed are the spatial ones."""
    module, prep = model.module, model.preprocessing
    size = 2 * prep.input_size
    declared = declared_input_size(module)
    if declared is not None and declared != size:
        return {}
    try:
        return {t.name: t.shape for t in trace_modules(module, zeros_input(module, prep.channels, size))}
    except REFUSALS:
        return {}


def layer_readings(model: LoadedModel, infos: list[LayerInfo]) -> dict[str, str]:
    """``atlas layers``' layout column: each listed layer's reading with the default settings, or the key to set.

    One more traced forward at twice the input size (skipped for a model that accepts only its own size)."""
    module = model.module
    resized = shapes_at_twice_the_size(model)
    modules = dict(module.named_modules())
    readings = {}
    for info in infos:
        if info.shape is None:
            continue
        try:
            at_twice = functools.partial(resized.get, info.name)
            layout = tensor_layout(module, info.name, modules[info.name], info.shape, LayoutRequest(), at_twice)
            readings[info.name] = layout_text(layout)
        except UnclearLayout as err:
            readings[info.name] = f"set {err.key}"
    return readings


def layout_text(layout: LayerLayout) -> str:
    """How ``atlas layers`` shows a reading: ``channels_first``, ``channels_last``, ``tokens 1+14x14``."""
    described = layout.to_json()
    text = str(described["name"])
    if "prefix_tokens" in described:
        text += f" {described['prefix_tokens']}+{'x'.join(map(str, described['grid']))}"
    return text


__all__ = [
    "LAYOUTS",
    "LayoutRequest",
    "UnclearLayout",
    "choose_element",
    "layer_readings",
    "layout_text",
    "read_layout",
    "shape_text",
    "shapes_at_twice_the_size",
    "tensor_layout",
    "view_with_layout",
]
