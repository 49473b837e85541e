"""What a run reads: the model and its layer, the images, and how activations are collected from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from atlas.config.section import Batch, Count, InputSize, Positions, PrefixTokens, Section


class ModelConfig(Section):
    spec: str = "efficientnet-lite0"
    layer: str = "blocks.4"
    layers: tuple[str, ...] | None = Field(
        default=None,
        description="one atlas per layer, of the same rows, in the viewer's order; model.layer (default: the first) is the main bundle",
    )
    weights: Path | None = None
    classes: Path | None = None
    input_size: InputSize | None = None
    channels: Literal[1, 3] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    trust_pickle: bool = False
    pretrained: bool = True
    layout: Literal["auto", "channels_first", "channels_last", "tokens"] = Field(
        default="auto", description="how the layer's output is read; auto decides from the model or asks"
    )
    prefix_tokens: PrefixTokens | Literal["auto"] = "auto"
    output: Literal["auto"] | int | str = Field(
        default="auto", description="the index or key of the tensor to read when the layer outputs a tuple or dict"
    )

    @model_validator(mode="before")
    @classmethod
    def _main_layer_from_layers(cls, data: Any) -> Any:
        """``layers`` given without ``layer``: the first listed is the main bundle's (the key is absent, so nothing is guessed)."""
        layers = data.get("layers") if isinstance(data, dict) else None
        if isinstance(data, dict) and "layer" not in data and isinstance(layers, (list, tuple)) and layers and isinstance(layers[0], str):
            return {**data, "layer": layers[0]}  # a first entry that is no name is model.layers' own error, not model.layer's
        return data

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("expected at least one layer name (or leave model.layers out for one atlas of model.layer)")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"layer {repeated[0]!r} is listed twice; list each layer once")
        return value

    @field_validator("output")
    @classmethod
    def _output_element(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("expected auto, an index from 0, or a key of the layer's dict output")
        if isinstance(value, str) and value != "auto" and not value.isidentifier():
            raise ValueError("expected auto, an index from 0, or a key of the layer's dict output (a Python name)")
        return value


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
    class_token: bool = Field(
        default=False,
        description="also store each image's class-token row (a token layer of a model with a class token), beside its patch rows",
    )
    target_rows: Count | None = Field(
        default=None,
        description="rows a small image set should still give: positions_per_image is raised until the images reach it,"
        " at most to every interior position (null: off; a positions_per_image set on top of a file turns it off)",
    )
