"""What a cell shows in the pyramids beside the icons': its real example patches, or its icon beside its best one.

The icons say what the layer responds to in a cell; the examples view shows the real image patches the cell
stands for (the nonparametric, dataset-example atlas the article's review asked to compare against), and the
``both`` view splits every cell: the icon on the left half, the best example on the right, so hover and click
still name one cell. Each function paints one cell as ``[cell_px, cell_px, bands]`` uint8 for
:func:`atlas.tiles.canvas.write_pictures`; a band task calls it once per cell, so memory stays one band.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

from atlas.storage import Location
from atlas.tiles.canvas import BACKGROUND

ExamplesLayout = Literal["best", "mosaic"]
EXAMPLE_VIEWS = ("examples", "both")  # the pyramids a grid has beside its icons'
MOSAIC_SIDE = 2  # a mosaic is 2 x 2 of a cell's first four examples
SPLIT_GAP = 2  # px of background between the icon and the example in a split cell


def load_picture(path: Location, bands: int, side: int) -> np.ndarray:
    """An icon or patch file as ``[side, side, bands]`` uint8, resized (Lanczos) when it is not ``side`` square."""
    with path.open("rb") as handle, Image.open(handle) as image:  # a local file, or an object on the bundle's store
        picture = image.convert("RGB" if bands == 3 else "L")
    if picture.size != (side, side):
        picture = picture.resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(picture, dtype=np.uint8).reshape(side, side, bands)


def examples_picture(patches: Sequence[Location], bands: int, cell_px: int, layout: ExamplesLayout) -> np.ndarray:
    """A cell of the examples pyramid: its best patch filling the cell, or a 2 x 2 mosaic of its first four
    (fewer patches leave their quarters background). ``patches``: nearest the cell's direction first."""
    cell = np.full((cell_px, cell_px, bands), BACKGROUND, np.uint8)
    if not patches:
        return cell
    if layout == "best":
        return load_picture(patches[0], bands, cell_px)
    quarter = cell_px // MOSAIC_SIDE
    offset = (cell_px - quarter * MOSAIC_SIDE) // 2  # an odd cell keeps the mosaic centred
    for k, patch in enumerate(patches[: MOSAIC_SIDE * MOSAIC_SIDE]):
        top, left = offset + (k // MOSAIC_SIDE) * quarter, offset + (k % MOSAIC_SIDE) * quarter
        cell[top : top + quarter, left : left + quarter] = load_picture(patch, bands, quarter)
    return cell


def split_picture(icon_and_patch: tuple[Location, Location | None], bands: int, cell_px: int) -> np.ndarray:
    """A cell of the ``both`` pyramid: the icon on the left half, the best example patch on the right (background
    where the cell has none), each square and centred in its half."""
    icon, patch = icon_and_patch
    cell = np.full((cell_px, cell_px, bands), BACKGROUND, np.uint8)
    side = max(1, (cell_px - SPLIT_GAP) // 2)
    top = (cell_px - side) // 2
    cell[top : top + side, :side] = load_picture(icon, bands, side)
    if patch is not None:
        cell[top : top + side, cell_px - side :] = load_picture(patch, bands, side)
    return cell
