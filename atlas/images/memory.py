"""Images handed to ``atlas.run`` in memory: a ``torch.utils.data.Dataset``, or a list of paths or PIL images.

An item is an image or ``(image, label)``. An image is a PIL image, a tensor as torchvision reads one (channels
first, ``uint8`` in 0-255 or a float in 0-1), or, in a list, a path to an image file. Anything else is read in no
second way: a float tensor outside 0-1 (normalised already) or a channels-last one is refused, an item at a time
when the run reads it (skipped and counted, like an unreadable file) and in one line when the run names the images.

The source's spec names it by content: the class, the length, an even sample of the items' pixels and labels, and
whatever the caller adds (``dataset_key``), so a dataset that changes only outside the sample needs a new key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from atlas.errors import AtlasError
from atlas.images.decode import DEFAULT_MAX_PIXELS, load_image
from atlas.images.indexed import IndexedSource
from atlas.images.modes import to_8bit
from atlas.images.torchvision_source import _as_label
from atlas.in_memory import memory_spec, registered

SAMPLE_ITEMS = 16  # items read into a dataset's spec, evenly spaced, first and last included


class ImageList:
    """A list of paths or PIL images as a dataset (items without labels)."""

    def __init__(self, items: Sequence[Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.items, self.max_pixels = list(items), max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        item = self.items[index]
        if isinstance(item, (str, os.PathLike)):
            image, error = load_image(Path(item).expanduser(), self.max_pixels)
            if image is None:
                raise ValueError(f"{item}: {error}")
            return image
        return item


class MemorySource(IndexedSource):
    """An in-memory dataset as an image source; it pickles as its spec alone, and a worker finds the dataset that
    the run shipped to it once (:mod:`atlas.in_memory`), so a task never carries the images."""

    def __init__(self, spec: str, dataset: Any) -> None:
        self.spec = spec
        self._dataset = dataset

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = registered(self.spec, "images.source")
        return self._dataset

    @property
    def labels(self) -> list[str] | None:
        classes = getattr(self.dataset(), "classes", None)
        return [str(name) for name in classes] if isinstance(classes, (list, tuple)) else None

    def identity(self) -> str:
        return self.spec

    def read_item(self, item: Any) -> tuple[Image.Image, int | None]:
        return read_item(item)


def as_dataset(images: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """A dataset for ``images``: a list or tuple of paths or PIL images is wrapped, anything indexable is used as it is."""
    if isinstance(images, (list, tuple)):
        return ImageList(images, max_pixels)
    if not (hasattr(images, "__len__") and hasattr(images, "__getitem__")):
        raise AtlasError(
            f"images: a {type(images).__name__} is not a dataset; give a spec string, a torch Dataset with a length, "
            "or a list of paths or PIL images"
        )
    return images


def dataset_spec(dataset: Any, dataset_key: str | None = None) -> str:
    """``memory:ClassName@DIGEST`` from the length, a sample of the items and ``dataset_key``.

    The sample is read now, so a dataset whose items cannot be read as images fails here, in one line.
    """
    n_items = len(dataset)
    if n_items == 0:
        raise AtlasError("images: the dataset is empty; give at least one image")
    picks = sorted({round(k * (n_items - 1) / (SAMPLE_ITEMS - 1)) for k in range(SAMPLE_ITEMS)})
    parts = [f"{type(dataset).__module__}.{type(dataset).__qualname__}:{n_items}:{dataset_key or ''}".encode()]
    for index in picks:
        try:
            image, label = read_item(dataset[index])
        except ItemFormError as err:  # every item is likely made the same way: say so now, not once per item
            raise AtlasError(f"images: item {index} of the dataset cannot be read as an image ({err}); {_ITEM_FORMS}") from None
        except Exception as err:  # an unreadable file: skipped when the run reads it, as in a folder
            parts.append(f"{index}:unreadable:{type(err).__name__}: {err}".encode())
            continue
        parts += [f"{index}:{image.mode}:{image.size}:{label}".encode(), image.tobytes()]
    return memory_spec(type(dataset).__name__, parts)


_ITEM_FORMS = "items are an image or (image, label): a PIL image, or a channels-first tensor, uint8 0-255 or float 0-1"


class ItemFormError(ValueError):
    """An item that is no image in any form atlas reads (as opposed to an image file that cannot be decoded)."""


def read_item(item: Any) -> tuple[Image.Image, int | None]:
    """An item as an 8-bit image and its label (None without one)."""
    label = None
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise ItemFormError(f"an item of {len(item)} parts; {_ITEM_FORMS}")
        item, label = item[0], _as_label(item[1])
    return to_8bit(_as_image(item)), label


def _as_image(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, torch.Tensor):
        raise ItemFormError(f"a {type(image).__name__}; {_ITEM_FORMS}")
    tensor = image.detach().to("cpu")
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ItemFormError(f"a tensor of shape {tuple(image.shape)}; expected channels first, [1 or 3, H, W]")
    if tensor.dtype == torch.uint8:
        array = tensor.numpy()
    elif tensor.is_floating_point():
        low, high = float(tensor.min()), float(tensor.max())
        if low < 0 or high > 1:
            raise ItemFormError(f"a float tensor with values in [{low:.3g}, {high:.3g}]; expected 0-1 before normalisation")
        array = (tensor.float().numpy() * 255).round().astype(np.uint8)
    else:
        raise ItemFormError(f"a {tensor.dtype} tensor; expected uint8 in 0-255 or a float in 0-1")
    pixels = array.transpose(1, 2, 0)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
