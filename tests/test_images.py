"""Image sources on real files: a messy folder tree, Fashion-MNIST, the built-in photos, preprocessing."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.errors import AtlasError
from atlas.images import (
    BuiltinPhotos,
    FolderSource,
    ImageRecord,
    TorchvisionSource,
    batch_to_tensor,
    load_image,
    open_source,
    to_8bit,
    to_tensor,
)
from atlas.images.folder import INDEX_NAME, SKIPPED_NAME
from atlas.images.torchvision_source import DEBIAN_DATASETS
from atlas.models.record import Preprocessing

MAX_PIXELS = 5_000  # small, so a 100x100 PNG is over the limit

# name -> (mode, size) of every good image in the tree, in the order the source lists them
GOOD = {
    "a_rgb.jpg": ("RGB", (64, 48)),
    "b_rgba.png": ("RGB", (40, 30)),
    "c_palette.png": ("RGB", (32, 32)),
    "d_cmyk.jpg": ("RGB", (50, 40)),
    "e_gray16.png": ("L", (30, 20)),
    "f_exif.jpg": ("RGB", (20, 40)),  # stored 40x20 with EXIF orientation 6
    "g_gray.png": ("L", (16, 16)),
    "linked/y.png": ("RGB", (24, 24)),
    "nested/deeper/x.png": ("RGB", (12, 10)),
}
BROKEN = {
    "h_truncated.jpg": "truncated",
    "i_empty.png": "empty",
    "j_text.jpg": "not an image",
    "k_bomb.png": "too large",
    "l_huge_header.png": "too large",
}


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb in a few bytes."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tree")
    root = base / "photos"
    (root / "nested" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "a_rgb.jpg", quality=90)
    rgba = Image.new("RGBA", (40, 30), (0, 128, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 30))  # left half fully transparent
    rgba.save(root / "b_rgba.png")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    palette.paste(0, (0, 0, 16, 32))
    palette.save(root / "c_palette.png", transparency=0)
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(root / "d_cmyk.jpg")
    gray16 = np.full((20, 30), 257 * 100, dtype=np.uint16)
    gray16[0, 0] = 65535
    Image.fromarray(gray16).save(root / "e_gray16.png")
    exif_jpeg = Image.new("RGB", (40, 20), (255, 0, 0))
    exif_jpeg.paste((0, 0, 255), (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif_jpeg.save(root / "f_exif.jpg", exif=exif, quality=95)
    Image.new("L", (16, 16), 77).save(root / "g_gray.png")
    noisy = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noisy, "JPEG")
    (root / "h_truncated.jpg").write_bytes(noisy.getvalue()[: len(noisy.getvalue()) // 2])
    (root / "i_empty.png").write_bytes(b"")
    (root / "j_text.jpg").write_text("this is not a JPEG\n")
    Image.new("RGB", (100, 100)).save(root / "k_bomb.png")
    (root / "l_huge_header.png").write_bytes(_png_claiming(100_000, 100_000))
    (root / "notes.txt").write_text("not an image, never opened\n")
    Image.new("RGB", (12, 10), (9, 9, 9)).save(root / "nested" / "deeper" / "x.png")
    (root / "nested" / "loop").symlink_to("..")  # nested/loop -> nested: a cycle
    (root / "nested" / "up").symlink_to(root)  # back to the root: another cycle
    outside = base / "outside"
    outside.mkdir()
    Image.new("RGB", (24, 24), (1, 2, 3)).save(outside / "y.png")
    (root / "linked").symlink_to(outside)  # a symlinked folder outside the tree is followed
    return root


def _read_all(source: FolderSource, shards: list) -> list[ImageRecord]:
    return [record for shard in shards for record in source.read(shard)]


def test_folder_lists_sorted_decodes_good_images_and_reports_broken_ones(tree: Path, tmp_path: Path) -> None:
    source = FolderSource(tree, MAX_PIXELS)
    records = _read_all(source, source.plan(tmp_path, None, 4))

    assert [r.name for r in records] == sorted([*GOOD, *BROKEN], key=lambda name: name.split("/"))
    assert [r.image_id for r in records] == list(range(len(records)))
    by_name = {r.name: r for r in records}
    for name, (mode, size) in GOOD.items():
        record = by_name[name]
        assert record.error is None and record.image is not None, (name, record.error)
        assert (record.image.mode, record.image.size) == (mode, size), name
    for name, reason in BROKEN.items():
        assert by_name[name].image is None and reason in by_name[name].error, (name, by_name[name].error)

    assert by_name["b_rgba.png"].image.getpixel((5, 5)) == (255, 255, 255)  # transparent -> white
    assert by_name["b_rgba.png"].image.getpixel((30, 5)) == (0, 128, 0)
    assert by_name["c_palette.png"].image.getpixel((5, 5)) == (255, 255, 255)
    assert by_name["c_palette.png"].image.getpixel((25, 5)) == (200, 30, 30)
    red, green, blue = by_name["d_cmyk.jpg"].image.getpixel((25, 20))
    assert red > 200 and green < 60 and blue < 60
    gray16 = np.asarray(by_name["e_gray16.png"].image)
    assert gray16[0, 0] == 255 and gray16[5, 5] == 100  # 16-bit samples scaled by 1/257
    upright = by_name["f_exif.jpg"].image
    assert upright.getpixel((10, 5))[0] > 200 and upright.getpixel((10, 35))[2] > 200  # red on top, blue below

    assert source.skipped["not an image"] == 1  # notes.txt, counted without being opened
    assert sum(1 for reason in source.skipped if reason.startswith("folder already listed")) == 1
    assert source.skipped[next(r for r in source.skipped if r.startswith("folder already listed"))] == 2
    assert "not an image\tnotes.txt" in (tmp_path / SKIPPED_NAME).read_text().splitlines()
    assert (tmp_path / INDEX_NAME).read_text().splitlines() == [r.name for r in records]


def test_folder_shards_cover_every_id_once_and_limit_takes_a_prefix(tree: Path, tmp_path: Path) -> None:
    source = FolderSource(tree, MAX_PIXELS)
    whole = _read_all(source, source.plan(tmp_path / "one", None, 1000))
    shards = source.plan(tmp_path / "many", None, 3)
    ids = [i for shard in shards for i in range(shard.start, shard.start + shard.count)]
    assert ids == list(range(len(whole))) and [s.index for s in shards] == list(range(len(shards)))
    worker_copy = pickle.loads(pickle.dumps(source))  # what a Dask worker gets
    pieces = [worker_copy.read(shard) for shard in reversed(shards)]  # any order, any process
    sharded = sorted((r for piece in pieces for r in piece), key=lambda r: r.image_id)
    assert [(r.image_id, r.name, r.error) for r in sharded] == [(r.image_id, r.name, r.error) for r in whole]
    assert all(a.image is None or a.image.tobytes() == b.image.tobytes() for a, b in zip(sharded, whole))

    limited = _read_all(source, source.plan(tmp_path / "limited", 4, 3))
    assert [r.name for r in limited] == [r.name for r in whole[:4]]
    assert source.n_images == 4


def test_folder_listing_memory_does_not_grow_with_the_number_of_files(tmp_path: Path) -> None:
    def peak_for(folders: int) -> int:
        root = tmp_path / f"flat{folders}"
        for k in range(folders):
            (root / f"d{k:03d}").mkdir(parents=True)
            for i in range(100):
                (root / f"d{k:03d}" / f"{i:03d}.png").touch()
        source = FolderSource(root, MAX_PIXELS)
        tracemalloc.start()
        source.plan(tmp_path / f"work{folders}", None, 1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert source.n_images == folders * 100
        return peak

    small, large = peak_for(10), peak_for(60)
    assert large < small * 1.5 + 20_000, (small, large)  # 6x the files, about the same memory


def test_decode_limits_and_reduced_jpeg_decoding(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    Image.new("RGB", (800, 600), (10, 200, 10)).save(big)
    full, _ = load_image(big, 10**7)
    reduced, _ = load_image(big, 10**7, size_hint=100)
    assert full is not None and full.size == (800, 600)
    assert reduced is not None and 100 <= min(reduced.size) < 600
    image, error = load_image(big, 1000)
    assert image is None and error is not None and error.startswith("too large")
    image, error = load_image(tmp_path / "gone.png", 10**7)
    assert image is None and error == "cannot read: No such file or directory"


def test_max_pixels_is_per_call_and_pillow_warnings_do_not_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns above 1000 pixels, refuses above 2000
    Image.new("RGB", (40, 40)).save(tmp_path / "warned.png")  # 1600 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping load_image fails the test
        image, error = load_image(tmp_path / "warned.png", max_pixels=5000)  # the caller allows more
        assert image is not None and error is None
        image, error = load_image(tmp_path / "warned.png", max_pixels=1000)
        assert image is None and error is not None and error.startswith("too large")
    assert Image.MAX_IMAGE_PIXELS == 1000 and not any(
        f[2] is Image.DecompressionBombWarning for f in warnings.filters
    )  # no filter left behind


def test_high_depth_and_float_modes_become_8bit() -> None:
    unit = to_8bit(Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)))
    assert unit.mode == "L" and np.asarray(unit)[0, 0] == 0 and np.asarray(unit)[-1, -1] == 255
    signed = to_8bit(Image.fromarray(np.array([[-1000, 0], [500, 1000]], dtype=np.int32)))
    assert np.asarray(signed).tolist() == [[0, 128], [191, 255]]  # stretched over its own range
    assert to_8bit(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == 255


def test_open_source_parses_the_source_string(tree: Path, tmp_path: Path) -> None:
    assert isinstance(open_source(str(tree)), FolderSource)
    assert isinstance(open_source("builtin:photos"), BuiltinPhotos)
    source = open_source("torchvision:FashionMNIST?split=test", root=tmp_path)
    assert isinstance(source, TorchvisionSource) and (source.name, source.split) == ("FashionMNIST", "test")
    assert open_source("torchvision:CIFAR10").split == "train"
    with pytest.raises(AtlasError, match="no such folder; give a folder of images, 'builtin:photos'"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(AtlasError, match="did you mean FashionMNIST"):
        open_source("torchvision:FashionMnist")
    with pytest.raises(AtlasError, match="did you mean .*CIFAR10"):
        open_source("torchvision:CIFAR11")


def _fashion_root(tmp_path: Path) -> Path:
    debian = DEBIAN_DATASETS["FashionMNIST"]
    if all((debian / f"{p}-ubyte.gz").is_file() for p in ("t10k-images-idx3", "t10k-labels-idx1")):
        return tmp_path
    cached = Path("~/.cache/atlas/datasets").expanduser()
    if (cached / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        return cached
    pytest.skip("Fashion-MNIST is neither installed by Debian nor cached")


def test_fashion_mnist_test_split(tmp_path: Path) -> None:
    root = _fashion_root(tmp_path)
    source = TorchvisionSource("FashionMNIST", "test", root)
    shards = source.plan(tmp_path, None, 4096)
    assert sum(s.count for s in shards) == 10_000 and [s.count for s in shards] == [4096, 4096, 1808]
    assert source.labels is not None and source.labels[0] == "T-shirt/top" and source.labels[9] == "Ankle boot"
    worker_copy = pickle.loads(pickle.dumps(source))
    assert worker_copy._dataset is None  # the opened dataset never travels
    records = [r for shard in shards for r in worker_copy.read(shard)]
    assert all(r.image is not None and r.image.mode == "L" and r.image.size == (28, 28) for r in records)
    assert records[0].label == 9 and records[0].name == "test/0"  # the first test image is an ankle boot
    assert Counter(r.label for r in records) == dict.fromkeys(range(10), 1000)
    assert [s.count for s in source.plan(tmp_path, 10, 4)] == [4, 4, 2]


BUILTIN_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "stereo_motorcycle", "camera", "brick", "grass", "gravel", "clock", "coins", "moon", "page", "text",
    "china", "flower", "grace_hopper",
)  # fmt: skip


def builtin_fingerprint() -> str:
    """Identity, size and the first and last crops' pixels: equal in every process on this machine."""
    photos = BuiltinPhotos()
    shards = photos.plan(Path("."), None, 1)
    first, last = next(photos.read(shards[0])), next(photos.read(shards[-1]))
    digests = [hashlib.sha256(r.image.tobytes()).hexdigest() for r in (first, last) if r.image is not None]
    return " ".join([photos.identity(), str(len(shards)), first.name, last.name, *digests])


def test_builtin_photos_are_deterministic_multiscale_crops(tmp_path: Path) -> None:
    photos = BuiltinPhotos()
    assert set(BUILTIN_PHOTOS) <= set(photos.photos())  # every photo the packages ship loaded
    records = [r for shard in photos.plan(tmp_path, None, 128) for r in photos.read(shard)]
    assert len(records) >= 600 and [r.image_id for r in records] == list(range(len(records)))
    assert all(r.image is not None and r.image.mode == "RGB" for r in records)
    assert all(r.image.width == r.image.height <= 256 for r in records if r.image is not None)
    names = [r.name for r in records]
    assert len(set(names)) == len(names)
    assert {"chelsea/full", "chelsea/s0.50_r0_c0", "chelsea/s0.25_r3_c4"} <= set(names)
    assert any(name.startswith("chelsea/") and name.endswith("_flip") for name in names)

    here = builtin_fingerprint()
    assert here == builtin_fingerprint()  # a second instance
    tests = Path(__file__).parent
    other_process = subprocess.run(
        [sys.executable, "-c", "import test_images; print(test_images.builtin_fingerprint())"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])},
    )  # fmt: skip
    assert other_process.stdout.strip() == here


def test_preprocess_shapes_and_normalisation() -> None:
    rgb = Preprocessing(input_size=30, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    stripes = Image.new("RGB", (90, 30), (0, 0, 0))
    stripes.paste((255, 255, 255), (30, 0, 60, 30))
    assert torch.equal(to_tensor(stripes, rgb), torch.ones(3, 30, 30))  # the centre square is the white stripe
    gray = to_tensor(Image.new("L", (40, 60), 0), rgb)  # L replicated to three channels
    assert gray.shape == (3, 30, 30) and torch.all(gray == -1.0)

    mono = Preprocessing(input_size=8, channels=1, mean=(0.2860,), std=(0.3530,))
    red = to_tensor(Image.new("RGB", (16, 16), (255, 0, 0)), mono)
    assert red.shape == (1, 8, 8) and red.dtype == torch.float32
    assert torch.allclose(red, torch.full((1, 8, 8), (76 / 255 - 0.2860) / 0.3530))  # ITU-R 601 luma of red

    batch = batch_to_tensor([stripes, Image.new("L", (5, 9), 255), Image.new("RGBA", (50, 50))], rgb)
    assert batch.shape == (3, 3, 30, 30) and batch.dtype == torch.float32
    small = to_tensor(stripes, Preprocessing(input_size=15, channels=3, mean=(0.0,), std=(1.0,)))
    assert small.shape == (3, 15, 15) and float(small[:, :, 7].min()) == 1.0
