"""Labelled training and test images as uint8 arrays, read once and shared by every variant.

Small-image classification (Fashion-MNIST, CIFAR, a folder of class
sub-folders shrunk to at most 64 px) fits in memory as uint8, so every variant
trains from the same arrays in the same order without any data-loader
randomness. Images come through the same sources and decoding as ``atlas
run``, so an unreadable file is skipped and counted here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.errors import AtlasError
from atlas.images.decode import DEFAULT_MAX_PIXELS, load_image
from atlas.images.preprocess import fit_square
from atlas.images.source import ImageRecord
from atlas.models.record import Preprocessing

MAX_INPUT = 64  # the default input size never exceeds this: the comparison nets are built for small images
GREY_MEAN_STD = (0.5,)
RGB_MEAN, RGB_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]


@dataclass
class TrainingData:
    train: Split
    test: Split
    classes: list[str]
    preprocessing: Preprocessing
    images_source: str  # the images `atlas compare` builds atlases of: the test split, or the whole folder without one
    skipped: list[dict[str, str]] = field(default_factory=list)


def load_training_data(
    dataset: str,
    *,
    root: Path | None = None,
    limit_train_images: int | None = None,
    limit_test_images: int | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    input_size: int | None = None,
    channels: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainingData:
    """Both splits of ``dataset`` (``torchvision:NAME`` or a folder of class sub-folders) at one size and channel count.

    ``root``: where torchvision datasets live; ``test_fraction`` and ``seed``: the held-out part of a folder without
    train/ and test/; ``input_size`` and ``channels``: default from the first image (at most 64 px; 1 for grey).
    """
    text = dataset.strip()
    if text.startswith("torchvision:"):
        train_records, test_records, classes, source = _torchvision(text, root)
    else:
        train_records, test_records, classes, source = _folder(Path(text).expanduser(), test_fraction, seed)
        if Path(source).name != "test":
            log(f"[train] {text}: no train/ and test/ sub-folders, so {test_fraction:.0%} is held out for testing; "
                "atlases will use every image of the folder (set images.source to held-out images to change that)")  # fmt: skip
    train_iter = islice(train_records, limit_train_images)
    skipped: list[dict[str, str]] = []
    first = next(train_iter, None)
    if first is None:
        raise AtlasError(f"train.dataset {text!r}: no training images found")
    prep = _preprocessing(channels, input_size, first.image)
    train = _to_arrays(chain([first], train_iter), prep, skipped)
    test = _to_arrays(islice(test_records, limit_test_images), prep, skipped)
    if len(train.labels) == 0 or len(test.labels) == 0:
        raise AtlasError(f"train.dataset {text!r}: no readable images in the {'train' if len(train.labels) == 0 else 'test'} split")
    if skipped:
        log(f"[train] skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]['name']}: {skipped[0]['error']}")
    return TrainingData(train, test, classes, prep, source, skipped)


def to_model_input(images: np.ndarray | torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> the float input the model expects."""
    return prep.normalise(torch.as_tensor(images).float().div_(255.0))


Records = Iterator[ImageRecord]


def _torchvision(text: str, root: Path | None) -> tuple[Records, Records, list[str], str]:
    from atlas.images import open_source

    base = text.partition("?")[0]
    if "?" in text:
        raise AtlasError(f"train.dataset {text!r}: name the dataset only ({base!r}); training uses its train split, testing its test split")
    splits = []
    for split in ("train", "test"):
        source = open_source(f"{base}?split={split}", root=root)
        (shard,) = source.plan(Path("."), None, 1 << 40)
        splits.append((source, source.read(shard)))
    (train_source, train), (_, test) = splits
    classes = train_source.labels
    if classes is None:
        raise AtlasError(f"train.dataset {text!r}: the dataset has no class names (.classes); it is not a classification dataset")
    return train, test, list(classes), f"{base}?split=test"


def _folder(root: Path, test_fraction: float, seed: int) -> tuple[Records, Records, list[str], str]:
    """ImageFolder layout: ``root/CLASS/*.jpg``, or ``root/train/CLASS/…`` and ``root/test/CLASS/…``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not root.is_dir():
        raise AtlasError(f"train.dataset {str(root)!r}: no such folder; use torchvision:NAME or a folder of class sub-folders")

    def listing(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
        try:
            classes, index = find_classes(str(folder))
        except FileNotFoundError:
            raise AtlasError(f"train.dataset {str(folder)!r}: expected one sub-folder per class") from None
        return make_dataset(str(folder), index, extensions=IMG_EXTENSIONS, allow_empty=True), classes

    if (root / "train").is_dir() and (root / "test").is_dir():
        train_items, classes = listing(root / "train")
        test_items, test_classes = listing(root / "test")
        if test_classes != classes:
            raise AtlasError(f"train.dataset {str(root)!r}: train/ and test/ must have the same class sub-folders")
        return _decode(train_items), _decode(test_items), classes, str(root / "test")
    items, classes = listing(root)
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = max(1, round(len(items) * test_fraction))
    test_ids, train_ids = sorted(order[:n_test]), sorted(order[n_test:])
    return _decode([items[i] for i in train_ids]), _decode([items[i] for i in test_ids]), classes, str(root)


def _decode(items: Iterable[tuple[str, int]]) -> Records:
    for k, (path, label) in enumerate(items):
        image, error = load_image(Path(path), DEFAULT_MAX_PIXELS, size_hint=MAX_INPUT)
        yield ImageRecord(k, path, image, label=label, error=error)


def _preprocessing(channels: int | None, input_size: int | None, first: Image.Image | None) -> Preprocessing:
    channels = channels or (1 if first is not None and first.mode in ("L", "I", "I;16", "F", "1") else 3)
    size = input_size or (min(MAX_INPUT, min(first.size)) if first is not None else 32)
    mean, std = (GREY_MEAN_STD, GREY_MEAN_STD) if channels == 1 else (RGB_MEAN, RGB_STD)
    return Preprocessing(input_size=size, channels=channels, mean=mean, std=std)


def _to_arrays(records: Iterable[ImageRecord], prep: Preprocessing, skipped: list[dict[str, str]]) -> Split:
    images: list[np.ndarray] = []
    labels: list[int] = []
    for record in records:
        if record.image is None or record.label is None:
            skipped.append({"name": record.name, "error": record.error or "no label"})
            continue
        square = fit_square(record.image, prep.input_size)
        square = square.convert("L") if prep.channels == 1 else square.convert("RGB")
        pixels = np.asarray(square, dtype=np.uint8)
        images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
        labels.append(int(record.label))
    shape = (0, prep.channels, prep.input_size, prep.input_size)
    return Split(np.stack(images) if images else np.zeros(shape, np.uint8), np.asarray(labels, dtype=np.int64))
