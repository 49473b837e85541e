"""What every stage of one run may read: the validated config, the bundle, the model view, the images, the cluster.

Made once by :func:`atlas_pipelines.commands.run.run_atlas` and frozen: stages hand each other
nothing through it; they read each other's outputs from the bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from atlas.bundle import BundleWriter
from atlas.config import AtlasConfig
from atlas.devices import CPU
from atlas.images.source import ImageSource, Shard
from atlas.models import LoadedModel, ModelView
from atlas.storage import Location
from atlas_pipelines.engine.executor import Executor


@dataclass(frozen=True)
class SameRows:
    """Where another layer's atlas takes its rows from (``model.layers``): the main bundle's store, whose rows it
    reads again at its own layer, each position mapped to its grid (:func:`atlas.collect.sampling.map_positions`)."""

    store: Location  # the main bundle's activations/
    grid: tuple[int, int]  # the main layer's (H, W)
    rows_per_shard: int  # the main store's: a mapped shard holds as many rows
    key: str | None  # the main bundle's collect key: new main rows make this layer's stale


@dataclass(frozen=True)
class RunInputs:
    config: AtlasConfig
    bundle: BundleWriter
    view: ModelView  # this process's model (shared with its tasks under --scheduler sync) at the atlas layer
    n_classes: int  # 0 without attribution
    labels: list[str] | None
    source: ImageSource
    shards: list[Shard]
    executor: Callable[[], Executor]  # starts the cluster on first use
    log: Callable[[str], None]
    device: torch.device = CPU  # resolved from config.device; workers move their model there
    same_rows: SameRows | None = None  # another layer's atlas of the main bundle's rows (model.layers); None: sample
    # Settings the data decided (engine/data_choices.py): config holds the values chosen, given the config as it came
    # (the manifest's config), choices what was chosen and why (the manifest's choices).
    given: AtlasConfig | None = None
    choices: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> LoadedModel:
        return self.view.model

    @property
    def layer(self) -> torch.nn.Module:
        return self.view.layer

    @property
    def layer_shape(self) -> tuple[int, ...]:
        """The layer's raw output shape without the batch, as the manifest records it."""
        return self.view.layer_shape

    @property
    def layer_hw(self) -> tuple[int, int]:
        """The grid of positions one image gives."""
        return self.view.grid
