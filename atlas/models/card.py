"""The model card ``model.json``: how a folder written by ``atlas train`` says how to rebuild its network.

One schema serves both sides: the trainer writes a :class:`ModelCard` and the
variant-folder spec reads one back, so a field cannot be written under one name
and read under another. A card names the code that builds the network, so only
factories that ship with atlas (:data:`CARD_FACTORIES`) may appear in one.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, ValidationError, model_validator
from torch import nn

from atlas.errors import AtlasError
from atlas.io import write_json
from atlas.models.messages import first_line
from atlas.models.record import Preprocessing

MODEL_CARD = "model.json"
CARD_FORMAT: Final = "atlas-model/1"
DEFAULT_WEIGHTS = "weights.pt"
CARD_FACTORIES = frozenset({"atlas.models.zoo:build_classifier"})  # a card may only name code that ships with atlas


class _CardPart(BaseModel):
    """Unknown keys are refused: a misspelt field would otherwise be silently ignored on read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CardPreprocessing(_CardPart):
    """The card's copy of :class:`Preprocessing`, checked so a bad card fails on read, not mid-run."""

    input_size: PositiveInt
    channels: PositiveInt
    mean: tuple[float, ...]
    std: tuple[PositiveFloat, ...]

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> CardPreprocessing:
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels:
                raise ValueError(f"{key} has {len(values)} values for {self.channels} channels")
        return self

    @classmethod
    def of(cls, pre: Preprocessing) -> CardPreprocessing:
        return cls(input_size=pre.input_size, channels=pre.channels, mean=pre.mean, std=pre.std)

    def to_preprocessing(self) -> Preprocessing:
        return Preprocessing(input_size=self.input_size, channels=self.channels, mean=self.mean, std=self.std)


class ModelCard(_CardPart):
    """Everything ``model.spec: <folder>`` needs: the factory and its arguments, the weights file, classes, preprocessing.

    Field order is the key order in ``model.json``.
    """

    format: Literal["atlas-model/1"] = CARD_FORMAT
    factory: str
    kwargs: dict[str, Any]
    weights: str = DEFAULT_WEIGHTS  # relative to the card's folder
    classes: list[str] | None = None
    preprocessing: CardPreprocessing

    def factory_callable(self) -> Callable[..., nn.Module]:
        """The function ``factory`` names; only call it for an allow-listed factory (see :func:`read_card`)."""
        module_name, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), attribute)

    def build(self) -> nn.Module:
        """The untrained network, from the factory called with the card's arguments."""
        return self.factory_callable()(**self.kwargs)


def new_card(
    factory: str,
    kwargs: Mapping[str, Any],
    preprocessing: Preprocessing,
    classes: Sequence[str] | None,
    weights: str = DEFAULT_WEIGHTS,
) -> ModelCard:
    """A card for a trained network; refuses a factory the reader would refuse, so no unloadable card is written."""
    if factory not in CARD_FACTORIES:
        raise ValueError(f"factory {factory!r} may not appear in a model card; allowed: {', '.join(sorted(CARD_FACTORIES))}")
    return ModelCard(
        factory=factory,
        kwargs=dict(kwargs),
        weights=weights,
        classes=list(classes) if classes is not None else None,
        preprocessing=CardPreprocessing.of(preprocessing),
    )


def write_card(folder: Path, card: ModelCard) -> Path:
    """Write ``folder/model.json`` atomically (a killed run never leaves half a card); returns its path."""
    path = Path(folder) / MODEL_CARD
    write_json(path, card.model_dump(mode="json"))
    return path


def read_card(path: Path, spec: str) -> ModelCard:
    """The card at ``path``, validated; any problem is one :class:`AtlasError` line naming the file."""
    try:
        card = ModelCard.model_validate_json(Path(path).read_bytes())
    except OSError as err:
        raise AtlasError(f"model.spec {spec!r}: {path} is not a readable model card ({first_line(err)})") from None
    except ValidationError as err:
        raise AtlasError(f"model.spec {spec!r}: {path} is not a readable model card ({_first_problem(err)})") from None
    if card.factory not in CARD_FACTORIES:
        raise AtlasError(f"model.spec {spec!r}: {path} names factory {card.factory!r}; only {', '.join(sorted(CARD_FACTORIES))} is allowed")
    try:  # arguments are checked here, so a stale card fails naming its file rather than deep in the factory
        inspect.signature(card.factory_callable()).bind(**card.kwargs)
    except TypeError as err:
        raise AtlasError(f"model.spec {spec!r}: {path} is not a readable model card (kwargs: {first_line(err)})") from None
    return card


def _first_problem(err: ValidationError) -> str:
    """pydantic's report spans lines; keep the first problem as ``field: message`` and count the rest."""
    problems = err.errors(include_url=False)
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    text = " ".join(str(first["msg"]).split())
    rest = len(problems) - 1
    more = f"; {rest} more problem{'s' if rest > 1 else ''}" if rest else ""
    return f"{where}: {text}{more}" if where else f"{text}{more}"
