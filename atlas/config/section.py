"""The base every config section shares, and the bounded field types several sections use."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from atlas.config.limits import MAX_BATCH, MAX_COUNT, MAX_GRID, MAX_INPUT_SIZE, MAX_SEED, UMAP_METRICS


class Section(BaseModel):
    """Unknown keys forbidden, so a typo in a config file or a ``--set`` fails with one line naming the key."""

    # allow_inf_nan=False: every float key is finite; NaN or infinity in a learning rate or a distance is never meant.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic would read true as 1; YAML reads an unquoted yes, no, on or off as true/false, so refuse both."""
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if _holds_bool(value) and not _takes_bool(annotation):
            raise ValueError("expected a number or text, not true/false (YAML reads unquoted yes, no, on and off as true/false)")
        return value


def _holds_bool(value: Any, depth: int = 3) -> bool:
    """True/false in the value or its lists (no key nests deeper than pairs; a list that holds itself stops too)."""
    if isinstance(value, bool):
        return True
    return depth > 0 and isinstance(value, (list, tuple)) and any(_holds_bool(v, depth - 1) for v in value)


def _takes_bool(annotation: Any) -> bool:
    """Whether a key's type takes true/false itself (a section answers for its own keys)."""
    if annotation is bool or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return True
    return any(_takes_bool(arg) for arg in get_args(annotation))


# An int in [least, most]; the description says what the bound protects and goes into the key's error message.
Count = Annotated[int, Field(ge=1, le=MAX_COUNT, description=f"at most {MAX_COUNT:,}")]
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH, description=f"at most {MAX_BATCH:,} per batch: more would not fit in memory")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"0 to {MAX_SEED} (numpy's and scikit-learn's seed range)")]
InputSize = Annotated[
    int,
    Field(ge=1, le=MAX_INPUT_SIZE, description=f"px per side, at most {MAX_INPUT_SIZE}: one larger RGB image exceeds 200 MB in float32"),
]
GridSide = Annotated[int, Field(ge=1, le=MAX_GRID, description=f"cells per side, at most {MAX_GRID} (a million cells, each rendered)")]
PrefixTokens = Annotated[
    int, Field(ge=0, le=64, description="leading non-patch tokens (class, distillation, registers), 0 to 64; auto reads the model")
]
Positions = Annotated[int, Field(ge=1, le=16_384, description="at most 16,384 per image ('all' takes every position of the map)")]


def check_metric(value: str) -> str:
    if value not in UMAP_METRICS:
        raise ValueError(f"expected one of {', '.join(UMAP_METRICS)}")
    return value
