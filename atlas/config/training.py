"""``atlas train`` and ``atlas compare``: the variants trained, and how their atlases are compared."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from atlas.config.inputs import ModelConfig
from atlas.config.limits import ALL_ACTIVATIONS
from atlas.config.section import Batch, Count, InputSize, Section, Seed


class TrainConfig(Section):
    """``atlas train``: one architecture, trained once per activation with everything else identical.

    ``vit`` is a tiny vision transformer whose MLPs take the activation (atlas.models.zoo.TinyViT).
    """

    architecture: Literal["vgg", "resnet", "vit"] = "vgg"
    dataset: str = Field(default="torchvision:FashionMNIST", description="torchvision:NAME, or a folder of class sub-folders")
    root: Path | None = Field(default=None, description="where torchvision datasets live (default: ~/.cache/atlas/datasets)")
    activations: tuple[str, ...] = Field(default=ALL_ACTIVATIONS, max_length=64, description="1 to 64 activation names")
    epochs: int = Field(default=3, ge=1, le=10_000, description="at most 10,000")
    batch_size: Batch = 128
    learning_rate: float = Field(default=2e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    width: int = Field(default=16, ge=1, le=1024, description="channels of the first block, at most 1,024; later blocks have 2x and 4x")
    batch_norm: bool = Field(default=False, description="off by default: BN hides what the activation itself does to gradients")
    input_size: InputSize | None = Field(default=None, description="default: the dataset's own size, at most 64 px")
    channels: Literal[1, 3] | None = Field(default=None, description="default: 1 for grey datasets, else 3")
    limit_train_images: Count | None = None
    limit_test_images: Count | None = None
    test_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="held out from a folder without train/ and test/")
    dead_threshold: float = Field(default=1e-3, gt=0.0, description="a unit is dead when |f'(x)| stays below this on every test input")
    seed: Seed = 0

    @field_validator("activations")
    @classmethod
    def _some(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names:
            raise ValueError("give at least one activation name")
        if len(set(names)) != len(names):
            raise ValueError("activation names repeat")
        return names

    @field_validator("batch_norm")
    @classmethod
    def _only_for_convolutions(cls, value: bool, info: ValidationInfo) -> bool:
        """The vit has LayerNorm and no batch norm: refused here, before any data is loaded."""
        if value and info.data.get("architecture") == "vit":
            raise ValueError("the vit normalises with LayerNorm and has no batch norm; set it false, or train.architecture: vgg or resnet")
        return value


class CompareConfig(Section):
    """``atlas compare``: one atlas per trained variant, laid out so the same region holds the same images."""

    layer: str | None = Field(default=None, description="default: the architecture's last block")
    layers: tuple[str, ...] = Field(default=(), max_length=64, description="also compare these layers of one variant (at most 64)")
    layers_of: str | None = Field(default=None, description="the variant whose layers are compared (default: the first)")
    align: Literal["aligned_umap", "none"] = "aligned_umap"
    alignment_regularisation: float = Field(default=0.01, gt=0.0)
    alignment_window: int = Field(default=3, ge=1, le=64, description="1 to 64")
    measure_sample: int = Field(default=2000, ge=1, le=1_000_000, description="rows used for trustworthiness, at most 1,000,000")
    models: dict[str, ModelConfig] | None = Field(
        default=None,
        description="compare these models instead of trained variants: a name -> a model section (spec and layer; "
        "layers: the same model's layers for CKA across depth), all on the same images",
    )
    probe_test_fraction: float = Field(default=0.3, gt=0.0, lt=1.0, description="rows held out to score each layer's linear probe")

    @field_validator("models")
    @classmethod
    def _named_models(cls, models: dict[str, ModelConfig] | None) -> dict[str, ModelConfig] | None:
        if models is None:
            return None
        if len(models) < 2:
            raise ValueError("give at least two models to compare (name: {spec: ..., layer: ...})")
        for name, model in models.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (it names the model's folder)")
            if "layer" not in model.model_fields_set:
                raise ValueError(f"model {name!r}: give its layer (layer: NAME; atlas layers SPEC lists them)")
        return models
