"""Image sources: where the pictures fed to the model come from.

``open_source`` is the one place that reads the ``images.source`` string:
a folder path, ``builtin:photos``, or ``torchvision:NAME`` (``?split=test``
for another split; default ``train``); ``memory:...`` names a dataset handed to
``atlas.run`` (:mod:`atlas.images.memory`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from urllib.parse import parse_qs

from atlas.errors import AtlasError
from atlas.images.builtin_photos import BuiltinPhotos
from atlas.images.decode import DEFAULT_MAX_PIXELS, load_image
from atlas.images.folder import FolderSource
from atlas.images.memory import MemorySource
from atlas.images.modes import to_8bit
from atlas.images.preprocess import batch_to_tensor, to_tensor
from atlas.images.source import ImageRecord, ImageSource, Shard, index_shards
from atlas.images.torchvision_source import TorchvisionSource
from atlas.in_memory import is_memory_spec, registered
from atlas.storage import location

__all__ = [
    "BuiltinPhotos",
    "FolderSource",
    "ImageRecord",
    "ImageSource",
    "MemorySource",
    "Shard",
    "TorchvisionSource",
    "batch_to_tensor",
    "index_shards",
    "load_image",
    "open_source",
    "to_8bit",
    "to_tensor",
]

DEFAULT_DATASET_ROOT = Path("~/.cache/atlas/datasets")
_BUILTIN = "builtin:photos"
_TORCHVISION = "torchvision:"
_EXPECTED = "give a folder of images, 'builtin:photos' or 'torchvision:FashionMNIST'"


def open_source(source: str, root: Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSource:
    """The image source ``source`` names; a wrong name is one readable AtlasError.

    ``root``: where torchvision datasets live (default ~/.cache/atlas/datasets); ``max_pixels``: a folder's
    decompression-bomb limit per image.
    """
    text = source.strip()
    if is_memory_spec(text):
        return MemorySource(text, registered(text, "images.source"))
    if text.startswith("builtin:"):
        if text != _BUILTIN:
            raise AtlasError(f"images.source '{text}': the built-in set is called '{_BUILTIN}'")
        return BuiltinPhotos()
    if text.startswith(_TORCHVISION):
        return _torchvision_source(text, root)
    folder = location(text)
    if not folder.is_dir():
        raise AtlasError(f"images.source '{text}': no such folder; {_EXPECTED}")
    return FolderSource(folder, max_pixels)


def _torchvision_source(text: str, root: Path | None) -> TorchvisionSource:
    name, _, query = text[len(_TORCHVISION) :].partition("?")
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - {"split"})
    if unknown:
        raise AtlasError(f"images.source '{text}': unknown option {unknown[0]!r}; the only option is '?split=NAME'")
    split = options.get("split", ["train"])[-1] or "train"
    available = _torchvision_datasets()
    if name not in available:
        by_case = [candidate for candidate in available if candidate.lower() == name.lower()]
        close = by_case or difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see the classes in torchvision.datasets"
        raise AtlasError(f"images.source '{text}': torchvision has no dataset {name!r}; {hint}")
    return TorchvisionSource(name, split, root if root is not None else DEFAULT_DATASET_ROOT.expanduser())


def _torchvision_datasets() -> list[str]:
    import torchvision.datasets

    return sorted(
        name
        for name in dir(torchvision.datasets)
        if isinstance(getattr(torchvision.datasets, name), type)
        and issubclass(getattr(torchvision.datasets, name), torchvision.datasets.VisionDataset)
        and name != "VisionDataset"
    )
