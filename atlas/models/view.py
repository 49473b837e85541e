"""A model seen at one layer: how pixels become its input, how to run it to the layer, how to read what comes out.

Every part of atlas that feeds a model (collection, attribution, rendering, fidelity, the receptive field, the
path check, atlas classes) goes through a :class:`ModelView`, so normalisation, the truncated forward pass and
the reading of the layer's output are written once. Reading the output is an explicit adapter,
:class:`LayerLayout`: callers ask it for positions x channels, the grid, the centre position or the spatial
mean and never index the raw tensor, so another output layout (channels last, tokens with prefix tokens,
tuple or dict outputs) plugs in as one more adapter without touching them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import torch
from torch import nn

from atlas.models.capture import LayerCapture, run_to_layer, zeros_input
from atlas.models.layers import layer_name_of, resolve_layer
from atlas.models.record import LoadedModel, Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 224  # where a bare module's grid is measured when no size is given (torchvision's ImageNet size)


class LayerLayout(Protocol):
    """How a layer's raw output maps to positions x channels; ``shape`` arguments leave out the batch.

    Positions are numbered row-major over the grid: position ``y * W + x`` is grid cell ``(y, x)``.
    """

    @property
    def name(self) -> str:
        """What this layout is called; no manifest key records it yet (every run reads channels first)."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``layer_layout``: the name and whatever else fixes the reading (prefix, grid, element)."""
        ...

    def tensor(self, output: Any) -> Any:
        """The tensor read from a raw output: itself, or the chosen element of a tuple or dict output."""
        ...

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(H, W)``: the positions an image gives; ``(1, 1)`` for a layer without space."""
        ...

    def channels(self, shape: tuple[int, ...]) -> int:
        """The length of one position's activation vector."""
        ...

    def positions(self, output: Any) -> torch.Tensor:
        """``[B, H * W, C]``: every position's activation vector, row-major."""
        ...

    def spatial(self, output: Any) -> torch.Tensor:
        """``[B, C, H, W]`` (``[B, C]`` for a layer without space): the map render's objectives read."""
        ...

    def at(self, output: Any, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """``[R, C]``: row ``r`` is image ``rows[r]`` at grid cell ``(ys[r], xs[r])``."""
        ...

    def place(self, output: Any, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, values: torch.Tensor) -> Any:
        """Zeros shaped like ``output`` with ``values[r]`` at image ``rows[r]``, cell ``(ys[r], xs[r])`` (a tangent)."""
        ...

    def centre(self, output: Any) -> torch.Tensor:
        """``[B, C]``: the activation at the centre position (what icons are optimised for)."""
        ...

    def spatial_mean(self, output: Any) -> torch.Tensor:
        """``[B, C]``: the mean over every position."""
        ...


def centre(activation: torch.Tensor, window: int = 1) -> torch.Tensor:
    """``[B, C]``: the activation of a ``[B, C, H, W]`` map at the centre position (mean over a ``window x window`` block there)."""
    height, width = activation.shape[-2:]
    window_y, window_x = min(window, height), min(window, width)
    top, left = max(height // 2 - window_y // 2, 0), max(width // 2 - window_x // 2, 0)
    return activation[:, :, top : top + window_y, left : left + window_x].mean(dim=(2, 3))


@dataclass(frozen=True)
class ChannelsFirst:
    """``[B, C, H, W]`` (a convolutional map) or ``[B, C]`` (a flat layer: one position)."""

    name: str = "channels_first"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}

    def tensor(self, output: Any) -> Any:
        return output

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return (shape[1], shape[2]) if len(shape) == 3 else (1, 1)

    def channels(self, shape: tuple[int, ...]) -> int:
        return shape[0]

    def positions(self, output: torch.Tensor) -> torch.Tensor:
        _check(output)
        return output.flatten(2).transpose(1, 2) if output.dim() == 4 else output[:, None, :]

    def spatial(self, output: torch.Tensor) -> torch.Tensor:
        return output  # already channels first: objectives see exactly the layer's output

    def at(self, output: torch.Tensor, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        _check(output)
        return output[rows, :, ys, xs] if output.dim() == 4 else output[rows]

    def place(self, output: torch.Tensor, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        _check(output)
        placed = torch.zeros_like(output)
        if output.dim() == 4:
            placed[rows, :, ys, xs] = values
        else:
            placed[rows] = values
        return placed

    def centre(self, output: torch.Tensor) -> torch.Tensor:
        _check(output)
        return centre(output) if output.dim() == 4 else output

    def spatial_mean(self, output: torch.Tensor) -> torch.Tensor:
        flat = output.flatten(2) if output.dim() > 2 else output.unsqueeze(-1)
        return flat.mean(-1)


def _check(output: Any) -> None:
    if not isinstance(output, torch.Tensor) or output.dim() not in (2, 4):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"layer output has shape {shape}; expected [B, C, H, W] or [B, C]")


CHANNELS_FIRST = ChannelsFirst()


@dataclass(frozen=True, eq=False)
class ModelView:
    """A loaded model, one of its layers, and the adapter that reads that layer's output.

    ``layer_shape`` (and with it ``grid`` and ``channels``) comes from one dummy forward, made the first time it
    is asked for and kept, so a process that holds one view measures its layer once.
    """

    model: LoadedModel
    layer_name: str
    layer: nn.Module = field(compare=False)
    layout: LayerLayout = CHANNELS_FIRST

    @classmethod
    def of(cls, model: LoadedModel, layer_name: str, layout: LayerLayout = CHANNELS_FIRST) -> ModelView:
        """The view of ``model`` at the layer called ``layer_name`` (an unknown name is a one-line error)."""
        return cls(model, layer_name, resolve_layer(model, layer_name), layout)

    @classmethod
    def of_module(
        cls,
        module: nn.Module,
        layer: nn.Module | str,
        *,
        preprocessing: Preprocessing | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: int | None = None,
        input_size: int | None = None,
        layout: LayerLayout = CHANNELS_FIRST,
    ) -> ModelView:
        """A view of a bare ``nn.Module`` (a notebook's model) and one of its layers (the module or its name).

        Without ``preprocessing``: input channels default to the first convolution's, mean/std to a timm model's
        own, else ImageNet's (3 channels) or 0.5 (any other count), the input size to 224.
        """
        if preprocessing is None:
            channels = channels or input_channels(module, fallback=len(mean) if mean is not None else None)
            if mean is None or std is None:
                mean, std = default_mean_std(module, channels)
            preprocessing = Preprocessing(input_size or DEFAULT_INPUT_SIZE, channels, tuple(mean), tuple(std))
        model = LoadedModel(module=module, preprocessing=preprocessing, labels=None, spec=type(module).__name__)
        if isinstance(layer, str):
            return cls.of(model, layer, layout)
        return cls(model, layer_name_of(module, layer), layer, layout)

    @property
    def module(self) -> nn.Module:
        return self.model.module

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model.preprocessing

    @property
    def device(self) -> torch.device:
        """Where the weights live (the CPU for a module without parameters): inputs are moved there."""
        first = next(self.module.parameters(), None)
        return torch.device("cpu") if first is None else first.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' floating dtype (float32 for a module without floating parameters)."""
        first = next(self.module.parameters(), None)
        return first.dtype if first is not None and first.is_floating_point() else torch.float32

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (``[..., C, H, W]``) -> model input: ``(pixels - mean) / std`` per channel."""
        return self.preprocessing.normalise(pixels)

    def capture(self, stop: bool = True) -> LayerCapture:
        """``with view.capture() as capture: out = capture(inputs)``: the raw layer output, nothing after it with ``stop``."""
        return LayerCapture(self.layer, module=self.module, store=False, stop=stop, name=self.layer_name)

    def run_to_layer(self, inputs: torch.Tensor, stop: bool = True) -> Any:
        """The layer's raw output for model ``inputs`` (already normalised); gradients flow if enabled."""
        return run_to_layer(self.module, self.layer, inputs, stop)

    @cached_property
    def layer_shape(self) -> tuple[int, ...]:
        """The shape of the tensor the layout reads, without the batch, at the model's input size: ``(C, H, W)`` or
        ``(C,)`` for channels first, ``(H, W, C)`` channels last, ``(N, C)`` tokens."""
        prep = self.preprocessing
        with torch.no_grad():
            output = self.layout.tensor(self.run_to_layer(zeros_input(self.module, prep.channels, prep.input_size)))
        return tuple(output.shape[1:])

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)``: the positions one image gives at the layer."""
        return self.layout.grid(self.layer_shape)

    @property
    def channels(self) -> int:
        return self.layout.channels(self.layer_shape)

    def positions(self, output: Any) -> torch.Tensor:
        """``[B, H * W, C]``: every position of a raw layer output, row-major."""
        return self.layout.positions(output)


def input_channels(module: nn.Module, fallback: int | None = None) -> int:
    """A bare module's input channels: its first convolution's, else ``fallback`` (the length of a given mean)."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub.in_channels
    if fallback is not None:
        return fallback
    raise ValueError("could not infer the input channels (no Conv2d found); pass channels=")


def default_mean_std(module: nn.Module, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std from a timm model's ``pretrained_cfg`` when present; else ImageNet (3 channels) or 0.5/0.5."""
    config = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    if mean is not None and std is not None and len(mean) == channels:
        return tuple(mean), tuple(std)
    return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels, (0.5,) * channels)


__all__ = ["CHANNELS_FIRST", "ChannelsFirst", "LayerLayout", "ModelView", "centre", "default_mean_std", "input_channels"]
