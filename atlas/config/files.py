"""Files and folders a config names, checked on this machine's disk before any work.

Validation is about values; these look at the disk, once, at the command line's edge, so a path that does not
exist, cannot be read or cannot be written fails with one line before a model loads or a bundle is touched.
(Remote URLs are left to the store: only the workers' view of them counts.)
"""

from __future__ import annotations

import os
from pathlib import Path

from atlas.config.inputs import ModelConfig
from atlas.config.schema import AtlasConfig
from atlas.errors import AtlasError


def check_model_files(model: ModelConfig) -> None:
    """``model.weights`` and ``model.classes`` exist and can be read (the classes file as UTF-8 text)."""
    _readable_file(model.weights, "model.weights", "give a state dict saved with torch.save, or remove the key")
    _readable_file(model.classes, "model.classes", "give a UTF-8 text file with one class name per line, or remove the key", text=True)


def check_files(config: AtlasConfig) -> None:
    """Every local path of an atlas (or experiment) config: inputs readable, ``output.dir`` writable (created if missing)."""
    check_model_files(config.model)
    _readable_file(config.layout.coords, "layout.coords", "give a .npy of [N, 2] coordinates or remove the key")
    for path in config.scheduler.upload:
        _readable_file(path, "scheduler.upload", "list .py, .zip or .egg files the workers should import")
    _readable_folder(config.images.source)
    _writable_folder(config.output.dir)


def _local(text: str) -> Path | None:
    """The local path a path-or-URL string names, or None for a URL of another store."""
    protocol = text.split("://", 1)[0].lower() if "://" in text else ""
    if protocol not in ("", "file", "local"):
        return None
    return Path(text.split("://", 1)[1] if protocol else text).expanduser()


def _readable_file(path: Path | None, key: str, fix: str, text: bool = False) -> None:
    if path is None:
        return
    path = Path(path).expanduser()
    try:
        if not path.exists():
            raise AtlasError(f"{key} '{path}': no such file; {fix}")
        if not path.is_file():
            raise AtlasError(f"{key} '{path}': not a file (a folder or a device); {fix}")
        with path.open("rb") as handle:
            head = handle.read() if text else handle.read(1)
        if text:
            head.decode("utf-8")
    except OSError as err:
        raise AtlasError(f"{key} '{path}': cannot read it ({err.strerror}); {fix}") from None
    except UnicodeDecodeError as err:
        raise AtlasError(f"{key} '{path}': not UTF-8 text (byte {err.start}); {fix}") from None


def _readable_folder(source: str) -> None:
    """``images.source`` when it is a local folder (not builtin:, torchvision:, memory: or a URL): it exists and can be listed."""
    text = source.strip()
    folder = None if text.startswith(("builtin:", "torchvision:", "memory:")) else _local(text)
    if folder is None:
        return
    fix = "give a folder of images, 'builtin:photos' or 'torchvision:FashionMNIST'"
    try:
        if not folder.is_dir():
            raise AtlasError(f"images.source '{text}': no such folder; {fix}")
        with os.scandir(folder) as entries:
            next(entries, None)
    except (OSError, ValueError) as err:
        raise AtlasError(f"images.source '{text}': cannot list it ({getattr(err, 'strerror', None) or err}); {fix}") from None


def _writable_folder(text: str) -> None:
    """``output.dir`` when local: created if missing (as the run would), and writable."""
    folder = _local(text)
    if folder is None:
        return
    fix = "give a writable folder with --out or output.dir"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as err:
        raise AtlasError(f"output.dir '{text}': cannot create it ({getattr(err, 'strerror', None) or err}); {fix}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AtlasError(f"output.dir '{text}': not writable; {fix}")
