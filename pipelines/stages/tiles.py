"""Tiles stage: every grid's canvases, Deep Zoom pyramids and poster.

A grid has one canvas per view: its icons; with example patches, also its examples (each cell's best real
example) and both (icon and example side by side in each cell: atlas.tiles.cell_pictures). Dask tasks, in two kinds:
- band tasks compose a few rows of cells each into a canvas file;
- once a canvas's bands are in, one pyramid task (and for the icons, one poster task) streams it
  (libvips), then the canvas files are deleted.
A grid whose marker holds the stage key is not tiled again (a run resumed after
a kill). A grid without cells has no pyramid; its level says so.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from atlas.bundle import (
    TILES,
    Bundle,
    Cell,
    canvas_file,
    dzi_file,
    poster_file,
    tiles_folder,
    tiles_marker,
    view_canvas_file,
    view_dzi_file,
    view_tiles_folder,
)
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
    write_pictures,
)
from atlas.tiles.canvas import load_icon
from atlas.tiles.cell_pictures import EXAMPLE_VIEWS, MOSAIC_SIDE, ExamplesLayout, examples_picture, split_picture
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall
from atlas_pipelines.stages.path import cell_patches


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
    per_cell = config.tiles.examples_per_cell
    patches = frozenset(bundle.patches()) if per_cell else frozenset()
    views = EXAMPLE_VIEWS if patches else ()  # no example patches (examples_per_cell 0): the icons' pyramid alone
    todo = [size for size in sized if not _grid_done(bundle, size, key, views)]
    swept = sum(sweep_temporaries(bundle.path(folder)) for folder in (TILES, *(f"{TILES}/{view}" for view in views))) if todo else 0
    run.log(
        f"[tiles] tiling {len(todo)} of {len(sized)} grids ({len(sized) - len(todo)} already done"
        + (f"; removed {swept} temporary file(s) of an interrupted run)" if swept else ")")
    )
    shown = CellSources(per_cell, patches)
    if todo and is_remote(bundle.root):
        _tile_on_scratch(run, key, todo, cells, icon_px, scale, bands, views, shown)
    elif todo:
        canvases = {
            (size, view): create_canvas(_local(bundle.path(_canvas_file(size, view))), size * cell_px, size * cell_px, bands)
            for size in todo
            for view in (ICONS, *views)
        }
        try:
            _tile(run, key, canvases, cells, icon_px, scale, shown)
        finally:
            for canvas in canvases.values():
                canvas.path.unlink(missing_ok=True)
    levels: list[dict[str, Any]] = []
    for size in config.grid.sizes:
        entry: dict[str, Any] = {"grid": size, "cell_px": cell_px, "canvas_px": size * cell_px}
        entry |= {"dzi": dzi_file(size), "poster": poster_file(size)} if size in sized else {"dzi": None, "poster": None}
        if size in sized and views:
            entry["views"] = {view: view_dzi_file(size, view) for view in views}
        levels.append(entry)
    report: dict[str, Any] = {
        "format": config.tiles.format,
        "quality": config.tiles.quality,
        "tile_size": TILE_SIZE,
        "overlap": OVERLAP,
        "scale": scale,
        "scaling": f"icons of {icon_px} px drawn {scale}x larger with nearest-neighbour sampling" if scale > 1 else "none",
        "background": BACKGROUND,
        "channels": run.model.preprocessing.channels,
    }
    if views:
        report["views"] = VIEWS_NOTE
    return {"levels": levels, "tiles": report}


ICONS = "icons"  # the icons' pyramid: tiles/<g>.dzi, with the poster; the other views' under tiles/<view>/
EXAMPLES_LAYOUT: ExamplesLayout = "best"
VIEWS_NOTE = {
    "examples": {
        "layout": EXAMPLES_LAYOUT,
        "what": "each cell's best example patch (nearest its direction) filling the cell, scaled with Lanczos",
    },
    "both": {"what": "each cell split: its icon on the left half, its best example patch on the right, each centred"},
}


@dataclass(frozen=True)
class CellSources:
    """Which files each view paints a cell from: the icon, and the example patches the examples stage cut
    (a cell's first ``per_cell`` examples, as the panel shows them, nearest its direction first)."""

    per_cell: int
    patches: frozenset[str]

    def of(self, bundle: Bundle, cell: Cell, view: str) -> Any:
        icon = bundle.path(cell.icon)
        if view == ICONS:
            return icon
        shown = [bundle.path(name) for name in cell_patches(cell, self.per_cell, self.patches)]
        if view == "examples":
            return tuple(shown[: 1 if EXAMPLES_LAYOUT == "best" else MOSAIC_SIDE * MOSAIC_SIDE])
        return icon, (shown[0] if shown else None)


def _painter(view: str, bands: int, icon_px: int, scale: int) -> Callable[[Any], np.ndarray]:
    """The function that paints one cell of a view's canvas from :meth:`CellSources.of`'s source."""
    if view == ICONS:
        return functools.partial(load_icon, bands=bands, icon_px=icon_px, scale=scale)
    if view == "examples":
        return functools.partial(examples_picture, bands=bands, cell_px=icon_px * scale, layout=EXAMPLES_LAYOUT)
    return functools.partial(split_picture, bands=bands, cell_px=icon_px * scale)


def _canvas_file(size: int, view: str) -> str:
    return canvas_file(size) if view == ICONS else view_canvas_file(size, view)


def _pyramid_folder(bundle: Bundle, view: str) -> Path:
    return _local(bundle.path(TILES if view == ICONS else f"{TILES}/{view}"))


def _tile(
    run: RunInputs, key: str, canvases: dict[tuple[int, str], Canvas], cells: dict[int, list[Cell]], icon_px: int, scale: int,
    shown: CellSources,
) -> None:  # fmt: skip
    bundle, config = run.bundle, run.config.tiles
    ex = run.executor()
    band_futures: dict[Any, tuple[int, str]] = {}
    for (size, view), canvas in canvases.items():
        paint = _painter(view, canvas.bands, icon_px, scale)
        sources = [(cell.i, cell.j, shown.of(bundle, cell, view)) for cell in cells[size]]
        for first, count, band in _bands(sources, size, canvas, icon_px * scale):
            band_futures[ex.submit(write_pictures, canvas, first, count, band, icon_px * scale, paint)] = (size, view)
    remaining: dict[tuple[int, str], int] = defaultdict(int)
    for job in band_futures.values():
        remaining[job] += 1
    finishing: dict[int, int] = defaultdict(int)  # per grid: its pyramid and poster tasks not yet done
    finish_futures: dict[Any, int] = {}
    with tqdm(total=len(band_futures) + len(canvases) + len({size for size, _ in canvases}), desc="tiles", unit="task") as bar:
        for future in ex.as_completed(list(band_futures)):
            future.result()
            bar.update()
            size, view = job = band_futures[future]
            remaining[job] -= 1
            if remaining[job] == 0:
                canvas = canvases[job]
                folder = _pyramid_folder(bundle, view)
                finish_futures[ex.submit(_pyramid_task, canvas, folder, str(size), config.format, config.quality, ex.threads_per_task)] = (
                    size
                )
                if view == ICONS:
                    finish_futures[ex.submit(_poster_task, canvas, bundle.path(poster_file(size)), ex.threads_per_task)] = size
        for size in finish_futures.values():
            finishing[size] += 1
        for future in ex.as_completed(list(finish_futures)):
            future.result()
            bar.update()
            size = finish_futures.pop(future)
            finishing[size] -= 1
            if finishing[size] == 0:  # every pyramid of the grid and its poster done
                for (grid, _), canvas in canvases.items():
                    if grid == size:
                        canvas.path.unlink(missing_ok=True)
                write_marker(bundle.path(tiles_marker(size)), key)


def _tile_on_scratch(
    run: RunInputs, key: str, todo: list[int], cells: dict[int, list[Cell]], icon_px: int, scale: int, bands: int,
    views: tuple[str, ...], shown: CellSources,
) -> None:  # fmt: skip
    """A bundle on an object store: each grid is tiled whole by one task, on that worker's own disk, then uploaded.

    The canvas is one file written in place by many band tasks, which needs a disk they all share; a bundle on
    a store offers none, so grids run in parallel instead of bands. The marker goes last, after the upload.
    """
    bundle, config = run.bundle, run.config.tiles
    ex = run.executor()
    futures = {
        ex.submit(
            tile_grid_task, bundle, size, cells[size], icon_px, scale, bands, config.format, config.quality, ex.threads_per_task,
            views, shown,
        ): size
        for size in todo
    }  # fmt: skip
    for future in tqdm(ex.as_completed(list(futures)), total=len(futures), desc="tiles", unit="grid"):
        future.result()
        write_marker(bundle.path(tiles_marker(futures[future])), key)


def tile_grid_task(
    bundle: Bundle, size: int, cells: list[Cell], icon_px: int, scale: int, bands: int, fmt: str, quality: int, threads: int,
    views: tuple[str, ...] = (), shown: CellSources | None = None,
) -> str:  # fmt: skip
    """Runs on a worker: canvas, pyramid and poster of one grid (and its ``views``' pyramids) in a scratch folder,
    then copied to the bundle (its store, or its local folder)."""
    _vips_threads(threads)
    cell_px = icon_px * scale
    shown = shown or CellSources(0, frozenset())
    with tempfile.TemporaryDirectory(prefix="atlas-tiles-") as scratch:
        out = Path(scratch) / TILES
        for view in (ICONS, *views):
            canvas = create_canvas(Path(scratch) / f"canvas-{view}.tif", size * cell_px, size * cell_px, bands)
            sources = [(cell.i, cell.j, shown.of(bundle, cell, view)) for cell in cells]
            for first, count, band in _bands(sources, size, canvas, cell_px):
                write_pictures(canvas, first, count, band, cell_px, _painter(view, bands, icon_px, scale))
            save_pyramid(canvas.path, out if view == ICONS else out / view, str(size), fmt, quality)  # type: ignore[arg-type]
            if view == ICONS:
                save_poster(canvas.path, out / Path(poster_file(size)).name)
            canvas.path.unlink()
        for view in (ICONS, *views):  # no .dzi may point at a half-replaced folder
            bundle.path(dzi_file(size) if view == ICONS else view_dzi_file(size, view)).unlink(missing_ok=True)
            remove_tree(bundle.path(tiles_folder(size) if view == ICONS else view_tiles_folder(size, view)))
        if is_remote(bundle.root):
            upload_tree(out, bundle.path(TILES))
        else:  # a local bundle too (the dictionary's feature map tiles its few grids this way, on the driver)
            shutil.copytree(out, _local(bundle.path(TILES)), dirs_exist_ok=True)
    return dzi_file(size)


def _local(path: Location) -> Path:
    if not isinstance(path, Path):
        raise TypeError(f"{path}: expected a local path")
    return path


def _grid_done(bundle: Bundle, size: int, key: str, views: tuple[str, ...]) -> bool:
    outputs = [dzi_file(size), poster_file(size), *(view_dzi_file(size, view) for view in views)]
    return is_fresh(bundle.path(tiles_marker(size)), key, [bundle.path(name) for name in outputs])


def _bands(
    sources: list[tuple[int, int, Any]], size: int, canvas: Canvas, cell_px: int
) -> list[tuple[int, int, list[tuple[int, int, Any]]]]:
    per_band = rows_per_band(canvas, cell_px)
    by_row: dict[int, list[tuple[int, int, Any]]] = defaultdict(list)
    for source in sources:
        by_row[source[1]].append(source)
    return [
        (first, min(per_band, size - first), [cell for j in range(first, min(size, first + per_band)) for cell in by_row[j]])
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


STAGE = Stage("tiles", reads=("grid", "render", "examples"), settings=tiles_settings, work=tiles, version=3)
