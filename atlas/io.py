"""Atomic writes: every output appears whole or not at all, so a killed run resumes cleanly.

Locally: a temporary sibling, then a rename. On an object store (S3, GCS, Azure)
a single object's write is already atomic, so it is written in place; on other
remote file systems, under a temporary name and then moved. Work made of many
files (a shard, a batch of icons, a pyramid) is marked done by a marker written
last (atlas.markers), which is what makes it atomic on a store without renames.
"""

from __future__ import annotations

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

from atlas.storage import ATOMIC_PUT, Location, protocol


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
    os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600; bundles are served by other users too
    return Path(name)


def write_bytes(path: Location, data: bytes) -> None:
    if not isinstance(path, Path):
        _put(path, data)
        return
    temp = temp_sibling(path)
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


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
    temp = temp_sibling(path)
    try:
        with open(temp, "wb") as handle:  # a file object: np.save would append ".npy" to a name
            np.save(handle, array)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def partial_file(path: Location) -> Iterator[BinaryIO]:
    """A file to stream into that replaces ``path`` only if the block finishes (a listing too big to hold in memory)."""
    local = temp_sibling(path) if isinstance(path, Path) else Path(tempfile.mkstemp(suffix=".partial")[1])
    try:
        with open(local, "wb") as handle:
            yield handle
        if isinstance(path, Path):
            os.replace(local, path)
        else:
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


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
