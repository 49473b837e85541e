"""``atlas classes``: class atlases and two-class comparisons with their patch experiment."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from atlas.config.limits import MAX_COUNT, MAX_GRID
from atlas.config.section import Batch, Count, GridSide, Section, check_metric

ClassName = str | int  # a class label, or its index among the model's outputs


class PatchConfig(Section):
    """The patch experiment of a two-class comparison (A, B): B-favouring icons pasted onto images classified as A."""

    run: bool = True
    n_images: int = Field(default=500, ge=1, le=MAX_COUNT, description="at most this many held-out images classified as A")
    sizes: tuple[float, ...] = Field(default=(0.2, 0.3, 0.4), max_length=64, description="patch sides as fractions of the input side")
    icons: int = Field(default=4, ge=1, le=MAX_GRID, description="pasted icons: the cells of the comparison that favour B most")
    corner: Literal["top_left", "top_right", "bottom_left", "bottom_right"] = "top_left"
    images: str | None = Field(default=None, description="held-out image source (default: the run's, past the images it collected)")
    batch_size: Batch = 64

    @field_validator("sizes")
    @classmethod
    def _fractions(cls, sizes: tuple[float, ...]) -> tuple[float, ...]:
        if not sizes or any(not 0 < size <= 1 for size in sizes):
            raise ValueError("give fractions of the input side in (0, 1]")
        return tuple(sorted(set(sizes)))


class ClassesConfig(Section):
    """Class atlases and two-class comparisons built on a finished atlas (``atlas classes``, or ``atlas run``)."""

    classes: tuple[ClassName, ...] | Literal["all"] = Field(
        default=(), description="class names or indices; 'all': every class with enough rows"
    )
    pairs: tuple[tuple[ClassName, ClassName], ...] = Field(default=(), description="two-class comparisons, [[A, B], ...]")
    select: Literal["top", "top_k"] = Field(default="top", description="top: rows whose top attribution is the class; top_k: its k best")
    top_k: Count = 2000
    min_rows: int = Field(default=50, ge=1, le=MAX_COUNT, description="fewer rows than this and a class atlas fails (a pair too)")
    grid: GridSide = 8
    pair_grid: GridSide = 10
    min_count: Count = 2
    n_neighbors: int = Field(default=20, ge=2, le=1000, description="2 to 1,000")
    min_dist: float = Field(default=0.02, ge=0.0, le=1.0, description="0 to 1 (UMAP's spread)")
    metric: str = Field(default="cosine", description="a UMAP metric name")
    pair_layout: Literal["umap", "tsne"] = Field(default="umap", description="the 1-D layout of a comparison's y axis")
    patch: PatchConfig = PatchConfig()

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)
