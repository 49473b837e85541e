"""A local copy of what the viewer reads of a bundle on an object store (``atlas serve URL``)."""

from __future__ import annotations

from pathlib import Path

from atlas.bundle.paths import ACTIVATIONS, MANIFEST
from atlas.bundle.reader import Bundle
from atlas.errors import AtlasError
from atlas.storage import Location


def copy_for_viewing(root: Location | Bundle, target: Path) -> int:
    """Mirror what the viewer reads of the bundle at ``root`` (on a store; or an opened Bundle, as this took before)
    into the local folder ``target``; returns files fetched.

    Leaves out activation stores (the bulk of a bundle and of its class atlases; the page never reads them) and
    dot-files (markers).
    A file already there with the same size is not fetched again, so a second call fetches only what changed.
    """
    if isinstance(root, Bundle):
        root = root.root
    if isinstance(root, Path):
        raise TypeError("copy_for_viewing copies a bundle on a store; a local bundle is served where it is")
    fs, base = root.fs, root.path.rstrip("/")
    if not fs.exists(f"{base}/{MANIFEST}"):
        raise AtlasError(f"{root}: no {MANIFEST}; is this a bundle written by `atlas run`?")
    sources, targets = [], []
    for key, info in sorted(fs.find(base, detail=True).items()):
        relative = key[len(base) + 1 :]
        parts = relative.split("/")
        if ACTIVATIONS in parts[:-1] or any(part.startswith(".") for part in parts):  # sub-bundles' stores too
            continue
        local = target.joinpath(*parts)
        if local.is_file() and local.stat().st_size == info.get("size"):
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        sources.append(key)
        targets.append(str(local))
    if sources:
        fs.get(sources, targets)
    return len(sources)
