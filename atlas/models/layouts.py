"""The layer output layouts beyond channels first: channels last, tokens, and one element of a tuple or dict output.

Each maps positions exactly as :class:`~atlas.models.view.ChannelsFirst` does (row-major over the grid, ``spatial``
as ``[B, C, H, W]``), so sampling, attribution, fidelity's centre, the receptive field and the path check's spatial
mean read any of them unchanged. Which one a layer gets is decided in :mod:`atlas.models.layout_reading`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.models.view import LayerLayout, centre


def _require_rank(output: Any, ranks: tuple[int, ...], expected: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() not in ranks:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"layer output has shape {shape}; expected {expected}")
    return output


@dataclass(frozen=True)
class ChannelsLast:
    """``[B, H, W, C]`` (Swin's stages, timm's NHWC blocks) or ``[B, C]``."""

    name: str = "channels_last"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}

    def tensor(self, output: Any) -> Any:
        return output

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return (shape[0], shape[1]) if len(shape) == 3 else (1, 1)

    def channels(self, shape: tuple[int, ...]) -> int:
        return shape[-1]

    def _map(self, output: Any) -> torch.Tensor:
        return _require_rank(output, (2, 4), "[B, H, W, C] or [B, C]")

    def positions(self, output: Any) -> torch.Tensor:
        out = self._map(output)
        return out.flatten(1, 2) if out.dim() == 4 else out[:, None, :]

    def spatial(self, output: Any) -> torch.Tensor:
        out = self._map(output)
        return out.permute(0, 3, 1, 2) if out.dim() == 4 else out

    def at(self, output: Any, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        out = self._map(output)
        return out[rows, ys, xs] if out.dim() == 4 else out[rows]

    def place(self, output: Any, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        out = self._map(output)
        placed = torch.zeros_like(out)
        if out.dim() == 4:
            placed[rows, ys, xs] = values
        else:
            placed[rows] = values
        return placed

    def centre(self, output: Any) -> torch.Tensor:
        out = self.spatial(output)
        return centre(out) if out.dim() == 4 else out

    def spatial_mean(self, output: Any) -> torch.Tensor:
        out = self._map(output)
        return out.mean(dim=(1, 2)) if out.dim() == 4 else out


CLASS_TOKEN_POSITION = -1  # the (y, x) of a class-token row: it has no place on the patch grid


@dataclass(frozen=True)
class Tokens:
    """``[B, N, C]``: ``prefix`` leading tokens (class, distillation, registers) left out, then ``N - prefix`` patch
    tokens laid row-major on ``patch_grid``, so position ``y * W + x`` is the patch in row ``y``, column ``x``.

    ``at`` and ``place`` also take the position ``(CLASS_TOKEN_POSITION, CLASS_TOKEN_POSITION)``: the first prefix
    token, read only where :func:`require_class_token` has made sure that it is the class token."""

    prefix: int
    patch_grid: tuple[int, int]
    name: str = "tokens"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "prefix_tokens": self.prefix, "grid": list(self.patch_grid)}

    def tensor(self, output: Any) -> Any:
        return output

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return self.patch_grid

    def channels(self, shape: tuple[int, ...]) -> int:
        return shape[-1]

    def _tokens(self, output: Any) -> torch.Tensor:
        out = _require_rank(output, (3,), "[B, N, C] tokens")
        height, width = self.patch_grid
        if out.shape[1] != self.prefix + height * width:
            raise ValueError(f"layer output has {out.shape[1]} tokens; expected {self.prefix} prefix + {height} x {width} patches")
        return out

    def _index(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        patches = self.prefix + ys * self.patch_grid[1] + xs
        class_token = ys == CLASS_TOKEN_POSITION
        if self.prefix == 0 and bool(class_token.any()):
            raise ValueError("a class-token position on a token layer without prefix tokens")
        return torch.where(class_token, torch.zeros_like(patches), patches)

    def positions(self, output: Any) -> torch.Tensor:
        return self._tokens(output)[:, self.prefix :]

    def spatial(self, output: Any) -> torch.Tensor:
        patches = self.positions(output)
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *self.patch_grid)

    def at(self, output: Any, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        return self._tokens(output)[rows, self._index(ys, xs)]

    def place(self, output: Any, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        placed = torch.zeros_like(self._tokens(output))
        placed[rows, self._index(ys, xs)] = values
        return placed

    def centre(self, output: Any) -> torch.Tensor:
        return centre(self.spatial(output))

    def spatial_mean(self, output: Any) -> torch.Tensor:
        return self.positions(output).mean(dim=1)


@dataclass(frozen=True)
class Element:
    """One element of a tuple, list or dict output (``key``: its index or name), read by ``inner``; the other
    elements get zero tangents, so forward-mode attribution flows through the chosen one alone."""

    inner: LayerLayout
    key: int | str

    @property
    def name(self) -> str:
        return self.inner.name

    def to_json(self) -> dict[str, Any]:
        return {**self.inner.to_json(), "output": self.key}

    def tensor(self, output: Any) -> Any:
        if isinstance(output, dict):
            if self.key not in output:
                raise ValueError(f"layer output has keys {sorted(map(str, output))}; expected {self.key!r}")
            return output[self.key]
        if not isinstance(output, (tuple, list)) or not isinstance(self.key, int) or not 0 <= self.key < len(output):
            raise ValueError(f"layer output is a {type(output).__name__}; expected a tuple, list or dict with element {self.key!r}")
        return output[self.key]

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return self.inner.grid(shape)

    def channels(self, shape: tuple[int, ...]) -> int:
        return self.inner.channels(shape)

    def positions(self, output: Any) -> torch.Tensor:
        return self.inner.positions(self.tensor(output))

    def spatial(self, output: Any) -> torch.Tensor:
        return self.inner.spatial(self.tensor(output))

    def at(self, output: Any, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        return self.inner.at(self.tensor(output), rows, ys, xs)

    def place(self, output: Any, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, values: torch.Tensor) -> Any:
        chosen = self.inner.place(self.tensor(output), rows, ys, xs, values)
        if isinstance(output, dict):
            return {k: chosen if k == self.key else _zeros_like(v) for k, v in output.items()}
        return type(output)(chosen if k == self.key else _zeros_like(v) for k, v in enumerate(output))

    def centre(self, output: Any) -> torch.Tensor:
        return self.inner.centre(self.tensor(output))

    def spatial_mean(self, output: Any) -> torch.Tensor:
        return self.inner.spatial_mean(self.tensor(output))


def require_class_token(layout: LayerLayout, module: nn.Module, layer_name: str) -> None:
    """Make sure the layer's first token is the model's class token before class-token rows are read: a token layout
    with prefix tokens, in a model that has one (timm's and the tiny ViT's ``cls_token``, always put first)."""
    tokens = layout.inner if isinstance(layout, Element) else layout
    has_class_token = getattr(module, "cls_token", None) is not None
    if isinstance(tokens, Tokens) and tokens.prefix > 0 and has_class_token:
        return
    if not isinstance(tokens, Tokens):
        why = f"reads as {tokens.name}, which has no class token"
    elif tokens.prefix == 0:
        why = "has no prefix tokens (patch tokens only)"
    else:
        why = f"has {tokens.prefix} prefix tokens but the model has no cls_token to say the first is a class token"
    raise AtlasError(f"collect.class_token is true but layer {layer_name!r} {why}; set collect.class_token: false or choose a ViT block")


def _zeros_like(value: Any) -> Any:
    return torch.zeros_like(value) if isinstance(value, torch.Tensor) else value


def map_outputs(function: Callable[..., Any], output: Any, *others: Any) -> Any:
    """``function`` applied to each tensor of a layer output (a tensor, or a tuple, list or dict of them), with the
    matching parts of ``others``: how a tangent or a batch index is applied to an output of any structure."""
    if isinstance(output, torch.Tensor):
        return function(output, *others)
    if isinstance(output, dict):
        return {k: map_outputs(function, v, *(o[k] for o in others)) for k, v in output.items()}
    if isinstance(output, (tuple, list)):
        return type(output)(map_outputs(function, v, *(o[k] for o in others)) for k, v in enumerate(output))
    return output


def batch_size(output: Any) -> int:
    """How many images a layer output holds: the first tensor's leading dimension."""
    if isinstance(output, torch.Tensor):
        return len(output)
    parts = output.values() if isinstance(output, dict) else output
    return next(batch_size(part) for part in parts if isinstance(part, (torch.Tensor, dict, tuple, list)))


__all__ = ["CLASS_TOKEN_POSITION", "ChannelsLast", "Element", "Tokens", "batch_size", "map_outputs", "require_class_token"]
