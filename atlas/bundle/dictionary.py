"""A bundle's sparse dictionary, read back: the arrays, the manifest's figures and one record per feature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.bundle.paths import DICTIONARY_ARRAYS, DICTIONARY_ATTRIBUTION, DICTIONARY_CURVE, DICTIONARY_FEATURES, dictionary_array
from atlas.errors import AtlasError
from atlas.io import read_json, read_npy
from atlas.storage import Location


@dataclass(frozen=True)
class SavedDictionary:
    """``weights``: encoder [C, F], encoder_bias [F], decoder [F, C], decoder_bias [C] (float32); ``k`` and ``scale``
    complete the forward (``forward``, as text); ``metrics``: the manifest's quality figures; ``features``: one
    record per feature (features.json); ``attribution``: float16 [F, K]; ``curve``: the training curve."""

    weights: dict[str, np.ndarray]
    k: int
    scale: float
    forward: str
    metrics: dict[str, Any]
    features: list[dict[str, Any]]
    attribution: np.ndarray
    curve: dict[str, Any]


def read_dictionary(root: Location, entry: dict[str, Any] | None) -> SavedDictionary:
    """The dictionary under ``root`` described by the manifest's ``dictionary`` entry."""
    if not entry:
        raise AtlasError(f"{root}: this bundle has no dictionary; add one with: atlas dictionary {root}")
    weights = {name: read_npy(root / dictionary_array(name)) for name in DICTIONARY_ARRAYS}
    return SavedDictionary(
        weights=weights,
        k=int(entry["k"]),
        scale=float(entry["scale"]),
        forward=str(entry["forward"]),
        metrics=dict(entry.get("quality", {})),
        features=read_json(root / DICTIONARY_FEATURES),
        attribution=read_npy(root / DICTIONARY_ATTRIBUTION),
        curve=read_json(root / DICTIONARY_CURVE),
    )
