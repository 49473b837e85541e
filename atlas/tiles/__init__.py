"""Tiles: each grid's icons as one canvas, cut into a Deep Zoom pyramid, plus a poster and dataset patches.

The canvas of a g-cell grid is g x cell pixels square, where a cell is the icon
scaled up by an integer factor (``default_scale``: the smallest making cells
at least ``MIN_CELL_PX``, so 28 px Fashion-MNIST icons become 84 px cells).
It lives on disk (:mod:`atlas.tiles.canvas`), is filled by bands of rows that
can be written in parallel, and is streamed by libvips into the pyramid and the
poster (:mod:`atlas.tiles.pyramid`): memory never holds the whole canvas.
"""

from __future__ import annotations

import math

from atlas.tiles.canvas import BACKGROUND, Canvas, create_canvas, rows_per_band, write_band, write_pictures
from atlas.tiles.patches import PATCH_STRIDES, patch_box, save_patches
from atlas.tiles.pyramid import OVERLAP, TILE_SIZE, save_poster, save_pyramid

MIN_CELL_PX = 64

__all__ = [
    "BACKGROUND",
    "MIN_CELL_PX",
    "OVERLAP",
    "PATCH_STRIDES",
    "TILE_SIZE",
    "Canvas",
    "create_canvas",
    "default_scale",
    "patch_box",
    "rows_per_band",
    "save_patches",
    "save_poster",
    "save_pyramid",
    "write_band",
    "write_pictures",
]


def default_scale(icon_px: int, min_cell_px: int = MIN_CELL_PX) -> int:
    """The smallest integer factor that makes an ``icon_px`` icon at least ``min_cell_px`` on the canvas."""
    return max(1, math.ceil(min_cell_px / icon_px))
