"""Decode one image file into an upright 8-bit image, or say in a few words why not.

A folder of a million user files always holds a few bad ones; one of them must
not end a run. So :func:`load_image` never raises for a bad file: it returns
``(None, reason)``. Bugs (a wrong argument) still raise.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from atlas.images.modes import to_8bit
from atlas.storage import Location

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit: images.max_pixels' default

# ``warnings.catch_warnings`` swaps a process-wide filter list; the lock keeps
# our own concurrent decodes from restoring each other's filters. It is held
# only while Pillow reads the header, never while pixels decode.
_HEADER_LOCK = threading.Lock()


def load_image(path: Location, max_pixels: int, size_hint: int | None = None) -> tuple[Image.Image | None, str | None]:
    """Return ``(image, None)`` with an 8-bit "RGB"/"L" image, or ``(None, reason)``.

    ``max_pixels`` plays the part of ``PIL.Image.MAX_IMAGE_PIXELS`` for this
    call only: larger images are refused before their pixels are decoded.
    ``size_hint`` (the model's input side) lets JPEGs decode at a reduced scale
    that still leaves the short side at least that long.
    """
    try:
        source: Path | io.BytesIO
        if isinstance(path, Path):
            if os.stat(path).st_size == 0:
                return None, "empty file"
            source = path
        else:  # one read of the whole object from the store: fewer round trips than Pillow's small reads
            data = path.read_bytes()
            if not data:
                return None, "empty file"
            source = io.BytesIO(data)
        with _open_checked(source, max_pixels) as image:
            width, height = image.size
            if width * height > max_pixels:
                return None, f"too large: {width}x{height} pixels is over max_pixels={max_pixels}"
            if size_hint is not None:
                image.draft(image.mode, (size_hint, size_hint))
            image.load()
            upright = _upright(image)
        return to_8bit(upright), None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "too large: over Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS)"
    except MemoryError:
        return None, "too large to decode in memory"
    except UnidentifiedImageError:
        return None, "not an image Pillow can read"
    except OSError as err:
        if err.strerror is not None:  # the file system's complaint (missing, no permission, ...)
            return None, f"cannot read: {err.strerror}"
        return None, f"truncated or corrupt: {_first_line(err)}"
    except Exception as err:
        return None, f"corrupt: {type(err).__name__}: {_first_line(err)}"


@contextmanager
def _open_checked(path: Path | io.BytesIO, max_pixels: int) -> Iterator[ImageFile.ImageFile]:
    """``Image.open`` with Pillow's bomb warning raised as an error when it is within our limit.

    Pillow warns above its global ``MAX_IMAGE_PIXELS`` and refuses above twice
    that. When ``max_pixels`` is at or below the global, the warning means the
    image is over our limit too, so it is raised early; when the user allowed
    more, it is ignored and our own size check decides.
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    action: Literal["error", "ignore"] = "error" if pillow_limit is not None and max_pixels <= pillow_limit else "ignore"
    with _HEADER_LOCK, warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        image = Image.open(path)
    try:
        yield image
    finally:
        image.close()


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:
        return image.copy()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
