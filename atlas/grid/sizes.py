"""Grid sizes the rows can fill: a grid keeps only cells holding ``min_count`` rows, so too fine a grid keeps none.

A layout clumps: its rows cover part of the square, so its occupied cells hold more than the mean. A grid is taken
to fill when its mean is at least two thirds of ``min_count`` rows per cell; the default atlas (986 images x 4
positions at grid 40, min_count 3: 2.5 rows per cell) passes, and a dozen photos' 1,728 rows at grid 40 (1.1) do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

FILL_SHARE = 2 / 3  # of min_count: the least mean rows per cell of a grid taken to fill
LADDER_BASE = 10  # sides from 10 up double (10, 20, 40, 80, ...), as the default and the article's grids do


def least_fill(min_count: int) -> float:
    """Mean rows per cell a grid needs, for ``grid.min_count``."""
    return FILL_SHARE * min_count


def fills(rows: int, side: int, min_count: int) -> bool:
    return rows >= least_fill(min_count) * side * side


def largest_filled_side(rows: int, min_count: int) -> int:
    """The largest side the rows fill: 10 x 2^k from 10 up, any side from 1 below 10."""
    side = max(1, math.isqrt(int(rows / least_fill(min_count))))
    if side < LADDER_BASE:
        return side
    return int(LADDER_BASE * 2 ** math.floor(math.log2(side / LADDER_BASE)))


def sizes_for_rows(rows: int, min_count: int, levels: int) -> tuple[int, ...]:
    """``levels`` grids, the finest the largest side the rows fill, each coarser one half the next (sides below 2
    left out, one grid at least)."""
    finest = largest_filled_side(rows, min_count)
    halved = {finest >> level for level in range(levels)}
    return tuple(sorted(side for side in halved if side >= 2)) or (finest,)


def fitted_sizes(configured: Sequence[int], rows: int, min_count: int) -> tuple[tuple[int, ...], str]:
    """The configured sizes when the rows fill the finest; otherwise :func:`sizes_for_rows` with as many levels. And
    the reason, for the manifest."""
    finest = max(configured)
    mean = rows / (finest * finest)
    fill = least_fill(min_count)
    if fills(rows, finest, min_count):
        return tuple(configured), (
            f"config: {rows:,} rows fill grid {finest} ({mean:.2f} per cell >= {fill:.2f}, two thirds of grid.min_count)"
        )
    sizes = sizes_for_rows(rows, min_count, len(configured))
    return sizes, (
        f"auto: {rows:,} rows leave grid {finest} at {mean:.2f} per cell, under {fill:.2f} (two thirds of grid.min_count "
        f"= {min_count}); the finest grid they fill is {max(sizes)}, halved for {len(configured)} levels"
    )
