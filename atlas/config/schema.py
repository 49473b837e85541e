"""The whole config a file is validated against: an atlas run's sections, or an experiment's (train and compare too)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from atlas.config.classes import ClassesConfig
from atlas.config.dictionary import DictionaryConfig
from atlas.config.inputs import CollectConfig, ImagesConfig, ModelConfig
from atlas.config.layout import GridConfig, LayoutConfig
from atlas.config.limits import MAX_CANVAS, MAX_SHARD_ROWS
from atlas.config.output import OutputConfig, SchedulerConfig
from atlas.config.render import PathCheckConfig, RenderConfig, TilesConfig
from atlas.config.section import Section, Seed
from atlas.config.training import CompareConfig, TrainConfig
from atlas.devices import DEVICE_CHOICES, DEVICE_PATTERN


class AtlasConfig(Section):
    model: ModelConfig = ModelConfig()
    images: ImagesConfig = ImagesConfig()
    collect: CollectConfig = CollectConfig()
    layout: LayoutConfig = LayoutConfig()
    grid: GridConfig = GridConfig()
    render: RenderConfig = RenderConfig()
    tiles: TilesConfig = TilesConfig()
    path_check: PathCheckConfig = PathCheckConfig()
    output: OutputConfig = OutputConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    classes: ClassesConfig = ClassesConfig()
    dictionary: DictionaryConfig | None = Field(default=None, description="a sparse dictionary of the layer; absent: none")
    device: str = Field(default="auto", description="auto (CUDA when torch sees a GPU, else CPU), cpu, cuda or cuda:N")
    seed: Seed = 0

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        """The names :func:`atlas.devices.resolve_device` takes; whether this torch has that GPU is its to say."""
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"expected {DEVICE_CHOICES}")
        return value

    @model_validator(mode="after")
    def _main_layer_listed(self) -> AtlasConfig:
        """With ``model.layers``, the main bundle's layer is one of them: a layer outside the list is a typo, not a guess."""
        layers = self.model.layers
        if layers is not None and self.model.layer not in layers:
            raise ValueError(
                f"model.layers {list(layers)} does not list model.layer {self.model.layer!r}, the main bundle's layer; "
                "add it to model.layers, or set model.layer to one of them (left out, it is the first)"
            )
        return self

    @model_validator(mode="after")
    def _fits_a_machine(self) -> AtlasConfig:
        """Sizes that are each in range but together would exhaust memory or disk."""
        positions = self.collect.positions_per_image
        if positions != "all" and self.collect.shard_size * positions > MAX_SHARD_ROWS:
            raise ValueError(
                f"collect.shard_size x collect.positions_per_image = {self.collect.shard_size * positions:,} rows per collect task, "
                f"over {MAX_SHARD_ROWS:,} (one task holds them in memory); lower either"
            )
        scale = self.tiles.scale or max(1, -(-64 // self.render.icon_size))  # atlas.tiles.default_scale
        side = max(self.grid.sizes) * self.render.icon_size * scale
        if side > MAX_CANVAS:
            raise ValueError(
                f"grid.sizes x render.icon_size x tiles.scale = {side:,} px per canvas side, over {MAX_CANVAS:,} "
                "(the canvas would not fit on disk); lower the largest grid, the icon size or the scale"
            )
        return self

    @property
    def name(self) -> str:
        return self.output.name or "atlas"


class ExperimentConfig(AtlasConfig):
    """A comparison experiment: the atlas settings every variant shares, plus training and comparison."""

    train: TrainConfig = TrainConfig()
    compare: CompareConfig = CompareConfig()
