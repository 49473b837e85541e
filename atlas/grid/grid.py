"""Bin the 2-D layout into a g x g grid and summarise each cell.

Cell (i, j) is column i and row j, row 0 at the top: a point at layout
coordinates (u, v) falls in i = floor(u * g), j = floor(v * g), with v growing
downwards like image rows. Everything is vectorised over rows: one sort, then
segment sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class GridLevel:
    size: int
    cells: list[dict[str, Any]]  # row-major by (j, i); the contract's cells.json entries
    directions: np.ndarray  # float32 [n_cells, C], mean activation per cell, in cells order
    mean_attribution: np.ndarray  # float32 [n_cells, K]


def cell_index(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of every point; coordinates of exactly 1.0 land in the last cell."""
    ij = np.clip(np.floor(np.asarray(coords, dtype=np.float64) * size), 0, size - 1).astype(np.int64)
    return ij[:, 0], ij[:, 1]


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
) -> GridLevel:
    i, j = cell_index(coords, size)
    flat = j * size + i
    order = np.argsort(flat, kind="stable")
    sorted_flat = flat[order]
    cells_present, starts, counts = np.unique(sorted_flat, return_index=True, return_counts=True)
    keep = counts >= min_count
    sums = np.add.reduceat(activation[order].astype(np.float64), starts, axis=0) if len(starts) else np.zeros((0, activation.shape[1]))
    directions = (sums / counts[:, None]).astype(np.float32)[keep]
    if attribution.shape[1]:
        attr_sums = np.add.reduceat(attribution[order].astype(np.float64), starts, axis=0)
        mean_attr = (attr_sums / counts[:, None]).astype(np.float32)[keep]
    else:
        mean_attr = np.zeros((int(keep.sum()), 0), np.float32)

    cells: list[dict[str, Any]] = []
    for n, (flat_cell, start, count) in enumerate(zip(cells_present[keep], starts[keep], counts[keep])):
        members = order[start : start + count]
        cells.append(
            {
                "i": int(flat_cell % size),
                "j": int(flat_cell // size),
                "count": int(count),
                "top_classes": _top_classes(mean_attr[n], labels, top_classes),
                "icon": f"levels/{size}/icons/{int(flat_cell % size)}_{int(flat_cell // size)}.png",
                "examples": _examples(members, activation, directions[n], image_id, y, x, n_examples),
            }
        )
    return GridLevel(size, cells, directions, mean_attr)


def _top_classes(scores: np.ndarray, labels: Sequence[str] | None, k: int) -> list[dict[str, Any]]:
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
