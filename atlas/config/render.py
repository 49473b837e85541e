"""What a run draws: the icons, the tiles they are laid out on, and the path check of icons against examples."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from atlas.config.limits import AUTO_STEPS, COARSE_MIN_CANVAS, MAX_ICON, RENDER_BATCH
from atlas.config.section import Batch, Section


class RenderConfig(Section):
    steps: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] = Field(
        default="auto",
        description=f"1 to 100,000 (the article used 1,024); auto: {AUTO_STEPS['coarse']} where the icon canvas is at least"
        f" {COARSE_MIN_CANVAS} px (half of them coarse), else {AUTO_STEPS['full']}",
    )
    coarse_steps: Annotated[int, Field(ge=0, le=100_000)] | Literal["auto"] = Field(
        default="auto",
        description=f"the first steps feed the model each view at half size (a quarter of the work); at most render.steps;"
        f" auto: half of the steps where the icon canvas is at least {COARSE_MIN_CANVAS} px, else 0",
    )
    icon_size: int = Field(default=80, ge=1, le=MAX_ICON, description=f"px per side, at most {MAX_ICON}")
    tries: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        default="auto",
        description="renders per icon, the best kept; 1 to 64; auto: 1, or 4 where a probe render finds icons missing their cell",
    )
    batch_size: Batch | Literal["auto"] = Field(default="auto", description="cells per render task; auto: 64 on CPU, 256 on a GPU")
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] | Literal["auto"] = Field(
        default="auto", description="Adam's step, above 0 and at most 10; auto: chosen by a probe render (see whiten)"
    )
    cossim_power: Annotated[float, Field(ge=0.0, le=100.0)] | Literal["auto"] = Field(
        default="auto", description="the objective's cosine exponent, 0 to 100; auto: chosen by a probe render"
    )
    whiten: Literal["auto", "full", "dot", "off"] = Field(
        default="auto",
        description="full: whitened direction; dot: grow along it but point along the cell's own; off: the cell's own;"
        " true/false mean full/off; auto: whichever a probe render of a few cells finds most faithful",
    )
    contrast: Literal["auto"] | bool = Field(
        default="auto",
        description="also push each icon away from its neighbouring cells (a retrieval term, for grids whose neighbours"
        " point almost the same way); auto: whichever a probe render finds more faithful",
    )
    probe_cells: int = Field(
        default=16,
        ge=0,
        le=4096,
        description="cells a probe renders per candidate setting (0 to 4,096; half of the coarsest grid, half of the finest);"
        " 0, or an atlas with fewer than 4 times as many cells: no probe, 'auto' takes the usual defaults",
    )
    param: Literal["auto", "fourier", "maco", "accentuate"] = Field(
        default="fourier",
        description="fourier: 1/f spectrum; maco: phase only, magnitude from the run's images; accentuate: from the cell's"
        " best example; auto: fourier, or whichever a probe render scores best where fourier's icons miss the fidelity bar"
        " (probe top-1 below 0.9 or mean cosine below 0.8) or the path check (cosine below 0.3)",
    )
    proximity: float = Field(
        default=10.0, ge=0.0, le=1e6, description="accentuate: how near the example the icon stays, relative to its objective (0 to 1e6)"
    )
    alpha: bool = Field(default=False, description="also save each icon's transparency from its attribution (MaCo's), in alpha/")
    crop_to_field: bool = Field(
        default=True, description="show the part of the icon the centre position sees (its receptive field), the whole in views/"
    )
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="bf16: the model's forward under torch.autocast")

    @field_validator("whiten", mode="before")
    @classmethod
    def _whiten_flag(cls, value: Any) -> Any:
        """true/false (and YAML's on/off) mean full/off."""
        return {True: "full", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _coarse_within_steps(self) -> RenderConfig:
        if self.coarse_steps != "auto" and self.steps != "auto" and self.coarse_steps > self.steps:
            raise ValueError(f"coarse_steps = {self.coarse_steps} is more than steps = {self.steps}; lower it or use auto")
        return self

    def probed(self) -> list[str]:
        """The settings a probe render chooses: those left to 'auto'."""
        names = ("whiten", "contrast", "cossim_power", "learning_rate", "param", "tries")
        return [name for name in names if getattr(self, name) == "auto"]

    def may_accentuate(self) -> bool:
        """Whether icons may be accentuated (given, or a probe's choice), so ``proximity`` may change them."""
        return self.param in ("accentuate", "auto")

    def probes(self) -> bool:
        """Whether a probe render chooses any setting."""
        return bool(self.probed())

    def steps_on(self, canvas: int, features: bool = False) -> int:
        """Steps per icon rendered on a ``canvas`` px square: the setting, or auto's rule. A small canvas (a 28 px
        Fashion-MNIST CNN) cannot halve its views, and at 64 full-size steps its icons miss their cells; a
        dictionary's ``features`` keep 128 full-size steps (at 64, the photo case's fell to mean cosine 0.78)."""
        if self.steps != "auto":
            return self.steps
        return AUTO_STEPS["coarse"] if canvas >= COARSE_MIN_CANVAS and not features else AUTO_STEPS["full"]

    def coarse_steps_on(self, canvas: int, features: bool = False) -> int:
        """The steps at half size for icons rendered on a ``canvas`` px square: the setting, or auto's rule."""
        steps = self.steps_on(canvas, features)
        if self.coarse_steps != "auto":
            return min(self.coarse_steps, steps)
        return steps // 2 if canvas >= COARSE_MIN_CANVAS and not features else 0

    def batch_size_on(self, device_type: str) -> int:
        """Cells per task: the setting, or for 'auto' what keeps the device busy (a GPU wants far larger batches)."""
        return self.batch_size if self.batch_size != "auto" else RENDER_BATCH.get(device_type, RENDER_BATCH["cpu"])


class TilesConfig(Section):
    format: Literal["jpg", "webp"] = "jpg"
    quality: int = Field(default=90, ge=1, le=100)
    scale: int | None = Field(
        default=None, ge=1, le=64, description="integer icon upscale on the canvas, 1 to 64 (default: cells >= 64 px)"
    )
    examples_per_cell: int = Field(default=6, ge=0, le=1000, description="0 to 1,000")


class PathCheckConfig(Section):
    """Each icon against its cell's real example patches at earlier layers (atlas.featurevis.pathcheck)."""

    layers: tuple[str, ...] | Literal["auto"] = Field(
        default="auto",
        min_length=1,
        max_length=8,
        description="auto: two layers at about 1/3 and 2/3 of the way to model.layer; or 1 to 8 layer names",
    )
