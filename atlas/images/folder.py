"""A folder tree of the user's own images, listed once per run, read in shards by workers.

The listing streams to ``images.txt`` in the run folder (one path relative to
the root per line) so that the driver's memory does not grow with the number
of files: only the current folder's entries and the list of shards (each an
offset into that file and a count) are held. Image ids follow the listing
order: depth first, the entries of every folder sorted by name.

A line is the name's bytes as they are (names need not be UTF-8), except for
a name that holds a line break (``\n``, ``\r``, or any other character
``str.splitlines`` breaks at) or starts with ``/`` (which a relative path never
does): that line is ``/`` followed by the name with each backslash doubled,
``\n`` and ``\r`` written as a backslash and ``n`` or ``r``, and the bytes of
the other breaks as a backslash, ``x`` and two hex digits
(:func:`listing_line`, :func:`read_listing_line`). So every line-based reader
sees one line per file, and every other name is written exactly as before.

The tree is listed again on every run; ``identity()`` names the root and the
decode limit only, so a cache keyed on it cannot tell that files changed under
the same root. ``listing_digest`` (set by ``plan``) hashes the listed names
for callers that want to notice renames, additions and removals.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image
from upath import UPath

from atlas.bundle.paths import IMAGE_INDEX_NAME, LISTING_SKIPS_NAME
from atlas.errors import AtlasError
from atlas.images.decode import load_image
from atlas.images.source import ImageRecord, Shard, one_line
from atlas.io import partial_file
from atlas.storage import Location, location

INDEX_NAME, SKIPPED_NAME = IMAGE_INDEX_NAME, LISTING_SKIPS_NAME  # the listing's files, named with the bundle's
NOT_AN_IMAGE = "not an image"
_ENCODING = ("utf-8", "surrogateescape")  # file names need not be valid UTF-8; keep their bytes exactly
_ESCAPED = b"/"  # a relative path never starts with "/": such a line holds an escaped name
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines breaks a line
_SHORT = {b"\n": b"\\n", b"\r": b"\\r"}
_ESCAPE = re.compile(rb"\\(x[0-9a-f]{2}|.)", re.DOTALL)


def listing_line(text: str) -> bytes:
    """One line of ``images.txt`` (or of the skipped listing) for ``text``, ending in a newline."""
    raw = text.encode(*_ENCODING)
    if raw.startswith(_ESCAPED) or any(char in text for char in _BREAKS):
        raw = raw.replace(b"\\", b"\\\\")
        for char in _BREAKS:
            encoded = char.encode("utf-8")
            raw = raw.replace(encoded, _SHORT.get(encoded) or b"".join(b"\\x%02x" % byte for byte in encoded))
        raw = _ESCAPED + raw
    return raw + b"\n"


def read_listing_line(line: bytes) -> str:
    """The text :func:`listing_line` wrote (its trailing newline optional)."""
    raw = line[:-1] if line.endswith(b"\n") else line
    if raw.startswith(_ESCAPED):
        raw = _ESCAPE.sub(_unescape, raw[1:])
    return raw.decode(*_ENCODING)


def _unescape(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    if code.startswith(b"x") and len(code) == 3:
        return bytes([int(code[1:], 16)])
    return {b"n": b"\n", b"r": b"\r"}.get(code, code)


class FolderSource:
    """Every file under ``root`` whose extension Pillow knows, in a deterministic order."""

    labels: list[str] | None = None

    def __init__(self, root: Location | str, max_pixels: int, size_hint: int | None = None) -> None:
        root = location(root)  # a local folder, or a URL on a store that every worker can read (atlas.storage)
        self.root: Location = root.resolve() if isinstance(root, Path) else root
        self.max_pixels = max_pixels
        self.size_hint = size_hint  # the model's input side: lets large JPEGs decode at a reduced scale
        self.extensions = frozenset(ext.lower() for ext in Image.registered_extensions())
        self.index_path: Location | None = None
        self.n_images: int | None = None
        self.skipped: dict[str, int] = {}
        self.listing_digest: str | None = None

    @property
    def n_skipped(self) -> int:
        """How many entries the last ``plan`` passed over (non-images, loops, unreadable folders)."""
        return sum(self.skipped.values())

    def identity(self) -> str:
        return f"folder:{self.root}?max_pixels={self.max_pixels}"

    def plan(self, workdir: Location, limit: int | None, shard_size: int) -> list[Shard]:
        """List the tree into ``workdir/images.txt`` and return shards pointing into it.

        Skipped entries go to ``workdir/skipped_listing.txt`` as ``reason<TAB>path``
        lines; their counts by reason end up in ``self.skipped``. With a ``limit``
        the walk stops at the limit-th image, so both cover only that prefix.
        """
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        if not self.root.is_dir():
            raise AtlasError(f"images.source '{self.root}': no such folder")
        workdir.mkdir(parents=True, exist_ok=True)
        index_path, skipped_path = workdir / INDEX_NAME, workdir / SKIPPED_NAME
        shards: list[Shard] = []
        skipped: Counter[str] = Counter()
        digest = hashlib.sha256()
        first_skip: tuple[str, str] | None = None
        n_images = offset = shard_offset = in_shard = 0
        with partial_file(index_path) as index, partial_file(skipped_path) as skipped_file:
            walk = _walk(self.root, self.extensions) if isinstance(self.root, Path) else _walk_store(self.root, self.extensions)
            for relative, reason in walk if limit != 0 else ():
                if reason is not None:
                    skipped[reason] += 1
                    first_skip = first_skip or (reason, relative)
                    skipped_file.write(listing_line(f"{reason}\t{relative}"))
                    continue
                line = listing_line(relative)
                index.write(line)
                digest.update(line)
                offset += len(line)
                n_images += 1
                in_shard += 1
                if in_shard == shard_size:
                    shards.append(Shard(len(shards), n_images - in_shard, in_shard, shard_offset))
                    shard_offset, in_shard = offset, 0
                if limit is not None and n_images >= limit:
                    break
        if in_shard:
            shards.append(Shard(len(shards), n_images - in_shard, in_shard, shard_offset))
        self.index_path, self.n_images = index_path, n_images
        self.skipped, self.listing_digest = dict(skipped), digest.hexdigest()
        if n_images == 0 and limit != 0:
            raise AtlasError(self._no_images(first_skip, skipped_path))
        return shards

    def _no_images(self, first_skip: tuple[str, str] | None, skipped_path: Location) -> str:
        """The one line for a listing that found no image: an empty tree, or what its entries were."""
        if first_skip is None:
            return f"images.source '{self.root}': the folder holds no files; point it at a folder of images"
        reason, name = first_skip
        return (
            f"images.source '{self.root}': no images found; {self.n_skipped} entries skipped (for example "
            f"'{one_line(name)}': {reason}; all of them in {skipped_path}); images are files with an extension Pillow "
            "reads (.jpg, .png, .webp, .tif, ...)"
        )

    def read(self, shard: Shard) -> Iterator[ImageRecord]:
        """Decode the shard's files in listing order; unreadable ones come back with ``image=None``."""
        if self.index_path is None:
            raise RuntimeError("FolderSource.read() before plan(): plan writes the index that shards point into")
        with self.index_path.open("rb") as index:
            index.seek(shard.offset)
            for position in range(shard.count):
                line = index.readline()
                if not line.endswith(b"\n"):
                    raise RuntimeError(f"{self.index_path} ends before shard {shard.index} does")
                relative = read_listing_line(line)
                image, error = load_image(self.root / relative, self.max_pixels, self.size_hint)
                yield ImageRecord(image_id=shard.start + position, name=relative, image=image, error=error)

    def read_ids(self, ids: Iterable[int]) -> Iterator[ImageRecord]:
        """Decode the files with these ids (line numbers of the index), in increasing id order.

        Streams the index once, up to the largest id asked for.
        """
        if self.index_path is None:
            raise RuntimeError("FolderSource.read_ids() before plan(): plan writes the index that ids point into")
        wanted = sorted(set(ids))
        if not wanted:
            return
        with self.index_path.open("rb") as index:
            position, line = 0, b""
            for image_id in wanted:
                while position <= image_id:
                    line = index.readline()
                    if not line.endswith(b"\n"):
                        raise RuntimeError(f"{self.index_path} has no image id {image_id}")
                    position += 1
                relative = read_listing_line(line)
                image, error = load_image(self.root / relative, self.max_pixels, self.size_hint)
                yield ImageRecord(image_id=image_id, name=relative, image=image, error=error)


def _walk(root: Path, extensions: frozenset[str]) -> Iterator[tuple[str, str | None]]:
    """Yield ``(relative_path, None)`` for image candidates and ``(relative_path, reason)`` for the rest.

    Depth first with an explicit stack (no recursion limit on deep trees);
    symlinked folders are followed, but a folder already listed, by any path,
    is not entered again, so symlink loops end.
    """
    visited = {_folder_key(root)}
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = [("", iter(_sorted_entries(root)))]
    while stack:
        prefix, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        relative = prefix + entry.name
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError as err:
            yield relative, f"cannot stat: {err.strerror}"
            continue
        if is_dir:
            try:
                key = _folder_key(Path(entry.path))
                if key in visited:
                    yield relative + "/", "folder already listed (symlink loop or duplicate link)"
                    continue
                visited.add(key)
                children = _sorted_entries(Path(entry.path))
            except OSError as err:
                yield relative + "/", f"cannot list folder: {err.strerror}"
                continue
            stack.append((relative + "/", iter(children)))
        elif not is_file:
            yield relative, "not a regular file (broken link, device or pipe)"
        elif os.path.splitext(entry.name)[1].lower() not in extensions:
            yield relative, NOT_AN_IMAGE
        else:
            yield relative, None


def _walk_store(root: UPath, extensions: frozenset[str]) -> Iterator[tuple[str, str | None]]:
    """:func:`_walk` for a folder on an object store: the same entries in the same order (depth first, by name).

    Sorting every key by its path segments gives a depth-first walk with each folder's entries by name; a
    store has no links, so there are no loops. The keys are listed in one go (a few hundred bytes each).
    """
    base = root.path.rstrip("/")
    keys = root.fs.find(base, withdirs=False)
    relatives = sorted((key[len(base) + 1 :] for key in keys if key.startswith(base + "/")), key=lambda name: name.split("/"))
    for relative in relatives:
        if os.path.splitext(relative)[1].lower() not in extensions:
            yield relative, NOT_AN_IMAGE
        else:
            yield relative, None


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _folder_key(folder: Path) -> tuple[int, int]:
    info = os.stat(folder)
    return info.st_dev, info.st_ino
