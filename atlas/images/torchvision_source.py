"""Any torchvision classification dataset, by class name, as an image source with labels.

Fashion-MNIST is also packaged by Debian; when that copy is on the machine it
is unpacked into the layout torchvision expects and opened without a
download (torchvision's own checksums are for different .gz files). Elsewhere
torchvision downloads the dataset, which is the normal path for users.
"""

from __future__ import annotations

import gzip
import inspect
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atlas.errors import AtlasError
from atlas.images.indexed import IndexedSource
from atlas.images.modes import to_8bit

# torchvision class name -> folder holding its .gz files, as Debian's dataset packages install them.
DEBIAN_DATASETS: dict[str, Path] = {"FashionMNIST": Path("/usr/share/datasets/fashion-mnist")}


class TorchvisionSource(IndexedSource):
    """``torchvision.datasets.<name>`` for one split; shards are ranges of dataset indices."""

    def __init__(self, name: str, split: str, root: Path) -> None:
        self.name = name
        self.split = split
        self.root = Path(root).expanduser()
        self._dataset: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Ship the recipe, not the opened dataset: each worker opens its own copy once."""
        state = self.__dict__.copy()
        state["_dataset"] = None
        return state

    @property
    def labels(self) -> list[str] | None:
        classes = getattr(self.dataset(), "classes", None)
        return [str(name) for name in classes] if classes is not None else None

    def identity(self) -> str:
        return f"torchvision:{self.name}?split={self.split}"

    def dataset(self) -> Any:
        """The opened dataset, cached on this instance (so once per worker process)."""
        if self._dataset is None:
            self._dataset = open_dataset(self.name, self.split, self.root)
        return self._dataset

    def item_name(self, index: int) -> str:
        return f"{self.split}/{index}"

    def read_item(self, item: Any) -> tuple[Image.Image, int | None]:
        image, target = item
        return to_8bit(_as_pil(image)), _as_label(target)


def open_dataset(name: str, split: str, root: Path) -> Any:
    """Construct ``torchvision.datasets.<name>`` with whichever split argument it takes."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name)
    parameters = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "train" in parameters:
        if split not in ("train", "test"):
            raise AtlasError(f"images.source 'torchvision:{name}?split={split}': {name} has only 'train' and 'test'")
        kwargs["train"] = split == "train"
    elif "split" in parameters:
        kwargs["split"] = split
    unpacked = unpack_debian_copy(cls, Path(root))
    if "download" in parameters:
        kwargs["download"] = not unpacked
    try:
        return cls(str(root), **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AtlasError(f"images.source 'torchvision:{name}?split={split}': cannot open it under {root} ({reason})") from None


def unpack_debian_copy(cls: type, root: Path) -> bool:
    """Gunzip Debian's copy of ``cls``'s raw files into ``root/<Name>/raw/``; True when it is there.

    Each file is written to a temporary name and renamed, so workers opening
    the dataset at the same time never see half a file.
    """
    source = DEBIAN_DATASETS.get(cls.__name__)
    names = [os.path.basename(url) for url, _md5 in getattr(cls, "resources", [])]
    if source is None or not names or not all((source / name).is_file() for name in names):
        return False
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = raw / name.removesuffix(".gz")
        if target.exists():
            continue
        with tempfile.NamedTemporaryFile(dir=raw, prefix=f".{target.name}.", delete=False) as partial:
            try:
                with gzip.open(source / name, "rb") as packed:
                    shutil.copyfileobj(packed, partial, 1 << 20)
            except BaseException:
                os.unlink(partial.name)
                raise
        os.replace(partial.name, target)
    return True


def _as_pil(image: Any) -> Image.Image:
    """Datasets without a transform return PIL images; a few return arrays or tensors."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def _as_label(target: Any) -> int | None:
    """The class index when the target is one number; None for boxes, captions and the like."""
    if isinstance(target, (int, np.integer)):
        return int(target)
    if hasattr(target, "ndim") and target.ndim == 0:
        return int(target.item())
    return None
