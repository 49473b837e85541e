"""The image-source contract: the driver plans shards, workers read them.

A source is a small picklable object. ``plan`` runs once on the driver and may
write an index into the run folder so that shards stay tiny (an offset and a
count, never a list of a million paths). ``read`` runs on a worker and yields
every image of one shard, in order, with ``image`` set to ``None`` (and
``error`` explaining why) for files that could not be decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from atlas.storage import Location


@dataclass(frozen=True)
class Shard:
    index: int
    start: int  # image id of the shard's first image; ids run 0..n_images-1 across the source
    count: int
    offset: int = 0  # source-specific position (for a folder: byte offset into its index file)


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    name: str
    image: Image.Image | None  # 8-bit "RGB" or "L"; None when unreadable
    label: int | None = None
    error: str | None = None


class ImageSource(Protocol):
    @property
    def labels(self) -> list[str] | None:
        """Class names, when the images carry labels (a plain attribute satisfies this too)."""
        ...

    def identity(self) -> str:
        """A string that changes whenever the images would (used in cache keys)."""
        ...

    def plan(self, workdir: Location, limit: int | None, shard_size: int) -> list[Shard]: ...

    def read(self, shard: Shard) -> Iterator[ImageRecord]: ...

    def read_ids(self, ids: Iterable[int]) -> Iterator[ImageRecord]:
        """The images with these ids (after ``plan``), in increasing id order; for reading examples back."""
        ...


def display_name(name: str) -> str:
    """An image's name as valid Unicode for the manifest and messages: bytes that are not UTF-8 show as ``\\xNN``.

    Folder names keep undecodable bytes as lone surrogates (``surrogateescape``, as ``os.fsdecode`` does); JSON
    readers that insist on valid Unicode would refuse those, so reports carry this form instead.
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name's bytes
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def one_line(name: str) -> str:
    """``name`` for a one-line message: line breaks shown as ``\\n`` and ``\\r``."""
    return display_name(name).replace("\n", "\\n").replace("\r", "\\r")


def index_shards(n_images: int, shard_size: int) -> list[Shard]:
    """Split ids ``0..n_images-1`` into consecutive shards (for sources indexed by position)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [
        Shard(index=k, start=start, count=min(shard_size, n_images - start), offset=start)
        for k, start in enumerate(range(0, n_images, shard_size))
    ]
