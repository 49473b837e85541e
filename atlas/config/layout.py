"""Where activations go: the 2-D layout (and the renderer's whitening), and the grids laid over it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from atlas.config.section import Count, GridSide, Section, check_metric


class LayoutConfig(Section):
    fit_sample: int = Field(
        default=20_000,
        ge=1,
        le=10_000_000,
        description="rows UMAP is fitted on, at most 10,000,000 (UMAP's memory and time grow faster than the rows)",
    )
    chunk_size: int = Field(default=10_000, ge=1, le=10_000_000, description="rows per placing task, at most 10,000,000")
    placement: Literal["umap", "neighbours"] = Field(
        default="umap",
        description="how rows outside the fit sample are placed: umap, umap-learn's transform (their fitted neighbours' mean,"
        " then 30 epochs); neighbours, that mean alone (5 times faster, but placed rows bunch: lower trustworthiness)",
    )
    pca_components: int | None = Field(default=50, ge=1, le=4096, description="at most 4,096")
    n_neighbors: int = Field(default=30, ge=2, le=1000, description="2 to 1,000")
    min_dist: float = Field(default=0.05, ge=0.0, le=1.0, description="0 to 1 (UMAP's spread)")
    metric: str = Field(default="cosine", description="a UMAP metric name")
    clip_percentile: float = Field(default=1.0, ge=0.0, lt=50.0)
    margin: float = Field(default=0.05, ge=0.0, lt=0.5)
    whitening_eps: float = Field(default=1e-2, gt=0.0)
    coords: Path | None = Field(default=None, description="precomputed [N, 2] coordinates in [0, 1], one per row, instead of UMAP")

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)


class GridConfig(Section):
    sizes: tuple[GridSide, ...] = Field(default=(10, 20, 40), max_length=16, description="1 to 16 grids, each at most 1,024 cells per side")
    min_count: Count = 3
    top_classes: int = Field(default=5, ge=1, le=10_000, description="at most 10,000")
    examples: int = Field(default=8, ge=0, le=1000, description="0 to 1,000 per cell")
    fit_to_rows: bool = Field(
        default=False,
        description="when the rows cannot fill the finest grid (two thirds of min_count per cell), take the largest"
        " sizes they fill instead (a grid.sizes set on top of a file turns it off)",
    )

    @field_validator("sizes")
    @classmethod
    def _sorted_unique(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if not sizes:
            raise ValueError("give at least one grid size")
        return tuple(sorted(set(sizes)))
