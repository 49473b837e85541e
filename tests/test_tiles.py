"""Tiles: Deep Zoom pyramids that are standard and exact, and bounded memory on a huge canvas.
The server (``atlas serve``) is tested in test_serve.py."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas.grid import cell_means
from atlas.tiles import (
    BACKGROUND,
    create_canvas,
    default_scale,
    patch_box,
    rows_per_band,
    save_poster,
    save_pyramid,
    write_band,
)

REPO = Path(__file__).resolve().parents[1]
DZ = "{http://schemas.microsoft.com/deepzoom/2008}"


def real_icons(folder: Path, n: int, size: int, mode: str = "RGB") -> list[Path]:
    """Icons cut from real photos (scikit-image's), so tiles hold real image content."""
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    paths = []
    for k in range(n):
        photo = Image.fromarray(photos[k % len(photos)])
        side = min(photo.size) // 2
        left = (k * 37) % (photo.width - side)
        crop = photo.crop((left, 0, left + side, side)).resize((size, size), Image.Resampling.LANCZOS).convert(mode)
        path = folder / f"icon_{k}.png"
        crop.save(path)
        paths.append(path)
    return paths


def build_canvas(folder: Path, grid: int, icon_px: int, scale: int, mode: str = "RGB", band_rows: int = 3):
    """A canvas with most cells filled (one in five left empty), written in bands like the tiles stage does."""
    icons = real_icons(folder, 6, icon_px, mode)
    cell = icon_px * scale
    canvas = create_canvas(folder / "canvas.tif", grid * cell, grid * cell, 3 if mode == "RGB" else 1)
    kept = [(i, j, icons[(i + 2 * j) % len(icons)]) for j in range(grid) for i in range(grid) if (i + j) % 5]
    for first in range(0, grid, band_rows):
        rows = min(band_rows, grid - first)
        write_band(canvas, first, rows, [c for c in kept if first <= c[1] < first + rows], icon_px, scale)
    return canvas, kept


def read_dzi(path: Path) -> dict:
    root = ET.parse(path).getroot()
    assert root.tag == f"{DZ}Image"
    size = root.find(f"{DZ}Size")
    return {
        "format": root.get("Format"),
        "overlap": int(root.get("Overlap")),
        "tile_size": int(root.get("TileSize")),
        "width": int(size.get("Width")),
        "height": int(size.get("Height")),
    }


def test_canvas_places_every_icon_and_leaves_empty_cells_light(tmp_path: Path) -> None:
    canvas, kept = build_canvas(tmp_path, grid=5, icon_px=28, scale=default_scale(28))
    assert default_scale(28) == 3 and default_scale(48) == 2 and default_scale(80) == 1 and default_scale(64) == 1
    pixels = canvas.read()
    assert pixels.shape == (5 * 84, 5 * 84, 3)
    for i, j, path in kept:
        icon = np.asarray(Image.open(path).convert("RGB"))
        expected = icon.repeat(3, axis=0).repeat(3, axis=1)  # nearest-neighbour, integer factor
        np.testing.assert_array_equal(pixels[j * 84 : (j + 1) * 84, i * 84 : (i + 1) * 84], expected)
    empty = [(i, j) for j in range(5) for i in range(5) if (i + j) % 5 == 0]
    for i, j in empty:
        assert (pixels[j * 84 : (j + 1) * 84, i * 84 : (i + 1) * 84] == BACKGROUND).all()


def test_deep_zoom_pyramid_is_standard_and_reassembles_exactly(tmp_path: Path) -> None:
    canvas, _ = build_canvas(tmp_path, grid=7, icon_px=48, scale=2)  # 672 px: edge tiles are partial
    pixels = canvas.read()
    dzi_path = save_pyramid(canvas.path, tmp_path / "tiles", "7", fmt="png")
    assert dzi_path == tmp_path / "tiles" / "7.dzi"
    dzi = read_dzi(dzi_path)
    assert dzi == {"format": "png", "overlap": 1, "tile_size": 256, "width": 672, "height": 672}

    files = tmp_path / "tiles" / "7_files"
    max_level = math.ceil(math.log2(672))
    assert sorted(int(p.name) for p in files.iterdir()) == list(range(max_level + 1)), "levels 0..10, nothing else"
    for level in range(max_level + 1):
        side = math.ceil(672 / 2 ** (max_level - level))
        n = math.ceil(side / 256)
        names = sorted(p.name for p in (files / str(level)).iterdir())
        assert names == sorted(f"{c}_{r}.png" for c in range(n) for r in range(n))
        for c in range(n):
            for r in range(n):
                tile = Image.open(files / str(level) / f"{c}_{r}.png")
                left, top = max(0, c * 256 - 1), max(0, r * 256 - 1)  # overlap 1 on the inner sides
                right, bottom = min(side, (c + 1) * 256 + 1), min(side, (r + 1) * 256 + 1)
                assert tile.size == (right - left, bottom - top), (level, c, r)

    # The full-resolution level is the canvas: every tile, overlap included, matches it pixel for pixel.
    rebuilt = np.zeros_like(pixels)
    for c in range(3):
        for r in range(3):
            tile = np.asarray(Image.open(files / str(max_level) / f"{c}_{r}.png").convert("RGB"))
            left, top = max(0, c * 256 - 1), max(0, r * 256 - 1)
            np.testing.assert_array_equal(tile, pixels[top : top + tile.shape[0], left : left + tile.shape[1]])
            rebuilt[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    np.testing.assert_array_equal(rebuilt, pixels)
    # Each coarser level halves the one above it.
    level9 = np.asarray(Image.open(files / str(max_level - 1) / "0_0.png").convert("RGB"), dtype=np.float64)
    halved = pixels.reshape(336, 2, 336, 2, 3).mean(axis=(1, 3))
    assert np.abs(level9[:256, :256] - halved[:256, :256]).mean() < 1.0

    poster = save_poster(canvas.path, tmp_path / "tiles" / "7.png")
    np.testing.assert_array_equal(np.asarray(Image.open(poster)), pixels)


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_lossy_tiles_are_close_to_the_canvas(tmp_path: Path, fmt: str) -> None:
    canvas, _ = build_canvas(tmp_path, grid=4, icon_px=80, scale=1)
    save_pyramid(canvas.path, tmp_path / "tiles", "4", fmt=fmt, quality=90)
    assert read_dzi(tmp_path / "tiles" / "4.dzi")["format"] == fmt
    tile = Image.open(tmp_path / "tiles" / "4_files" / "9" / f"0_0.{fmt}")
    assert tile.format == {"jpg": "JPEG", "webp": "WEBP"}[fmt] and tile.size == (257, 257)
    error = np.abs(np.asarray(tile.convert("RGB"), dtype=np.int16) - canvas.read()[:257, :257].astype(np.int16))
    assert error.mean() < 4.0
    assert not list((tmp_path / "tiles").glob(".*")), "no temporary folder is left behind"


def test_grayscale_models_get_grayscale_tiles(tmp_path: Path) -> None:
    canvas, _ = build_canvas(tmp_path, grid=3, icon_px=28, scale=3, mode="L")
    assert canvas.bands == 1
    save_pyramid(canvas.path, tmp_path / "tiles", "3")
    tile = Image.open(tmp_path / "tiles" / "3_files" / "8" / "0_0.jpg")
    assert tile.mode == "L" and tile.size == (252, 252)
    assert np.abs(np.asarray(tile, dtype=np.int16) - canvas.read()[..., 0].astype(np.int16)).mean() < 3.0


def test_bands_fit_their_memory_budget() -> None:
    from atlas.tiles import Canvas

    big = Canvas(Path("unused"), 25_600, 25_600, 3, 4096)
    assert rows_per_band(big, 80) * 80 * 25_600 * 3 <= 32 << 20
    assert rows_per_band(big, 80, max_bytes=1) == 1, "a band is at least one row of cells"


_MEMORY_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from atlas.tiles import create_canvas, rows_per_band, save_poster, save_pyramid, write_band

grid, icon_px, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
yy, xx = np.mgrid[0:icon_px, 0:icon_px]
icons = []
for k in range(16):  # smooth synthetic icons: the test is about memory, not content
    pixels = np.stack([(xx * 3 + 16 * k) % 256, (yy * 3) % 256, np.full_like(xx, 15 * k)], -1).astype(np.uint8)
    icons.append(folder / f"icon_{k}.png")
    Image.fromarray(pixels).save(icons[-1])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
started = time.perf_counter()
side = grid * icon_px
canvas = create_canvas(folder / "canvas.tif", side, side, 3)
per_band = rows_per_band(canvas, icon_px)
for first in range(0, grid, per_band):
    rows = min(per_band, grid - first)
    cells = [(i, j, icons[(7 * i + j) % 16]) for j in range(first, first + rows) for i in range(grid) if (i + j) % 5]
    write_band(canvas, first, rows, cells, icon_px, 1)
after_bands = peak()
save_pyramid(canvas.path, folder / "tiles", str(grid))
after_pyramid = peak()
save_poster(canvas.path, folder / "tiles" / f"{grid}.png")
print(json.dumps({"canvas_bytes": side * side * 3, "bands": after_bands - before, "pyramid": after_pyramid - before,
                  "growth": peak() - before, "seconds": time.perf_counter() - started}))
"""


def _build_big_canvas(tmp_path: Path, grid: int, icon_px: int = 80) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(grid), str(icon_px), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    side = grid * icon_px
    dzi = read_dzi(tmp_path / "tiles" / f"{grid}.dzi")
    assert (dzi["width"], dzi["height"]) == (side, side)
    assert (tmp_path / "tiles" / f"{grid}_files" / str(math.ceil(math.log2(side)))).is_dir()
    header = (tmp_path / "tiles" / f"{grid}.png").read_bytes()[:24]  # PNG signature, then IHDR: width, height
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (side, side)
    mib = 1 << 20
    print(
        f"\n[tiles memory] {grid}x{icon_px} px canvas ({side} px, {figures['canvas_bytes'] / mib:.0f} MiB): peak RSS growth"
        f" {figures['growth'] / mib:.0f} MiB (bands {figures['bands'] / mib:.0f}, pyramid {figures['pyramid'] / mib:.0f}),"
        f" {figures['seconds']:.1f} s"
    )
    return figures


def test_memory_stays_bounded_on_a_large_canvas(tmp_path: Path) -> None:
    # 128 x 80 px = 10,240 px square (300 MiB of pixels): memory follows the width, not the area.
    figures = _build_big_canvas(tmp_path, grid=128)
    assert figures["growth"] < figures["canvas_bytes"] / 3


@pytest.mark.slow
def test_memory_stays_bounded_on_a_320_grid_of_80px_icons(tmp_path: Path) -> None:
    # The article's finest grid: 25,600 px square, about 1.9 GiB of pixels, never in memory at once.
    figures = _build_big_canvas(tmp_path, grid=320)
    assert figures["growth"] < figures["canvas_bytes"] / 8


def test_patch_box_follows_the_layer_geometry() -> None:
    # EfficientNet-Lite0 blocks.4 at 224 px: 14 x 14 positions, stride 16, patch 48 px.
    assert patch_box(7, 7, (14, 14), 224) == (96, 96, 144, 144)  # centre (120, 120)
    assert patch_box(0, 0, (14, 14), 224) == (0, 0, 48, 48)  # shifted inside, same size
    assert patch_box(13, 13, (14, 14), 224) == (176, 176, 224, 224)
    assert patch_box(3, 5, (7, 7), 28) == (16, 8, 28, 20)  # Fashion-MNIST-sized: stride 4, patch 12 px
    left, top, right, bottom = patch_box(1, 2, (8, 8), 128)  # stride 16: centre (24, 40)
    assert (right - left, bottom - top) == (48, 48) and (left + right) / 2 == 40 and (top + bottom) / 2 == 24
    assert patch_box(0, 0, (1, 1), 64) == (0, 0, 64, 64), "a 1x1 layer sees the whole frame"


def test_cell_means_match_a_direct_average() -> None:
    rng = np.random.default_rng(0)
    coords = rng.random((500, 2))
    values = rng.normal(size=(500, 7)).astype(np.float32)
    cells = [{"i": 1, "j": 0}, {"i": 0, "j": 2}, {"i": 2, "j": 2}]
    means = cell_means(coords, values, 3, cells)
    i, j = np.floor(coords * 3).astype(int).T
    for n, cell in enumerate(cells):
        members = (i == cell["i"]) & (j == cell["j"])
        np.testing.assert_allclose(means[n], values[members].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_sources_read_images_back_by_id(tmp_path: Path) -> None:
    from atlas.images import BuiltinPhotos, FolderSource
    from atlas.images.source import Shard

    root = tmp_path / "photos"
    (root / "b").mkdir(parents=True)
    for name, colour in (("a.png", 10), ("b/c.png", 20), ("b/d.png", 30), ("e.png", 40)):
        Image.new("RGB", (8, 8), (colour, 0, 0)).save(root / name)
    folder = FolderSource(root, max_pixels=10_000)
    folder.plan(tmp_path / "run", None, 2)
    records = list(folder.read_ids([3, 1, 3]))
    assert [(r.image_id, r.name) for r in records] == [(1, "b/c.png"), (3, "e.png")]
    assert [r.image.getpixel((0, 0))[0] for r in records] == [20, 40]

    photos = BuiltinPhotos(backgrounds_dir=None)
    by_id = list(photos.read_ids([7, 2]))
    assert [r.image_id for r in by_id] == [2, 7]
    from_shard = list(photos.read(Shard(0, 0, 8, 0)))
    for record in by_id:
        assert record.name == from_shard[record.image_id].name
        assert np.array_equal(np.asarray(record.image), np.asarray(from_shard[record.image_id].image))


# ---- the examples and split views' cells (atlas.tiles.cell_pictures) ----


def test_an_examples_cell_is_its_best_patch_or_a_mosaic_of_its_first_four(tmp_path: Path) -> None:
    from atlas.tiles.cell_pictures import examples_picture

    patches = real_icons(tmp_path, 5, 48)
    expected = [np.asarray(Image.open(p).convert("RGB").resize((48, 48), Image.Resampling.LANCZOS)) for p in patches]
    best = examples_picture(patches, 3, 96, "best")
    assert best.shape == (96, 96, 3)
    np.testing.assert_array_equal(best, np.asarray(Image.open(patches[0]).convert("RGB").resize((96, 96), Image.Resampling.LANCZOS)))

    mosaic = examples_picture(patches, 3, 96, "mosaic")
    for k in range(4):  # the fifth patch is not shown
        top, left = (k // 2) * 48, (k % 2) * 48
        np.testing.assert_array_equal(mosaic[top : top + 48, left : left + 48], expected[k])
    two = examples_picture(patches[:2], 3, 96, "mosaic")
    assert (two[48:] == BACKGROUND).all(), "quarters without a patch stay background"
    assert (examples_picture([], 3, 96, "best") == BACKGROUND).all()
    grey = examples_picture(patches, 1, 80, "best")
    assert grey.shape == (80, 80, 1)


def test_a_split_cell_shows_the_icon_left_and_the_example_right(tmp_path: Path) -> None:
    from atlas.tiles.cell_pictures import SPLIT_GAP, split_picture

    icon, patch = real_icons(tmp_path, 2, 48)
    cell = split_picture((icon, patch), 3, 98)
    side = (98 - SPLIT_GAP) // 2
    top = (98 - side) // 2
    np.testing.assert_array_equal(cell[top : top + side, :side], np.asarray(Image.open(icon).convert("RGB")))
    np.testing.assert_array_equal(cell[top : top + side, 98 - side :], np.asarray(Image.open(patch).convert("RGB")))
    assert (cell[:top] == BACKGROUND).all() and (cell[top + side :] == BACKGROUND).all()
    assert (cell[:, side : 98 - side] == BACKGROUND).all(), "a gap keeps the two apart"
    alone = split_picture((icon, None), 3, 98)
    assert (alone[:, 98 - side :] == BACKGROUND).all(), "a cell without a readable patch shows its icon alone"
