"""What every stage of one run may read: the validated config, the bundle, the model's facts, the images, the cluster.

Made once by :func:`atlas_pipelines.commands.run.run_atlas` and frozen: stages hand each other
nothing through it; they read each other's outputs from the bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from atlas.bundle import BundleWriter
from atlas.config import AtlasConfig
from atlas.devices import CPU
from atlas.images.source import ImageSource, Shard
from atlas.models import LoadedModel
from atlas_pipelines.engine.executor import Executor


@dataclass(frozen=True)
class RunInputs:
    config: AtlasConfig
    bundle: BundleWriter
    model: LoadedModel
    layer: torch.nn.Module
    layer_shape: tuple[int, ...]  # (C, H, W), or (C,) for a flat layer
    n_classes: int  # 0 without attribution
    labels: list[str] | None
    source: ImageSource
    shards: list[Shard]
    executor: Callable[[], Executor]  # starts the cluster on first use
    log: Callable[[str], None]
    device: torch.device = CPU  # resolved from config.device; workers move their model there

    @property
    def layer_hw(self) -> tuple[int, int]:
        return (self.layer_shape[1], self.layer_shape[2]) if len(self.layer_shape) == 3 else (1, 1)
