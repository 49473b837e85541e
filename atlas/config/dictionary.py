"""The optional ``dictionary:`` section: a TopK sparse autoencoder of the layer (the dictionary stage runs only when
the config has this section; ``atlas dictionary RUN_DIR`` adds it to a finished bundle)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from atlas.config.section import Batch, Section, Seed


class DictionaryConfig(Section):
    features: Annotated[int, Field(ge=1, le=1_048_576)] | Literal["auto"] = Field(
        default="auto",
        description="dictionary width, 1 to 1,048,576; auto: 8 x channels, capped at rows x k / 32 (a feature fires on"
        " 32 rows on average), never below channels",
    )
    k: Annotated[int, Field(ge=1, le=65_536)] | Literal["auto"] = Field(
        default="auto", description="active features per row, 1 to 65,536; auto: channels / 8"
    )
    steps: int = Field(default=3000, ge=1, le=10_000_000, description="training steps, at most 10,000,000")
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0, description="Adam's step, above 0 and at most 1")
    batch_size: Batch = 1024
    buffer_shards: int = Field(default=4, ge=1, le=1024, description="shards held and shuffled together, 1 to 1,024")
    examples: int = Field(default=8, ge=0, le=256, description="top example rows kept per feature, 0 to 256")
    icons: bool = Field(default=True, description="render each feature's icon (the render stage's settings) and its fidelity")
    seed: Seed = 0
