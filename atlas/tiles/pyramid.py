"""Deep Zoom pyramids and posters of a canvas file, streamed by libvips (pyvips).

libvips reads the canvas strip by strip and writes every pyramid level as it
goes, so memory stays at a few strips of the canvas's width whatever its
height. Both outputs appear atomically: the pyramid is built in a temporary
folder next to its destination and moved into place, ``.dzi`` last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from atlas.io import temp_sibling

TILE_SIZE = 256
OVERLAP = 1
TileFormat = Literal["jpg", "webp", "png"]


def _vips() -> Any:  # imported on first use, so importing atlas never loads libvips
    import pyvips

    return pyvips


def tile_suffix(fmt: TileFormat, quality: int) -> str:
    """The libvips save suffix of one tile: ``.jpg[Q=90]``, ``.webp[Q=90]`` or ``.png`` (lossless, for checks)."""
    if fmt == "png":
        return ".png"
    if fmt not in ("jpg", "webp"):
        raise ValueError(f"tile format {fmt!r}: expected jpg, webp or png")
    return f".{fmt}[Q={int(quality)}]"


def save_pyramid(canvas_path: Path, tiles_dir: Path, name: str, fmt: TileFormat = "jpg", quality: int = 90) -> Path:
    """Cut the canvas into ``tiles_dir/<name>.dzi`` + ``tiles_dir/<name>_files/<level>/<col>_<row>.<fmt>``.

    Standard Deep Zoom: 256 px tiles with 1 px overlap, levels halving down to
    one pixel. Returns the ``.dzi`` path.
    """
    pyvips = _vips()
    tiles_dir.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=tiles_dir))
    try:
        image = pyvips.Image.new_from_file(str(canvas_path), access="sequential")
        image.dzsave(str(temp / name), tile_size=TILE_SIZE, overlap=OVERLAP, depth="onepixel", suffix=tile_suffix(fmt, quality))
        (temp / f"{name}_files" / "vips-properties.xml").unlink(missing_ok=True)  # libvips' own notes, not Deep Zoom
        files, dzi = tiles_dir / f"{name}_files", tiles_dir / f"{name}.dzi"
        dzi.unlink(missing_ok=True)  # no .dzi may point at a half-replaced folder
        if files.exists():
            shutil.rmtree(files)
        os.replace(temp / f"{name}_files", files)
        os.replace(temp / f"{name}.dzi", dzi)
        return dzi
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def save_poster(canvas_path: Path, poster_path: Path, compression: int = 6) -> Path:
    """The whole canvas as one full-resolution PNG, streamed (for papers and slides)."""
    pyvips = _vips()
    poster_path.parent.mkdir(parents=True, exist_ok=True)
    name = str(temp_sibling(poster_path))
    try:
        pyvips.Image.new_from_file(str(canvas_path), access="sequential").pngsave(name, compression=compression)
        os.replace(name, poster_path)
    finally:
        Path(name).unlink(missing_ok=True)
    return poster_path
