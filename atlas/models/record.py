"""What a model spec resolves to: the module plus everything needed to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become model input; travels with the model so callers never hard-code it."""

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


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
