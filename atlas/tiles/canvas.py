"""A grid's canvas on disk: an uncompressed BigTIFF that bands of icon rows are written into.

The canvas of a 320-cell grid of 80 px icons is 25,600 px square (about 2 GB
of RGB), so it never exists in memory. :func:`create_canvas` writes only a
small header and sizes the file (sparse); each :func:`write_band` call (one
Dask task) composes a few rows of cells in memory and writes them at their
offset. The pixels are stored contiguously after the header, one strip per
``ROWS_PER_STRIP`` rows, so the file is both a plain raw array at
``data_offset`` and a TIFF that libvips streams strip by strip (a raw file
would be memory-mapped whole, and every page it touches would count in the
process's resident memory).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atlas.io import naming
from atlas.storage import Location

ROWS_PER_STRIP = 16
BACKGROUND = 245  # empty cells: a light grey, in every band
BAND_BYTES = 32 << 20  # the most one band task composes in memory (at least one row of cells)

# TIFF tag numbers and field types (BigTIFF adds LONG8 = 16).
_SHORT, _LONG, _LONG8 = 3, 4, 16
_TYPE_CODE = {_SHORT: "H", _LONG: "I", _LONG8: "Q"}


@dataclass(frozen=True)
class Canvas:
    """Where a canvas file keeps its pixels: ``height`` rows of ``width * bands`` bytes from ``data_offset``."""

    path: Path
    width: int
    height: int
    bands: int  # 3 (RGB) or 1 (grayscale)
    data_offset: int

    @property
    def row_bytes(self) -> int:
        return self.width * self.bands

    def read(self) -> np.ndarray:
        """The whole canvas as ``[H, W, bands]`` uint8 (for tests and small canvases only)."""
        array = np.fromfile(self.path, np.uint8, self.height * self.row_bytes, offset=self.data_offset)
        return array.reshape(self.height, self.width, self.bands)


def create_canvas(path: Path, width: int, height: int, bands: int) -> Canvas:
    """Write the TIFF header of a ``width`` x ``height`` canvas and size the file; pixels come later."""
    if bands not in (1, 3):
        raise ValueError(f"a canvas has 1 or 3 bands, not {bands}")
    n_strips = -(-height // ROWS_PER_STRIP)
    row_bytes = width * bands
    # Header (16) + IFD (8 + 10 entries x 20 + 8) + strip offsets and byte counts, then pixels on a 4 KiB boundary.
    arrays_at = 16 + 8 + 10 * 20 + 8
    data_offset = -(-(arrays_at + 16 * n_strips) // 4096) * 4096
    strip_offsets = [data_offset + k * ROWS_PER_STRIP * row_bytes for k in range(n_strips)]
    strip_counts = [min(ROWS_PER_STRIP, height - k * ROWS_PER_STRIP) * row_bytes for k in range(n_strips)]

    extra = bytearray()

    def entry(tag: int, kind: int, values: Sequence[int]) -> bytes:
        packed = struct.pack(f"<{len(values)}{_TYPE_CODE[kind]}", *values)
        if len(packed) <= 8:
            field = packed.ljust(8, b"\0")
        else:
            field = struct.pack("<Q", arrays_at + len(extra))
            extra.extend(packed)
        return struct.pack("<HHQ", tag, kind, len(values)) + field

    entries = [
        entry(256, _LONG, [width]),  # ImageWidth
        entry(257, _LONG, [height]),  # ImageLength
        entry(258, _SHORT, [8] * bands),  # BitsPerSample
        entry(259, _SHORT, [1]),  # Compression: none
        entry(262, _SHORT, [2 if bands == 3 else 1]),  # Photometric: RGB, or min-is-black
        entry(273, _LONG8, strip_offsets),  # StripOffsets
        entry(277, _SHORT, [bands]),  # SamplesPerPixel
        entry(278, _LONG, [ROWS_PER_STRIP]),  # RowsPerStrip
        entry(279, _LONG8, strip_counts),  # StripByteCounts
        entry(284, _SHORT, [1]),  # PlanarConfiguration: chunky
    ]
    header = struct.pack("<2sHHHQ", b"II", 43, 8, 0, 16) + struct.pack("<Q", len(entries)) + b"".join(entries)
    header += struct.pack("<Q", 0) + bytes(extra)  # no next IFD, then the out-of-line arrays
    assert len(header) <= data_offset
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(data_offset + height * row_bytes)  # sparse: every row is written by a band
    return Canvas(path, width, height, bands, data_offset)


def rows_per_band(canvas: Canvas, cell_px: int, max_bytes: int = BAND_BYTES) -> int:
    """How many rows of cells one band task composes: as many as fit ``max_bytes``, at least one."""
    return max(1, max_bytes // (cell_px * canvas.row_bytes))


def load_icon(path: Location, bands: int, icon_px: int, scale: int) -> np.ndarray:
    """An icon PNG as ``[cell, cell, bands]`` uint8: resized to ``icon_px`` if it is not, then scaled up by
    an integer factor with nearest-neighbour sampling (so small icons stay crisp)."""
    with path.open("rb") as handle, Image.open(handle) as image:  # a local file, or an object on the bundle's store
        picture = image.convert("RGB" if bands == 3 else "L")
    if picture.size != (icon_px, icon_px):
        picture = picture.resize((icon_px, icon_px), Image.Resampling.LANCZOS)
    pixels = np.asarray(picture, dtype=np.uint8).reshape(icon_px, icon_px, bands)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    return pixels


def write_band(
    canvas: Canvas,
    first_row: int,
    n_rows: int,
    icons: Sequence[tuple[int, int, Location]],
    icon_px: int,
    scale: int,
    background: int = BACKGROUND,
) -> int:
    """Compose cell rows ``first_row .. first_row + n_rows - 1`` of icons and write them into the canvas file.

    ``icons`` holds ``(i, j, path)`` for the kept cells in those rows (column
    ``i``, row ``j``); every other cell is ``background``. Returns the number
    of icons placed. Memory: one band, ``n_rows * cell * width * bands`` bytes.
    """
    paint = functools.partial(load_icon, bands=canvas.bands, icon_px=icon_px, scale=scale)
    return write_pictures(canvas, first_row, n_rows, icons, icon_px * scale, paint, background)


def write_pictures(
    canvas: Canvas,
    first_row: int,
    n_rows: int,
    cells: Sequence[tuple[int, int, Any]],
    cell_px: int,
    paint: Callable[[Any], np.ndarray],
    background: int = BACKGROUND,
) -> int:
    """:func:`write_band` for any picture of a cell: ``paint(source)`` gives each ``(i, j, source)`` cell's
    ``[cell_px, cell_px, bands]`` pixels (an icon, a cell's example patches: atlas.tiles.cell_pictures)."""
    cell = cell_px
    band = np.full((n_rows * cell, canvas.width, canvas.bands), background, np.uint8)
    for i, j, source in cells:
        top = (j - first_row) * cell
        band[top : top + cell, i * cell : (i + 1) * cell] = paint(source)
    top_px = first_row * cell
    bottom_px = min(canvas.height, top_px + n_rows * cell)
    data = memoryview(np.ascontiguousarray(band[: bottom_px - top_px])).cast("B")  # type: ignore[arg-type]
    fd = os.open(canvas.path, os.O_WRONLY)
    try:
        position, written = canvas.data_offset + top_px * canvas.row_bytes, 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], position + written)
    except OSError as err:  # a full disk: say which file
        named = naming(err, canvas.path)
        if named is err:
            raise
        raise named from err
    finally:
        os.close(fd)
    return len(cells)
