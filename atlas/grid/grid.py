"""Bin the 2-D layout into a g x g grid and summarise each kept cell, with every row in memory.

The stage uses :mod:`atlas.grid.streaming`, which reads the store in chunks;
this version takes arrays (a notebook's, or a test's reference).

Counts come from one ``np.unique``; directions (mean activation) and mean
attribution from the one chunked per-cell mean (:mod:`atlas.grid.means`);
example rows from one stable sort of the kept rows by cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.bundle import icon_file
from atlas.collect.store import CLASS_TOKEN_ROW
from atlas.grid.cells import cell_index
from atlas.grid.means import segment_means


@dataclass
class GridLevel:
    size: int
    cells: list[dict[str, Any]]  # row-major by (j, i); the contract's cells.json entries
    directions: np.ndarray  # float32 [n_cells, C], mean activation per cell, in cells order
    mean_attribution: np.ndarray  # float32 [n_cells, K]


def build_grid(
    coords: np.ndarray,
    activation: np.ndarray,
    attribution: np.ndarray,
    image_id: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    size: int,
    min_count: int,
    labels: Sequence[str] | None,
    top_classes: int = 5,
    n_examples: int = 8,
    kind: np.ndarray | None = None,
) -> GridLevel:
    """``kind``: each row's kind (the store's ``kind``; None: positions only), for the cells' class-token counts."""
    i, j = cell_index(coords, size)
    flat = j * size + i
    present, counts = np.unique(flat, return_counts=True)
    keep = counts >= min_count
    kept, kept_counts = present[keep], counts[keep]
    lookup = np.full(size * size, -1, np.int64)
    lookup[kept] = np.arange(len(kept))
    row_cell = lookup[flat]
    directions = segment_means(row_cell, activation, len(kept))
    mean_attr = segment_means(row_cell, attribution, len(kept))

    members_sorted = np.flatnonzero(row_cell >= 0)
    members_sorted = members_sorted[np.argsort(row_cell[members_sorted], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(kept_counts)[:-1]]).astype(np.int64) if len(kept) else np.zeros(0, np.int64)
    is_class_token = np.zeros(len(row_cell), bool) if kind is None else kind == CLASS_TOKEN_ROW
    class_tokens = np.bincount(row_cell[is_class_token & (row_cell >= 0)], minlength=len(kept))
    cells = [
        make_cell(
            size,
            int(flat_cell),
            int(count),
            mean_attr[n],
            labels,
            top_classes,
            _examples(members_sorted[start : start + count], activation, directions[n], image_id, y, x, n_examples),
            int(class_tokens[n]),
        )
        for n, (flat_cell, start, count) in enumerate(zip(kept, starts, kept_counts))
    ]
    return GridLevel(size, cells, directions, mean_attr)


def make_cell(
    size: int,
    flat_cell: int,
    count: int,
    mean_attribution: np.ndarray,
    labels: Sequence[str] | None,
    top_classes: int,
    examples: list[dict[str, int]],
    class_tokens: int = 0,
) -> dict[str, Any]:
    """One cells.json entry (before render and examples add theirs): the same for the in-memory and streaming grids.

    ``class_tokens``: how many of the ``count`` rows are class-token rows, recorded only where there are any."""
    i, j = flat_cell % size, flat_cell // size
    return {
        "i": i,
        "j": j,
        "count": count,
        **({"class_tokens": class_tokens} if class_tokens else {}),
        "top_classes": ranked_classes(mean_attribution, labels, top_classes),
        "icon": icon_file(size, i, j),
        "examples": examples,
    }


def ranked_classes(scores: np.ndarray, labels: Sequence[str] | None, k: int) -> list[dict[str, Any]]:
    """The k classes of highest score, with their labels: a cell's or a dictionary feature's top classes."""
    if not len(scores):
        return []
    best = np.argsort(-scores, kind="stable")[:k]
    return [
        {"index": int(c), "label": labels[c] if labels is not None and c < len(labels) else f"class {c}", "score": float(scores[c])}
        for c in best
    ]


def _examples(
    members: np.ndarray,
    activation: np.ndarray,
    direction: np.ndarray,
    image_id: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    k: int,
) -> list[dict[str, int]]:
    """The member rows that point most nearly along the cell's mean direction."""
    if k == 0:
        return []
    vectors = activation[members].astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(direction)), 1e-12)
    cosine = vectors @ direction.astype(np.float64) / np.maximum(norms, 1e-12)
    best = members[np.argsort(-cosine, kind="stable")[:k]]
    return [{"row": int(r), "image_id": int(image_id[r]), "y": int(y[r]), "x": int(x[r])} for r in best]
