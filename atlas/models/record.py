"""What a model spec resolves to: the module plus everything needed to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import torch


class ModelFields(Protocol):
    """What :func:`atlas.models.load_model` reads of a model request: plain values. The configuration's
    ``ModelConfig`` has these fields and is accepted as it is; from Python, :class:`ModelRequest` needs no config."""

    @property
    def spec(self) -> str: ...
    @property
    def weights(self) -> Path | None: ...
    @property
    def classes(self) -> Path | None: ...
    @property
    def input_size(self) -> int | None: ...
    @property
    def channels(self) -> int | None: ...
    @property
    def mean(self) -> tuple[float, ...] | None: ...
    @property
    def std(self) -> tuple[float, ...] | None: ...
    @property
    def trust_pickle(self) -> bool: ...
    @property
    def pretrained(self) -> bool: ...


@dataclass(frozen=True)
class ModelRequest:
    """A model asked for in plain values (``ModelRequest("timm:resnet18", pretrained=False)``): the spec string, an
    optional state dict and class-name file, preprocessing overrides, and whether to trust a pickled model."""

    spec: str = "efficientnet-lite0"
    weights: Path | None = None
    classes: Path | None = None
    input_size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    trust_pickle: bool = False
    pretrained: bool = True


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become model input; travels with the model so callers never hard-code it."""

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], channels first (``[..., C, H, W]``) -> model input: ``(pixels - mean) / std`` per channel.

        The one place mean and std are applied, so collection, rendering, the checks and training feed a model alike.
        """
        mean, std = self._statistics(pixels)
        return (pixels - mean) / std

    def denormalise(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model input -> pixels in [0, 1]: the inverse of :meth:`normalise`."""
        mean, std = self._statistics(inputs)
        return inputs * std + mean

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = like.shape[-3]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"preprocessing {name} has {len(values)} values for {channels} channels")
        return _as_tensor(tuple(self.mean), like.dtype, like.device), _as_tensor(tuple(self.std), like.dtype, like.device)


@lru_cache(maxsize=64)
def _as_tensor(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[C, 1, 1]``, made once per dtype and device (a render calls normalise every step)."""
    return torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1)


@dataclass
class Source:
    """What a spec form yields before weights files and config overrides; ``preprocessing`` None means infer it."""

    module: torch.nn.Module
    preprocessing: Preprocessing | None
    labels: list[str] | None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A ready model: eval mode, weights loaded, preprocessing and labels final."""

    module: torch.nn.Module
    preprocessing: Preprocessing
    labels: list[str] | None
    spec: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return len(self.labels) if self.labels is not None else None
