"""Tiles stage: every grid's canvas, Deep Zoom pyramid and poster; dataset patches; class attribution; viewer.

Dask tasks, in three kinds:
- band tasks compose a few rows of cells each into the grid's canvas file;
- once a grid's bands are in, one pyramid task and one poster task stream it
  (libvips), then the canvas file is deleted;
- patch tasks read a chunk of images back from the source and cut each
  example's patch (one file per image and position, shared by all cells).
The driver meanwhile writes each grid's mean attribution per cell and class.
A grid whose marker holds the same icons-and-tile-settings key is not tiled again
(a run resumed after a kill, or one that changed only ``tiles.examples_per_cell``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from atlas.config import TilesConfig
from atlas.images.source import ImageSource
from atlas.io import read_json, write_json
from atlas.tiles import (
    BACKGROUND,
    OVERLAP,
    PATCH_STRIDES,
    TILE_SIZE,
    Canvas,
    cell_means,
    create_canvas,
    default_scale,
    patch_name,
    rows_per_band,
    save_patches,
    save_poster,
    save_pyramid,
    write_attribution,
    write_band,
)
from atlas.viewer import install_viewer
from pipelines.stages import fingerprint

if TYPE_CHECKING:
    from pipelines.run import RunContext

VERSION = "tiles/1"  # bump when the tiles or patches change for the same inputs
IMAGES_PER_PATCH_TASK = 64


def tiles(ctx: RunContext) -> None:
    """The stage: keyed on the render key and the tiles config; the viewer page is refreshed on every run."""
    config = ctx.config
    key = fingerprint("tiles", ctx.keys["render"], config.tiles.model_dump(mode="json"), VERSION)
    ctx.keys["tiles"] = key
    ctx.stages.run("tiles", key, lambda: run_tiles(ctx))
    install_viewer(ctx.run_dir)


def cell_scale(config: TilesConfig, icon_px: int) -> int:
    return config.scale if config.scale is not None else default_scale(icon_px)


def run_tiles(ctx: RunContext) -> None:
    config, run_dir = ctx.config, ctx.run_dir
    icon_px = config.render.icon_size
    scale = cell_scale(config.tiles, icon_px)
    bands = 1 if ctx.model.preprocessing.channels == 1 else 3
    sizes = config.grid.sizes
    cells = {size: read_json(run_dir / "levels" / str(size) / "cells.json") for size in sizes}

    # A grid's pyramid and poster depend on its icons and the tile settings only (not on the examples).
    grid_key = fingerprint("tiles-grid", ctx.keys["render"], config.tiles.format, config.tiles.quality, scale, VERSION)
    ex = ctx.executor()
    todo = [size for size in sizes if not _grid_done(run_dir, size, grid_key)]
    canvases = {size: create_canvas(_canvas_path(run_dir, size), size * icon_px * scale, size * icon_px * scale, bands) for size in todo}
    try:
        band_futures: dict[Any, int] = {}
        for size in todo:
            for first, count, icons in _bands(run_dir, cells[size], size, canvases[size], icon_px * scale):
                band_futures[ex.submit(write_band, canvases[size], first, count, icons, icon_px, scale)] = size
        patch_futures = _submit_patches(ctx, cells, config.tiles.examples_per_cell)
        if ctx.n_classes:
            rows = ctx.rows()
            coords = np.load(run_dir / "layout" / "coords.npy")
            for size in sizes:
                write_attribution(run_dir / "levels" / str(size) / "attribution.npy", cell_means(coords, rows.attribution, size, cells[size]))

        remaining = defaultdict(int)
        for size in band_futures.values():
            remaining[size] += 1
        total = len(band_futures) + 2 * len(todo) + len(patch_futures)
        finish_futures: dict[Any, int] = {}
        with tqdm(total=total, desc="tiles", unit="task") as bar:
            for future in ex.as_completed(list(band_futures)):
                future.result()
                bar.update()
                size = band_futures[future]
                remaining[size] -= 1
                if remaining[size] == 0:
                    canvas = canvases[size]
                    tiles_dir = run_dir / "tiles"
                    finish_futures[ex.submit(_pyramid_task, canvas, tiles_dir, str(size), config.tiles.format, config.tiles.quality, ex.threads_per_task)] = size
                    finish_futures[ex.submit(_poster_task, canvas, tiles_dir / f"{size}.png", ex.threads_per_task)] = size
            written: set[str] = set()
            for future in ex.as_completed(list(finish_futures) + list(patch_futures)):
                result = future.result()
                bar.update()
                if future in patch_futures:
                    written.update(result)
                else:
                    size = finish_futures.pop(future)
                    if size not in finish_futures.values():  # pyramid and poster both done
                        canvases.pop(size).path.unlink(missing_ok=True)
                        write_json(_grid_marker(run_dir, size), {"key": grid_key})
    finally:
        for canvas in canvases.values():
            canvas.path.unlink(missing_ok=True)

    for size in sizes:
        _link_patches(run_dir / "levels" / str(size) / "cells.json", cells[size], config.tiles.examples_per_cell, written)
    _remove_stale_patches(run_dir / "examples", written)


def manifest_entries(manifest: dict[str, Any], config: Any, run_dir: Path, channels: int) -> dict[str, Any]:
    """The manifest with the tiles stage's outputs added: per level ``dzi``, ``poster``, ``attribution``; the viewer."""
    icon_px = config.render.icon_size
    scale = cell_scale(config.tiles, icon_px)
    for level in manifest["levels"]:
        size = level["grid"]
        level["dzi"] = f"tiles/{size}.dzi"
        level["poster"] = f"tiles/{size}.png"
        level["cell_px"] = icon_px * scale
        level["canvas_px"] = size * icon_px * scale
        attribution = f"levels/{size}/attribution.npy"
        level["attribution"] = attribution if (run_dir / attribution).exists() else None
    manifest["viewer"] = "index.html"
    manifest["tiles"] = {
        "format": config.tiles.format,
        "quality": config.tiles.quality,
        "tile_size": TILE_SIZE,
        "overlap": OVERLAP,
        "scale": scale,
        "scaling": f"icons of {icon_px} px drawn {scale}x larger with nearest-neighbour sampling" if scale > 1 else "none",
        "background": BACKGROUND,
        "channels": channels,
        "examples": {
            "folder": "examples/",
            "per_cell": config.tiles.examples_per_cell,
            "crop": (
                f"square of {PATCH_STRIDES:g} strides (input_size / layer size) centred on ((y + 0.5) * S / H,"
                " (x + 0.5) * S / W) in the model's resized, centre-cropped input frame; shifted to stay inside it"
            ),
        },
        "attribution": "levels/<g>/attribution.npy: float16 [n_cells, classes] in cells.json order, Fortran order",
    }
    return manifest


def _canvas_path(run_dir: Path, size: int) -> Path:
    return run_dir / "tiles" / f".canvas-{size}.tif"


def _grid_marker(run_dir: Path, size: int) -> Path:
    return run_dir / "tiles" / f".{size}.json"


def _grid_done(run_dir: Path, size: int, key: str) -> bool:
    marker = _grid_marker(run_dir, size)
    outputs = (run_dir / "tiles" / f"{size}.dzi", run_dir / "tiles" / f"{size}.png")
    return marker.exists() and json.loads(marker.read_text()).get("key") == key and all(p.exists() for p in outputs)


def _bands(run_dir: Path, cells: list[dict[str, Any]], size: int, canvas: Canvas, cell_px: int) -> list[tuple[int, int, list[tuple[int, int, Path]]]]:
    per_band = rows_per_band(canvas, cell_px)
    by_row: dict[int, list[tuple[int, int, Path]]] = defaultdict(list)
    for cell in cells:
        by_row[cell["j"]].append((cell["i"], cell["j"], run_dir / cell["icon"]))
    return [
        (first, min(per_band, size - first), [icon for j in range(first, min(size, first + per_band)) for icon in by_row[j]])
        for first in range(0, size, per_band)
    ]


def _pyramid_task(canvas: Canvas, tiles_dir: Path, name: str, fmt: str, quality: int, threads: int) -> str:
    _vips_threads(threads)
    return str(save_pyramid(canvas.path, tiles_dir, name, fmt, quality))  # type: ignore[arg-type]


def _poster_task(canvas: Canvas, poster: Path, threads: int) -> str:
    _vips_threads(threads)
    return str(save_poster(canvas.path, poster))


def _vips_threads(threads: int) -> None:
    import pyvips

    pyvips.concurrency_set(max(1, threads))


def _wanted_patches(cells: dict[int, list[dict[str, Any]]], per_cell: int) -> dict[int, set[tuple[int, int]]]:
    wanted: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for level in cells.values():
        for cell in level:
            for example in cell["examples"][:per_cell]:
                wanted[example["image_id"]].add((example["y"], example["x"]))
    return wanted


def _submit_patches(ctx: RunContext, cells: dict[int, list[dict[str, Any]]], per_cell: int) -> set[Any]:
    wanted = _wanted_patches(cells, per_cell)
    if not wanted:
        return set()
    ex = ctx.executor()
    prep = ctx.model.preprocessing
    source = ex.scatter(ctx.source)
    ids = sorted(wanted)
    futures = set()
    for start in range(0, len(ids), IMAGES_PER_PATCH_TASK):
        chunk = {image_id: sorted(wanted[image_id]) for image_id in ids[start : start + IMAGES_PER_PATCH_TASK]}
        futures.add(ex.submit(_patch_task, source, chunk, ctx.run_dir, ctx.layer_hw, prep.input_size, prep.channels))
    return futures


def _patch_task(
    source: ImageSource,
    positions: dict[int, list[tuple[int, int]]],
    run_dir: Path,
    layer_hw: tuple[int, int],
    input_size: int,
    channels: int,
) -> list[str]:
    """Runs on a worker: read a chunk of images back and write their patches; unreadable images give none."""
    written: list[str] = []
    for record in source.read_ids(positions):
        if record.image is not None:
            written += save_patches(run_dir, record.image, record.image_id, positions[record.image_id], layer_hw, input_size, channels)
    return written


def _link_patches(path: Path, cells: list[dict[str, Any]], per_cell: int, written: set[str]) -> None:
    """Point each example (the first ``per_cell`` of a cell) at its patch file in cells.json."""
    for cell in cells:
        for n, example in enumerate(cell["examples"]):
            name = patch_name(example["image_id"], example["y"], example["x"])
            if n < per_cell and name in written:
                example["patch"] = name
            else:
                example.pop("patch", None)
    write_json(path, cells)


def _remove_stale_patches(folder: Path, written: set[str]) -> None:
    if not folder.is_dir():
        return
    for path in folder.glob("*.jpg"):
        if f"examples/{path.name}" not in written:
            path.unlink(missing_ok=True)
