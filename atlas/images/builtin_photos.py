"""A demo image set made of real photos that ship with installed packages, so atlas runs offline.

Twenty-odd photos are too few for an atlas, so each one gives many square
crops: the full centre square, then crops of 0.7, 0.5, 0.35 and 0.25 of its
short side on a regular grid covering the photo, some of the larger ones also
mirrored. That is about a thousand images of varied content and scale. The
order and the crops are fixed, so image ids mean the same thing on every run.

Debian's mate-backgrounds photos join the set when they are installed; the
identity then changes too, so a cache never mixes the two sets.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

from PIL import Image

from atlas.images.decode import load_image
from atlas.images.source import ImageRecord, Shard, index_shards
from atlas.storage import Location

_log = logging.getLogger(__name__)

BACKGROUNDS_DIR = Path("/usr/share/backgrounds/mate/nature")
VERSION = "builtin-photos/1"
SCALES = (0.7, 0.5, 0.35, 0.25)  # crop side as a fraction of the photo's short side
FLIP_SCALES = (0.7, 0.5)  # at these scales every other grid position is also given mirrored
CROP_SIZE = 256  # crops larger than this are downscaled to it
MIN_CROP = 48  # smaller crops carry too little to be worth an image id
PHOTO_SHORT_SIDE = 768  # photos are downscaled to this short side once, when loaded

SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "stereo_motorcycle", "camera", "brick", "grass", "gravel", "clock", "coins", "moon", "page", "text",
)  # fmt: skip
SKLEARN_PHOTOS = ("china", "flower")
MATPLOTLIB_PHOTOS = ("grace_hopper",)


@dataclass(frozen=True)
class Crop:
    photo: str
    box: tuple[int, int, int, int]  # left, top, right, bottom in the loaded photo
    flip: bool
    name: str


class BuiltinPhotos:
    """Multi-scale crops of the photos in scikit-image, scikit-learn and matplotlib (and Debian's, if present)."""

    labels: list[str] | None = None

    def __init__(self, backgrounds_dir: Path | None = BACKGROUNDS_DIR) -> None:
        self.backgrounds_dir = str(backgrounds_dir) if backgrounds_dir is not None else None

    def photos(self) -> tuple[str, ...]:
        """The photos that loaded here, in image-id order."""
        return tuple(name for name, _size in _available(self.backgrounds_dir))

    def crops(self) -> tuple[Crop, ...]:
        return _crop_plan(self.backgrounds_dir)

    def identity(self) -> str:
        settings = (VERSION, SCALES, FLIP_SCALES, CROP_SIZE, MIN_CROP, PHOTO_SHORT_SIDE)
        described = repr((settings, _available(self.backgrounds_dir)))  # the photos that loaded, and their sizes
        return f"builtin:photos/{len(self.photos())}/{hashlib.sha256(described.encode()).hexdigest()[:16]}"

    def plan(self, workdir: Location, limit: int | None, shard_size: int) -> list[Shard]:
        n_images = len(self.crops())
        return index_shards(n_images if limit is None else min(limit, n_images), shard_size)

    def read_ids(self, ids: Iterable[int]) -> Iterator[ImageRecord]:
        """The images with these ids, in increasing order (ids are positions in the source, as in ``plan``)."""
        for image_id in sorted(set(ids)):
            yield from self.read(Shard(0, image_id, 1, image_id))

    def read(self, shard: Shard) -> Iterator[ImageRecord]:
        crops = self.crops()
        for position in range(shard.count):
            crop = crops[shard.offset + position]
            yield ImageRecord(shard.start + position, crop.name, cut(_photo(crop.photo, self.backgrounds_dir), crop))


def cut(photo: Image.Image, crop: Crop) -> Image.Image:
    """One crop of a loaded photo, mirrored if asked, at most CROP_SIZE pixels square."""
    image = photo.crop(crop.box)
    if crop.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if image.width > CROP_SIZE:
        image = image.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.LANCZOS)
    return image


def crops_of(photo: str, width: int, height: int) -> list[Crop]:
    """The fixed crop list of one photo: the centre square, then each scale's grid, row by row."""
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    crops = [Crop(photo, (left, top, left + short, top + short), False, f"{photo}/full")]
    for scale in SCALES:
        side = round(scale * short)
        if side < MIN_CROP:
            continue
        for row, y in enumerate(_grid(height, side)):
            for col, x in enumerate(_grid(width, side)):
                name = f"{photo}/s{scale:.2f}_r{row}_c{col}"
                crops.append(Crop(photo, (x, y, x + side, y + side), False, name))
                if scale in FLIP_SCALES and (row + col) % 2 == 1:
                    crops.append(Crop(photo, (x, y, x + side, y + side), True, f"{name}_flip"))
    return crops


def _grid(length: int, side: int) -> list[int]:
    """Evenly spaced offsets of the fewest crops of ``side`` that cover ``length``."""
    count = math.ceil(length / side)
    if count == 1:
        return [(length - side) // 2]
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def _loaders(backgrounds_dir: str | None) -> list[tuple[str, Callable[[], Image.Image]]]:
    loaders: list[tuple[str, Callable[[], Image.Image]]] = []
    loaders += [(name, partial(_from_skimage, name)) for name in SKIMAGE_PHOTOS]
    loaders += [(name, partial(_from_sklearn, name)) for name in SKLEARN_PHOTOS]
    loaders += [(name, partial(_from_matplotlib, name)) for name in MATPLOTLIB_PHOTOS]
    if backgrounds_dir is not None and Path(backgrounds_dir).is_dir():
        for path in sorted(Path(backgrounds_dir).glob("*.jpg")):
            loaders.append((f"mate-{path.stem.lower()}", partial(_from_file, path)))
    return loaders


@cache
def _all_photos(backgrounds_dir: str | None) -> dict[str, Image.Image]:
    """Every photo that loads, downscaled once; cached so a worker process loads each photo once."""
    photos: dict[str, Image.Image] = {}
    for name, load in _loaders(backgrounds_dir):
        try:
            photo = load().convert("RGB")
        except Exception as err:
            _log.warning("built-in photo %r left out: %s", name, err)
            continue
        short = min(photo.size)
        if short > PHOTO_SHORT_SIDE:
            size = (round(photo.width * PHOTO_SHORT_SIDE / short), round(photo.height * PHOTO_SHORT_SIDE / short))
            photo = photo.resize(size, Image.Resampling.LANCZOS)
        photos[name] = photo
    return photos


def _photo(name: str, backgrounds_dir: str | None) -> Image.Image:
    return _all_photos(backgrounds_dir)[name]


@cache
def _available(backgrounds_dir: str | None) -> tuple[tuple[str, tuple[int, int]], ...]:
    return tuple((name, photo.size) for name, photo in _all_photos(backgrounds_dir).items())


@cache
def _crop_plan(backgrounds_dir: str | None) -> tuple[Crop, ...]:
    return tuple(crop for name, (w, h) in _available(backgrounds_dir) for crop in crops_of(name, w, h))


def _from_skimage(name: str) -> Image.Image:
    import skimage.data

    pixels = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        pixels = pixels[0]  # (left view, right view, disparity): keep the left view
    return Image.fromarray(pixels)


def _from_sklearn(name: str) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(f"{name}.jpg"))


def _from_matplotlib(name: str) -> Image.Image:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data(f"{name}.jpg", asfileobj=False)) as image:
        return image.convert("RGB")


def _from_file(path: Path) -> Image.Image:
    image, error = load_image(path, max_pixels=Image.MAX_IMAGE_PIXELS or 89_478_485, size_hint=PHOTO_SHORT_SIDE)
    if image is None:
        raise OSError(f"{path}: {error}")
    return image
