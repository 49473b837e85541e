"""Atomic writes: every output appears whole or not at all, so a killed run resumes cleanly.

Locally: a temporary sibling, then a rename. On an object store (S3, GCS, Azure)
a single object's write is already atomic, so it is written in place; on other
remote file systems, under a temporary name and then moved. Work made of many
files (a shard, a batch of icons, a pyramid) is marked done by a marker written
last (atlas.markers), which is what makes it atomic on a store without renames.

A full disk (ENOSPC, a quota, a file-size limit) fails a write with an OSError
that names the file being written (not its temporary name), and the temporary
file is removed; :func:`out_of_space` recognises such an error wherever it was
raised (here, in Zarr, in libvips' message) and :func:`out_of_space_as_error`
turns it into the one line a user reads.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from atlas.errors import AtlasError
from atlas.storage import ATOMIC_PUT, Location, protocol

# Errors that mean "the disk (or the quota, or the file-size limit) is full", and what the user can do about each.
DISK_FULL = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space or raise the disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def temp_sibling(path: Path, suffix: str = "") -> Path:
    """An empty file beside ``path`` with normal permissions, to be renamed over it when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600; bundles are served by other users too
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling to write; it replaces ``path`` only if the block finishes, and never outlives the call.

    An out-of-space error names ``path``, the file the caller asked for, not the temporary one.
    """
    temp: Path | None = None
    try:
        temp = temp_sibling(path)
        yield temp
        os.replace(temp, path)
    except OSError as err:
        named = naming(err, path)
        if named is err:
            raise
        raise named from err
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)


def naming(err: OSError, path: Location) -> OSError:
    """``err``; or, for an out-of-space error that names no file or only a temporary sibling of ``path``, the same
    error naming ``path`` (a write error carries no file name, and the temporary name means nothing to a user)."""
    if err.errno not in DISK_FULL:
        return err
    if err.filename is not None:
        name = os.path.basename(os.fsdecode(err.filename))
        if not (name.startswith(f".{path.name}.") and name.endswith(".tmp")):
            return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))


def write_bytes(path: Location, data: bytes) -> None:
    if not isinstance(path, Path):
        _put(path, data)
        return
    with _replacing(path) as temp:
        temp.write_bytes(data)


def _put(path: Location, data: bytes) -> None:
    if protocol(path) in ATOMIC_PUT:
        path.write_bytes(data)
        return
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temp.write_bytes(data)
        temp.rename(str(path))  # same store: a move by key
    finally:
        temp.unlink(missing_ok=True)


def write_json(path: Location, value: Any) -> None:
    write_bytes(path, (json.dumps(value, indent=1, sort_keys=False, default=_json_default) + "\n").encode())


def write_npy(path: Location, array: np.ndarray) -> None:
    if not isinstance(path, Path):
        buffer = io.BytesIO()
        np.save(buffer, array)
        _put(path, buffer.getvalue())
        return
    with _replacing(path) as temp, open(temp, "wb") as handle:  # a file object: np.save would append ".npy" to a name
        np.save(handle, array)


@contextmanager
def partial_file(path: Location) -> Iterator[BinaryIO]:
    """A file to stream into that replaces ``path`` only if the block finishes (a listing too big to hold in memory)."""
    if isinstance(path, Path):
        with _replacing(path) as temp, open(temp, "wb") as handle:
            yield handle
        return
    local = Path(tempfile.mkstemp(suffix=".partial")[1])
    try:
        with open(local, "wb") as handle:
            yield handle
        path.fs.put_file(str(local), path.path)  # one object, whole or absent
    finally:
        local.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only if the block finishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(temp, 0o777 & ~_UMASK)
    try:
        yield temp
        if path.exists():
            shutil.rmtree(path)
        os.replace(temp, path)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def read_json(path: Location) -> Any:
    return json.loads(path.read_bytes())


def read_npy(path: Location) -> np.ndarray:
    if isinstance(path, Path):
        return np.load(path)
    with path.open("rb") as handle:
        return np.load(io.BytesIO(handle.read()))


def upload_tree(local: Path, remote: Location) -> None:
    """Copy a finished local folder's files under ``remote`` (in parallel where the store allows), then nothing else.

    Not atomic as a whole on an object store: the caller writes its marker after this returns.
    """
    files = sorted(p for p in local.rglob("*") if p.is_file())
    if not files:
        return
    if isinstance(remote, Path):
        raise TypeError("upload_tree is for remote locations; use atomic_dir for local ones")
    fs = remote.fs
    targets = [f"{remote.path.rstrip('/')}/{p.relative_to(local).as_posix()}" for p in files]
    fs.put([str(p) for p in files], targets)


def remove_tree(path: Location) -> None:
    """Delete a folder (or prefix) and everything under it; nothing there is fine."""
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


def out_of_space(err: BaseException) -> OSError | None:
    """The out-of-space error behind ``err`` (itself, or what it was raised from), or None for any other error.

    An OSError with a :data:`DISK_FULL` errno, wherever it came from: atlas' own writes, Zarr's, a PNG encoder's,
    and a Dask task's (the driver re-raises the worker's OSError, errno and file name included). libvips reports
    its write errors as text, so an error whose message carries the system's wording for one counts too.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return current
        for code in DISK_FULL:
            if not isinstance(current, OSError) and os.strerror(code) in str(current):
                return OSError(code, os.strerror(code))
        current = current.__cause__ or current.__context__
    return None


def out_of_space_message(step: str, err: OSError, folder: Location) -> str:
    """One line: the step, what is full, the file (or else the folder) being written, and how to go on."""
    code = err.errno if err.errno in DISK_FULL else errno.ENOSPC
    target = os.fsdecode(err.filename) if err.filename is not None else f"into {folder}"
    return f"{step}: {os.strerror(code).lower()} writing {target}; {DISK_FULL[code]} and re-run the same command to resume"


@contextmanager
def out_of_space_as_error(step: str, folder: Location) -> Iterator[None]:
    """Inside the block, a full disk (see :func:`out_of_space`) becomes an AtlasError of one line naming ``step``."""
    try:
        yield
    except AtlasError:
        raise
    except Exception as err:
        full = out_of_space(err)
        if full is None:
            raise
        raise AtlasError(out_of_space_message(step, full, folder)) from err


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
