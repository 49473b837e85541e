"""Deep Zoom pyramids and posters of a canvas file, streamed by libvips (pyvips).

libvips reads the canvas strip by strip and writes every pyramid level as it
goes, so memory stays at a few strips of the canvas's width whatever its
height. Both outputs appear atomically: the pyramid is built in a temporary
folder next to its destination and moved into place, ``.dzi`` last.

libvips (8.18) can report success for a dzsave whose small writes failed on a
full disk, leaving empty tiles and an empty ``.dzi``; so every file it wrote is
checked (present, whole by its format's trailer) before anything is moved into
place, and a libvips write error becomes the OSError it stands for, naming the
output (``atlas.io.out_of_space``).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from atlas.io import out_of_space, temp_sibling

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
    files, dzi = tiles_dir / f"{name}_files", tiles_dir / f"{name}.dzi"
    try:
        image = pyvips.Image.new_from_file(str(canvas_path), access="sequential")
        with _libvips_writing(files):
            image.dzsave(str(temp / name), tile_size=TILE_SIZE, overlap=OVERLAP, depth="onepixel", suffix=tile_suffix(fmt, quality))
        (temp / f"{name}_files" / "vips-properties.xml").unlink(missing_ok=True)  # libvips' own notes, not Deep Zoom
        check_written(temp, files)
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
        with _libvips_writing(poster_path):
            pyvips.Image.new_from_file(str(canvas_path), access="sequential").pngsave(name, compression=compression)
        check_written(Path(name), poster_path)
        os.replace(name, poster_path)
    finally:
        Path(name).unlink(missing_ok=True)
    return poster_path


def read_poster(png: bytes, max_side: int | None) -> Image.Image:
    """A poster's PNG as a PIL image, shrunk by libvips while it decodes so a full-size poster never sits in memory."""
    pyvips = _vips()
    image = pyvips.Image.new_from_buffer(png, "") if max_side is None else pyvips.Image.thumbnail_buffer(png, max_side, size="down")
    pixels = np.ndarray(buffer=image.write_to_memory(), dtype=np.uint8, shape=(image.height, image.width, image.bands))
    return Image.fromarray(pixels[..., 0] if image.bands == 1 else pixels)


@contextmanager
def _libvips_writing(target: Path) -> Iterator[None]:
    """A libvips error that says the disk is full is raised as that OSError, naming ``target``."""
    try:
        yield
    except _vips().Error as err:
        full = out_of_space(err)
        if full is None:
            raise
        raise OSError(full.errno, full.strerror, str(target)) from err


_TRAILERS = {".png": b"IEND\xaeB`\x82", ".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".dzi": b">"}


def check_written(path: Path, target: Path) -> None:
    """Every file at ``path`` (a file, or a folder's files) is whole: not empty, and ending as its format ends.

    Raises the OSError libvips should have raised, naming ``target``: ENOSPC when the disk is (nearly) full now,
    else EIO. A WebP tile is whole when its RIFF header's length matches the file's.
    """
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        with open(file, "rb") as handle:
            head = handle.read(12)
            handle.seek(max(0, size - 16))
            tail = handle.read()
        suffix = file.suffix.lower()
        whole = size > 0
        if whole and suffix in _TRAILERS:
            whole = (tail.rstrip() if suffix == ".dzi" else tail).endswith(_TRAILERS[suffix])
        elif whole and suffix == ".webp":
            whole = head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 == size
        if not whole:
            stat = os.statvfs(file.parent)
            code = errno.ENOSPC if stat.f_bavail * stat.f_frsize < 1 << 20 else errno.EIO
            raise OSError(code, f"{os.strerror(code)} (libvips left {file.name} incomplete)", str(target))
