"""Tiles for a 40 x 40 grid of 80 px icons (3,200 px canvas) vs saving that canvas as one PNG, in the same run.

Both sides start from the same 1,600 icon PNGs (crops of real photos) on disk:
- baseline: compose the canvas in memory with NumPy and save it with Pillow
  (``Image.save(..., "PNG")``, default compression) -- what one does without tiles;
- ours: what the tiles stage does for one grid -- the canvas file written in
  bands (``write_band``), then the Deep Zoom pyramid (``save_pyramid``: JPEG,
  Q 90, 256 px tiles, overlap 1, every level).
Also reported: ours plus the stage's full-resolution poster (``save_poster``).
Each side runs ``ROUNDS`` times, alternating; medians are compared.

Run: ``python -m pytest -q -s -m benchmark tests/benchmarks/test_tiles_speed.py``
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from _bench_util import cores, load_average, write_result
from PIL import Image

GRID, ICON = 40, 80
ROUNDS = 3
TIME_RATIO = 2.0


def _icons(folder: Path) -> list[tuple[int, int, Path]]:
    from skimage import data

    photos = [np.asarray(p) for p in (data.chelsea(), data.coffee(), data.astronaut(), data.rocket())]
    rng = np.random.default_rng(0)
    cells = []
    folder.mkdir()
    for j in range(GRID):
        for i in range(GRID):
            photo = photos[(i + j) % len(photos)]
            side = int(rng.integers(60, min(photo.shape[:2])))
            top, left = int(rng.integers(0, photo.shape[0] - side)), int(rng.integers(0, photo.shape[1] - side))
            path = folder / f"{i}_{j}.png"
            Image.fromarray(photo[top : top + side, left : left + side]).resize((ICON, ICON), Image.Resampling.LANCZOS).save(path)
            cells.append((i, j, path))
    return cells


def _baseline(cells: list[tuple[int, int, Path]], out: Path) -> float:
    started = time.perf_counter()
    canvas = np.full((GRID * ICON, GRID * ICON, 3), 245, np.uint8)
    for i, j, path in cells:
        canvas[j * ICON : (j + 1) * ICON, i * ICON : (i + 1) * ICON] = np.asarray(Image.open(path).convert("RGB"))
    Image.fromarray(canvas).save(out, format="PNG")
    return time.perf_counter() - started


def _ours(cells: list[tuple[int, int, Path]], out: Path, poster: bool) -> float:
    from atlas.tiles import create_canvas, rows_per_band, save_poster, save_pyramid, write_band

    started = time.perf_counter()
    canvas = create_canvas(out / f".canvas-{GRID}.tif", GRID * ICON, GRID * ICON, 3)
    per_band = rows_per_band(canvas, ICON)
    for first in range(0, GRID, per_band):
        rows = min(per_band, GRID - first)
        write_band(canvas, first, rows, [c for c in cells if first <= c[1] < first + rows], ICON, 1)
    save_pyramid(canvas.path, out, str(GRID), "jpg", 90)
    if poster:
        save_poster(canvas.path, out / f"{GRID}.png")
    canvas.path.unlink()
    return time.perf_counter() - started


@pytest.mark.benchmark
def test_tiles_take_at_most_twice_a_plain_png(tmp_path: Path) -> None:
    cells = _icons(tmp_path / "icons")
    load_before = load_average()
    times: dict[str, list[float]] = {"png": [], "tiles": [], "tiles+poster": []}
    for round_ in range(ROUNDS):
        times["png"].append(_baseline(cells, tmp_path / f"atlas-{round_}.png"))
        for name, poster in (("tiles", False), ("tiles+poster", True)):
            out = tmp_path / f"{name}-{round_}"
            times[name].append(_ours(cells, out, poster))
            if round_ < ROUNDS - 1:
                shutil.rmtree(out)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["tiles"] / median["png"]
    files = list((tmp_path / f"tiles-{ROUNDS - 1}" / f"{GRID}_files").rglob("*.jpg"))
    print(
        f"\n[tiles speed] {GRID}x{GRID} grid of {ICON} px icons ({GRID * ICON} px canvas), medians of {ROUNDS}:"
        f" one PNG {median['png']:.2f} s, tiles {median['tiles']:.2f} s ({len(files)} tiles) -> ratio {ratio:.2f}"
        f" (target <= {TIME_RATIO}); tiles + poster {median['tiles+poster']:.2f} s;"
        f" load {load_before:.1f} -> {load_average():.1f} on {cores()} cores"
    )
    write_result(
        "tiles_speed",
        {"grid": GRID, "icon_px": ICON, "rounds": ROUNDS, "seconds": times, "median": median, "ratio": ratio, "n_tiles": len(files)},
    )
    assert len(files) > 200
    assert ratio <= TIME_RATIO
