"""What a model spec resolves to: the module plus everything needed to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch


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
