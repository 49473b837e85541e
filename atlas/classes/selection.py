"""Which of a bundle's rows a class atlas or a two-class comparison is made from.

A row belongs to class c when c has its largest attribution (the article's
rule); for classes that rarely come first, the k rows with the largest
attribution to c instead. Rows are streamed from the store one shard at a
time, so selection never holds the whole attribution matrix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from atlas.collect import ActivationStore
from atlas.errors import AtlasError

Selection = Literal["top", "top_k"]


@dataclass(frozen=True)
class ClassRef:
    """One of the model's classes: its output index and its name (``class N`` when the model has no names)."""

    index: int
    name: str

    @property
    def folder(self) -> str:
        return folder_name(self.name)


def folder_name(name: str) -> str:
    """A class name as one safe path segment: 'T-shirt/top' -> 'T-shirt_top' (the viewer links to it)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
    return cleaned[:80]


def resolve_class(given: str | int, labels: Sequence[str] | None, n_classes: int) -> ClassRef:
    """A class named by its label (case-insensitive) or its index, with a one-line error listing a few valid ones."""
    if n_classes == 0:
        raise AtlasError("this bundle has no attribution (collect.attribution was false); re-run atlas run with attribution on")
    text = str(given).strip()
    if labels is not None:
        exact = [k for k, label in enumerate(labels) if label == text]
        folded = exact or [k for k, label in enumerate(labels) if label.lower() == text.lower()]
        if len(folded) == 1:
            return ClassRef(folded[0], labels[folded[0]])
    if re.fullmatch(r"\d+", text) and int(text) < n_classes:
        index = int(text)
        return ClassRef(index, labels[index] if labels is not None else f"class {index}")
    shown = ", ".join(repr(label) for label in (labels or [])[:8])
    hint = f"names such as {shown}, or " if shown else ""
    raise AtlasError(f"class {given!r}: not one of this model's classes; give {hint}an index from 0 to {n_classes - 1}")


def class_counts(store: ActivationStore, n_classes: int) -> np.ndarray:
    """int64 [K]: how many rows have each class as their top attribution."""
    counts = np.zeros(n_classes, np.int64)
    for chunk in store.chunks(("attribution",)):
        counts += np.bincount(top_class(chunk.arrays["attribution"]), minlength=n_classes)[:n_classes]
    return counts


def top_class(attribution: np.ndarray) -> np.ndarray:
    """Each row's class of largest attribution (ties: the lowest index, as argmax)."""
    return np.asarray(np.argmax(attribution.astype(np.float32), axis=1), dtype=np.int64)


def select_rows(store: ActivationStore, cls: ClassRef, how: Selection = "top", k: int = 2000) -> np.ndarray:
    """Row indices (among the store's N, ascending) of the class: top attribution is ``cls``, or its ``k`` largest."""
    if how == "top":
        picked = [
            chunk.start + np.flatnonzero(top_class(chunk.arrays["attribution"]) == cls.index) for chunk in store.chunks(("attribution",))
        ]
        return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)
    scores = np.concatenate([chunk.arrays["attribution"][:, cls.index].astype(np.float32) for chunk in store.chunks(("attribution",))])
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, np.int64)
    return np.sort(best).astype(np.int64)


def pair_rows(store: ActivationStore, a: ClassRef, b: ClassRef) -> np.ndarray:
    """Rows whose top attribution is class ``a`` or class ``b``, ascending."""
    picked = []
    for chunk in store.chunks(("attribution",)):
        top = top_class(chunk.arrays["attribution"])
        picked.append(chunk.start + np.flatnonzero((top == a.index) | (top == b.index)))
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)
