"""Per-cell mean attribution to every class, stored compactly for the viewer's class heatmap.

``levels/<g>/attribution.npy`` holds float16 ``[n_cells, classes]`` in
cells.json order (the same means ``top_classes`` is ranked by), in Fortran
order: each class's column is contiguous, so the page reads one class as one
slice. ``np.load`` reads it back as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import sparse

from atlas.grid import cell_index
from atlas.io import write_bytes

CHUNK_ROWS = 1 << 16
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def cell_means(coords: np.ndarray, values: np.ndarray, size: int, cells: Sequence[dict[str, Any]]) -> np.ndarray:
    """float32 ``[len(cells), K]``: the mean of ``values`` ([N, K]) over the rows falling in each cell.

    Rows are summed in chunks (a sparse cell-by-row matrix times the chunk), so
    memory is ``cells x K`` plus one chunk, whatever the number of rows.
    """
    n_cells, width = len(cells), values.shape[1]
    lookup = np.full(size * size, -1, np.int64)
    lookup[[c["j"] * size + c["i"] for c in cells]] = np.arange(n_cells)
    sums = np.zeros((n_cells, width), np.float64)
    counts = np.zeros(n_cells, np.int64)
    for start in range(0, len(coords), CHUNK_ROWS):
        i, j = cell_index(coords[start : start + CHUNK_ROWS], size)
        cell = lookup[j * size + i]
        kept = np.flatnonzero(cell >= 0)
        if not len(kept):
            continue
        members = sparse.csr_matrix((np.ones(len(kept)), (cell[kept], kept)), shape=(n_cells, len(cell)))
        sums += members @ np.asarray(values[start : start + CHUNK_ROWS], dtype=np.float64)
        counts += np.bincount(cell[kept], minlength=n_cells)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def write_attribution(path: Path, means: np.ndarray) -> None:
    """Save ``[n_cells, K]`` as float16, Fortran order (class-major bytes), atomically."""
    import io

    clipped = np.clip(np.nan_to_num(means, nan=0.0), -_FLOAT16_MAX, _FLOAT16_MAX).astype("<f2")
    buffer = io.BytesIO()
    np.save(buffer, np.asfortranarray(clipped))
    write_bytes(path, buffer.getvalue())
