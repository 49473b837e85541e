"""The dictionary stage's links between features and cells: one worker task streams the store once more through
the saved dictionary (atlas.dictionary.links); the driver writes, per grid, each feature's mean activation over the
cells (``levels/<g>/feature_heat.npy``, read by the viewer one feature's column at a time, like the class heatmap)
and each cell's strongest features (``levels/<g>/cell_features.json``)."""

from __future__ import annotations

import time
from typing import Any

from atlas.bundle import Bundle, cell_features_file, feature_heat_file
from atlas.dictionary.links import CellFeatures, cell_features
from atlas.dictionary.weights import DictionaryWeights
from atlas.grid.means import row_cells
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.worker_state import use_threads

TOP_FEATURES = 8  # features listed per cell
HEAT = "mean activation of the feature over the cell's rows (rows where it is inactive count as 0)"


def links_task(bundle: Bundle, weights: DictionaryWeights, sizes: tuple[int, ...], threads: int) -> list[CellFeatures]:
    """On a worker: every grid's links from one pass over the store's activations."""
    use_threads(threads)
    coords = bundle.coords()
    grids = [[{"i": cell.i, "j": cell.j} for cell in bundle.grid_cells(size)] for size in sizes]
    members = [row_cells(coords, size, cells) for size, cells in zip(sizes, grids, strict=True)]
    return cell_features(weights, bundle.store().chunks(["activation"]), members, [len(cells) for cells in grids])


def write_links(run: RunInputs, weights: DictionaryWeights) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Writes every grid's links; returns the dictionary entry's ``links`` and the manifest's level entries."""
    sizes, started = tuple(run.config.grid.sizes), time.perf_counter()
    ex = run.executor()
    linked: list[CellFeatures] = ex.submit(links_task, run.bundle, weights, sizes, ex.threads_per_task).result()
    levels = []
    for size, links in zip(sizes, linked, strict=True):
        run.bundle.write_feature_heat(size, links.mean)
        run.bundle.write_cell_features(size, links.top(TOP_FEATURES))
        levels.append({"grid": size, "feature_heat": feature_heat_file(size), "cell_features": cell_features_file(size)})
    run.log(f"[dictionary] links between features and cells of grids {list(sizes)} ({time.perf_counter() - started:.1f} s)")
    entry = {
        "heat": HEAT,
        "cell_features": f"the {TOP_FEATURES} features of highest mean activation per cell, with the share of its rows where each fires",
    }
    return entry, levels
