"""What a run reads: the model and its layer, the images, and how activations are collected from them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from atlas.config.section import Batch, Count, InputSize, Positions, Section


class ModelConfig(Section):
    spec: str = "efficientnet-lite0"
    layer: str = "blocks.4"
    weights: Path | None = None
    classes: Path | None = None
    input_size: InputSize | None = None
    channels: Literal[1, 3] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    trust_pickle: bool = False
    pretrained: bool = True


class ImagesConfig(Section):
    source: str = "builtin:photos"
    root: Path | None = Field(default=None, description="where torchvision datasets live (default: ~/.cache/atlas/datasets)")
    max_pixels: int = Field(
        default=89_478_485,
        ge=1,
        le=2**32,
        description="decompression-bomb limit in pixels, at most 2^32 (a larger image would not fit in memory decoded)",
    )


class CollectConfig(Section):
    n_images: Count | None = None
    positions_per_image: Positions | Literal["all"] = 1
    batch_size: Batch = 32
    shard_size: int = Field(default=128, ge=1, le=1_000_000, description="images per collect task, at most 1,000,000")
    attribution: bool = True
    nonfinite: Literal["drop", "stop"] = Field(
        default="drop", description="rows whose activation or attribution holds NaN or inf: drop and count them, or stop at the first"
    )
