"""Per-cell means of row values, summed in chunks so memory stays ``cells x width`` plus one chunk.

The one implementation of "average these rows per cell": the grid stage uses it
for each cell's direction (mean activation) and its mean attribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse

from atlas.grid.cells import cell_index

CHUNK_ROWS = 1 << 16


def segment_means(row_cell: np.ndarray, values: np.ndarray, n_cells: int, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """float32 ``[n_cells, K]``: the mean of ``values`` ([N, K]) over the rows whose ``row_cell`` is each cell (-1: none).

    Each chunk is one sparse cell-by-row matrix times the chunk, accumulated in float64.
    """
    width = values.shape[1]
    sums = np.zeros((n_cells, width), np.float64)
    counts = np.zeros(n_cells, np.int64)
    for start in range(0, len(row_cell), chunk_rows):
        cell = row_cell[start : start + chunk_rows]
        kept = np.flatnonzero(cell >= 0)
        if not len(kept):
            continue
        members = sparse.csr_matrix((np.ones(len(kept)), (cell[kept], kept)), shape=(n_cells, len(cell)))
        if width:
            sums += members @ np.asarray(values[start : start + chunk_rows], dtype=np.float64)
        counts += np.bincount(cell[kept], minlength=n_cells)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def row_cells(coords: np.ndarray, size: int, cells: Sequence[dict[str, Any]]) -> np.ndarray:
    """For every row, the position of its cell in ``cells`` (-1 when its cell was dropped)."""
    lookup = np.full(size * size, -1, np.int64)
    lookup[[c["j"] * size + c["i"] for c in cells]] = np.arange(len(cells))
    i, j = cell_index(coords, size)
    return lookup[j * size + i]


def cell_means(coords: np.ndarray, values: np.ndarray, size: int, cells: Sequence[dict[str, Any]]) -> np.ndarray:
    """float32 ``[len(cells), K]``: the mean of ``values`` over the rows whose layout position falls in each cell."""
    return segment_means(row_cells(coords, size, cells), values, len(cells))
