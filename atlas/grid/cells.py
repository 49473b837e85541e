"""Which cell of a g x g grid a layout position falls in.

Cell (i, j) is column i and row j, row 0 at the top: a point at layout
coordinates (u, v) falls in i = floor(u * g), j = floor(v * g), with v growing
downwards like image rows.
"""

from __future__ import annotations

import numpy as np


def cell_index(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of every point; coordinates of exactly 1.0 land in the last cell."""
    ij = np.clip(np.floor(np.asarray(coords, dtype=np.float64) * size), 0, size - 1).astype(np.int64)
    return ij[:, 0], ij[:, 1]
