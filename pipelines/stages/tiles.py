"""Tiles stage: every grid's canvas, Deep Zoom pyramid and poster.

Dask tasks, in two kinds:
- band tasks compose a few rows of cells each into the grid's canvas file;
- once a grid's bands are in, one pyramid task and one poster task stream it
  (libvips), then the canvas file is deleted.
A grid whose marker holds the stage key is not tiled again (a run resumed after
a kill). A grid without cells has no pyramid; its level says so.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from atlas.bundle import TILES, Bundle, Cell, canvas_file, dzi_file, poster_file, tiles_folder, tiles_marker
from atlas.config import TilesConfig
from atlas.io import remove_tree, upload_tree
from atlas.lock import sweep_temporaries
from atlas.markers import is_fresh, write_marker
from atlas.storage import Location, is_remote
from atlas.tiles import (
    BACKGROUND,
    OVERLAP,
    TILE_SIZE,
    Canvas,
    create_canvas,
    default_scale,
    rows_per_band,
    save_poster,
    save_pyramid,
    write_band,
)
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall


def cell_scale(config: TilesConfig, icon_px: int) -> int:
    return config.scale if config.scale is not None else default_scale(icon_px)


def tiles(call: StageCall) -> Report:
    run, key, bundle = call.run, call.key, call.run.bundle
    config = run.config
    icon_px = config.render.icon_size
    scale = cell_scale(config.tiles, icon_px)
    cell_px = icon_px * scale
    bands = 1 if run.model.preprocessing.channels == 1 else 3
    cells = {size: bundle.grid_cells(size) for size in config.grid.sizes}
    sized = [size for size in config.grid.sizes if cells[size]]
    todo = [size for size in sized if not _grid_done(bundle, size, key)]
    swept = sweep_temporaries(bundle.path(TILES)) if todo else 0  # a killed run's half-built pyramid or poster
    run.log(
        f"[tiles] tiling {len(todo)} of {len(sized)} grids ({len(sized) - len(todo)} already done"
        + (f"; removed {swept} temporary file(s) of an interrupted run)" if swept else ")")
    )
    if todo and is_remote(bundle.root):
        _tile_on_scratch(run, key, todo, cells, icon_px, scale, bands)
    elif todo:
        canvases = {size: create_canvas(_local(bundle.path(canvas_file(size))), size * cell_px, size * cell_px, bands) for size in todo}
        try:
            _tile(run, key, canvases, cells, icon_px, scale)
        finally:
            for canvas in canvases.values():
                canvas.path.unlink(missing_ok=True)
    levels: list[dict[str, Any]] = []
    for size in config.grid.sizes:
        entry: dict[str, Any] = {"grid": size, "cell_px": cell_px, "canvas_px": size * cell_px}
        entry |= {"dzi": dzi_file(size), "poster": poster_file(size)} if size in sized else {"dzi": None, "poster": None}
        levels.append(entry)
    return {
        "levels": levels,
        "tiles": {
            "format": config.tiles.format,
            "quality": config.tiles.quality,
            "tile_size": TILE_SIZE,
            "overlap": OVERLAP,
            "scale": scale,
            "scaling": f"icons of {icon_px} px drawn {scale}x larger with nearest-neighbour sampling" if scale > 1 else "none",
            "background": BACKGROUND,
            "channels": run.model.preprocessing.channels,
        },
    }


def _tile(run: RunInputs, key: str, canvases: dict[int, Canvas], cells: dict[int, list[Cell]], icon_px: int, scale: int) -> None:
    bundle, config = run.bundle, run.config.tiles
    ex = run.executor()
    band_futures: dict[Any, int] = {}
    for size, canvas in canvases.items():
        for first, count, icons in _bands(bundle, cells[size], size, canvas, icon_px * scale):
            band_futures[ex.submit(write_band, canvas, first, count, icons, icon_px, scale)] = size
    remaining: dict[int, int] = defaultdict(int)
    for size in band_futures.values():
        remaining[size] += 1
    finish_futures: dict[Any, int] = {}
    with tqdm(total=len(band_futures) + 2 * len(canvases), desc="tiles", unit="task") as bar:
        for future in ex.as_completed(list(band_futures)):
            future.result()
            bar.update()
            size = band_futures[future]
            remaining[size] -= 1
            if remaining[size] == 0:
                canvas = canvases[size]
                tiles_dir = bundle.path(TILES)
                finish_futures[
                    ex.submit(_pyramid_task, canvas, tiles_dir, str(size), config.format, config.quality, ex.threads_per_task)
                ] = size
                finish_futures[ex.submit(_poster_task, canvas, bundle.path(poster_file(size)), ex.threads_per_task)] = size
        for future in ex.as_completed(list(finish_futures)):
            future.result()
            bar.update()
            size = finish_futures.pop(future)
            if size not in finish_futures.values():  # pyramid and poster both done
                canvases[size].path.unlink(missing_ok=True)
                write_marker(bundle.path(tiles_marker(size)), key)


def _tile_on_scratch(run: RunInputs, key: str, todo: list[int], cells: dict[int, list[Cell]], icon_px: int, scale: int, bands: int) -> None:
    """A bundle on an object store: each grid is tiled whole by one task, on that worker's own disk, then uploaded.

    The canvas is one file written in place by many band tasks, which needs a disk they all share; a bundle on
    a store offers none, so grids run in parallel instead of bands. The marker goes last, after the upload.
    """
    bundle, config = run.bundle, run.config.tiles
    ex = run.executor()
    futures = {
        ex.submit(
            tile_grid_task, bundle, size, cells[size], icon_px, scale, bands, config.format, config.quality, ex.threads_per_task
        ): size
        for size in todo
    }
    for future in tqdm(ex.as_completed(list(futures)), total=len(futures), desc="tiles", unit="grid"):
        future.result()
        write_marker(bundle.path(tiles_marker(futures[future])), key)


def tile_grid_task(
    bundle: Bundle, size: int, cells: list[Cell], icon_px: int, scale: int, bands: int, fmt: str, quality: int, threads: int
) -> str:
    """Runs on a worker: canvas, pyramid and poster of one grid in a scratch folder, then copied to the bundle (its store,
    or its local folder)."""
    _vips_threads(threads)
    cell_px = icon_px * scale
    with tempfile.TemporaryDirectory(prefix="atlas-tiles-") as scratch:
        canvas = create_canvas(Path(scratch) / "canvas.tif", size * cell_px, size * cell_px, bands)
        for first, count, icons in _bands(bundle, cells, size, canvas, cell_px):
            write_band(canvas, first, count, icons, icon_px, scale)
        out = Path(scratch) / TILES
        save_pyramid(canvas.path, out, str(size), fmt, quality)  # type: ignore[arg-type]
        save_poster(canvas.path, out / Path(poster_file(size)).name)
        canvas.path.unlink()
        bundle.path(dzi_file(size)).unlink(missing_ok=True)  # no .dzi may point at a half-replaced folder
        remove_tree(bundle.path(tiles_folder(size)))
        if is_remote(bundle.root):
            upload_tree(out, bundle.path(TILES))
        else:  # a local bundle too (the dictionary's feature map tiles its few grids this way, on the driver)
            shutil.copytree(out, _local(bundle.path(TILES)), dirs_exist_ok=True)
    return dzi_file(size)


def _local(path: Location) -> Path:
    if not isinstance(path, Path):
        raise TypeError(f"{path}: expected a local path")
    return path


def _grid_done(bundle: Bundle, size: int, key: str) -> bool:
    return is_fresh(bundle.path(tiles_marker(size)), key, [bundle.path(dzi_file(size)), bundle.path(poster_file(size))])


def _bands(
    bundle: Bundle, cells: list[Cell], size: int, canvas: Canvas, cell_px: int
) -> list[tuple[int, int, list[tuple[int, int, Location]]]]:
    per_band = rows_per_band(canvas, cell_px)
    by_row: dict[int, list[tuple[int, int, Location]]] = defaultdict(list)
    for cell in cells:
        by_row[cell.j].append((cell.i, cell.j, bundle.path(cell.icon)))
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


def tiles_settings(run: RunInputs) -> Any:
    return run.config.tiles.model_dump(mode="json", exclude={"examples_per_cell"})  # examples are their own stage


STAGE = Stage("tiles", reads=("grid", "render"), settings=tiles_settings, work=tiles, version=2)
