"""Which spatial positions of an activation map become rows.

Positions are drawn from a generator seeded by (seed, image id), so the rows an
image gives never depend on which shard or worker read it: a resumed run and an
uninterrupted one sample the same places.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np


def interior_box(height: int, width: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the map without its border rows and columns (the whole map when it is 2 or less across)."""
    y0, y1 = (1, height - 1) if height > 2 else (0, height)
    x0, x1 = (1, width - 1) if width > 2 else (0, width)
    return y0, y1, x0, x1


def interior_count(height: int, width: int) -> int:
    """How many distinct positions :func:`sample_positions` draws from."""
    y0, y1, x0, x1 = interior_box(height, width)
    return (y1 - y0) * (x1 - x0)


def positions_to_reach(target_rows: int, n_images: int, configured: int, interior: int, most: int) -> tuple[int, str]:
    """Positions per image for a small image set, and why: ``configured`` unless ``n_images`` of them fall short of
    ``target_rows``; then enough to reach it, at most every interior position (more would repeat positions) and at
    most ``most`` (what one collect task may hold), never fewer than ``configured``."""
    planned = n_images * configured
    if planned >= target_rows:
        return configured, (f"config: {n_images:,} images x {configured} = {planned:,} rows reach collect.target_rows = {target_rows:,}")
    needed = math.ceil(target_rows / max(n_images, 1))
    value = max(configured, min(needed, interior, most))
    if value == configured:
        why = "every interior position already" if configured >= interior else f"at most {most} per image in one collect task"
    elif value == interior:
        why = f"every interior position of the map, short of ceil({target_rows:,} / {n_images:,}) = {needed}"
    elif value == most:
        why = f"at most {most} per image in one collect task (collect.shard_size)"
    else:
        why = f"ceil({target_rows:,} / {n_images:,})"
    return value, (
        f"auto: {n_images:,} images x {configured} = {planned:,} rows < collect.target_rows = {target_rows:,}; "
        f"{value} per image ({why}): {n_images * value:,} rows"
    )


def sample_positions(image_id: int, height: int, width: int, k: int | Literal["all"], seed: int) -> np.ndarray:
    """Return int32 [n, 2] (y, x) positions: ``k`` seeded interior ones (border rows and columns excluded, as in the
    article), or with ``"all"`` every position of the map, border included. ``k`` equal to the number of interior
    positions gives each interior position once."""
    if k == "all":
        ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        return np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.int32)
    y0, y1, x0, x1 = interior_box(height, width)
    n_cells = (y1 - y0) * (x1 - x0)
    rng = np.random.default_rng([seed, image_id])
    flat = rng.choice(n_cells, size=k, replace=k > n_cells)
    ys = y0 + flat // (x1 - x0)
    xs = x0 + flat % (x1 - x0)
    return np.stack([ys, xs], axis=1).astype(np.int32)


SAME_ROWS_RULE = (
    "each row of another layer is the main layer's row (same image, same order) at the position of that layer's "
    "H' x W' grid holding the centre of the main row's position: y' = floor((y + 0.5) * H' / H), x' likewise; "
    "a class-token row stays one"
)


def map_positions(positions: np.ndarray, from_grid: tuple[int, int], to_grid: tuple[int, int]) -> np.ndarray:
    """int32 [n, 2] (y, x) positions of a ``from_grid`` map -> the positions of a ``to_grid`` map covering the same
    input point (each position's centre, as a fraction of the input): one layer's rows read at another layer
    (:data:`SAME_ROWS_RULE`). Negative positions (a class-token row, at -1) are kept as they are."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    scale = np.array(to_grid, dtype=np.float64) / np.array(from_grid, dtype=np.float64)
    mapped = np.floor((positions + 0.5) * scale).astype(np.int64)
    mapped = np.minimum(mapped, np.array(to_grid, dtype=np.int64) - 1)
    return np.where(positions < 0, positions, mapped).astype(np.int32)
