"""Shared fixtures: small real data, made once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder tree of real photos (scikit-image's) in several formats, plus broken files."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    (root / "animals" / "cats").mkdir(parents=True)
    (root / "things").mkdir()
    photos = {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut(), "rocket": data.rocket()}
    for n, (name, pixels) in enumerate(photos.items()):
        image = Image.fromarray(pixels)
        folder = root / ("animals/cats" if name == "chelsea" else "things")
        for k, box in enumerate([(0, 0, 200, 200), (50, 20, 290, 260), (100, 40, 300, 240)]):
            crop = image.crop(box)
            crop.save(folder / f"{name}_{k}.jpg", quality=90)
            crop.convert("P").save(folder / f"{name}_{k}_palette.png") if k == 0 else None
        image.convert("CMYK").save(root / f"{name}_cmyk.jpg") if n == 0 else None
    (root / "broken_truncated.jpg").write_bytes((root / "things" / "coffee_0.jpg").read_bytes()[:600])
    (root / "broken_text.jpg").write_text("this is not a JPEG")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image at all")
    return root


@pytest.fixture(scope="session")
def fashion_available() -> bool:
    return (FASHION_DEBIAN / "t10k-images-idx3-ubyte.gz").exists()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread (``pytestmark = pytest.mark.usefixtures("one_thread")``): deterministic sums, and no OpenMP spin-waits when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
