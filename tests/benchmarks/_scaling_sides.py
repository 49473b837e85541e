"""The pieces of the scaling benchmark that run in their own process: ``python _scaling_sides.py MODE JSON``.

- ``plain``: plain umap-learn (``n_neighbors=30, min_dist=0.05, cosine``) on the
  first ``n_rows`` rows of a bundle's store, in a fresh process with the clock
  started before ``import umap`` (its JIT counts, as it does for the pipeline).
- ``imagenet``: the ImageNet shape without collection: an activation store of
  ``n_rows`` x 112 channels x 1,000 classes filled by this helper (clustered,
  non-negative activations like a post-ReLU layer; float16 attribution), then
  the layout and grid stages at 20..320 on a local cluster, as ``atlas run``
  runs them, then the viewer's data (cell blocks and index). Timed per step.
- ``tokens``: the token-model shape, the same steps on ``n_rows`` x 192 channels x
  100 classes (a ViT-Tiny's width: 50,000 images x 196 patch tokens is 9.8 M rows);
  signed activations, as a transformer's residual stream is.

Each prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def plain(args: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from atlas.collect import ActivationStore

    store = ActivationStore(Path(args["bundle"]) / "activations")
    x = store.take(np.arange(args["n_rows"]), ("activation",))["activation"]
    t0 = time.perf_counter()
    import umap

    embedding = umap.UMAP(n_neighbors=30, min_dist=0.05, metric="cosine", random_state=0).fit_transform(x)
    seconds = time.perf_counter() - t0
    np.save(args["coords"], embedding.astype(np.float32))
    return {"seconds": seconds, "rows": len(x), "channels": x.shape[1]}


def fill_store(path: Path, n_rows: int, channels: int, classes: int, rows_per_shard: int, seed: int, signed: bool = False) -> None:
    """Clustered rows (64 centres in a 12-dimensional latent, mixed to ``channels``), each centre's class clearly attributed."""
    import numpy as np

    from atlas.collect import ActivationStore, Rows, StoreLayout

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, 12))
    mixing = rng.normal(size=(12, channels)).astype(np.float32)
    class_of_centre = rng.integers(0, classes, 64)
    store = ActivationStore(path)
    shards = -(-n_rows // rows_per_shard)
    store.create(StoreLayout(shards, rows_per_shard, channels, classes), key="benchmark")
    for shard in range(shards):
        n = min(rows_per_shard, n_rows - shard * rows_per_shard)
        centre = rng.integers(0, 64, n)
        latent = centres[centre] + 0.7 * rng.normal(size=(n, 12))
        activation = latent.astype(np.float32) @ mixing + 0.3 * rng.normal(size=(n, channels)).astype(np.float32)
        if not signed:
            activation = np.maximum(activation, 0)  # post-ReLU
        attribution = rng.normal(scale=0.1, size=(n, classes)).astype(np.float16)
        attribution[np.arange(n), class_of_centre[centre]] += 2.0
        ids = np.arange(shard * rows_per_shard, shard * rows_per_shard + n)
        zeros = np.zeros(n, np.int32)
        store.write_shard(
            shard, Rows(activation, attribution, ids, zeros + 3, zeros + 3, zeros - 1), {"n_rows": n, "n_images": n, "skipped": []}
        )


def imagenet(args: dict[str, Any]) -> dict[str, Any]:
    return filled_run(args, channels=112, classes=1000, signed=False)


def tokens(args: dict[str, Any]) -> dict[str, Any]:
    return filled_run(args, channels=192, classes=100, signed=True)


def filled_run(args: dict[str, Any], channels: int, classes: int, signed: bool) -> dict[str, Any]:
    """Fill a store, then run layout, grids 20..320 and the viewer's data on it as ``atlas run`` would; seconds per step."""
    from atlas.bundle import BundleWriter, Cell
    from atlas.config import AtlasConfig, GridConfig, LayoutConfig, SchedulerConfig
    from atlas.grid import build_grids
    from atlas_pipelines.engine.executor import open_executor
    from atlas_pipelines.stages.layout import compute_layout

    bundle = BundleWriter(Path(args["out"]))
    store = bundle.store()
    marks: dict[str, Any] = {}
    t0 = time.perf_counter()
    fill_store(store.path, args["n_rows"], channels, classes, args.get("rows_per_shard", 4096), seed=0, signed=signed)
    marks["fill_s"] = time.perf_counter() - t0
    config = AtlasConfig(layout=LayoutConfig(), grid=GridConfig(sizes=(20, 40, 80, 160, 320), min_count=5))
    t0 = time.perf_counter()
    with open_executor(SchedulerConfig(address="local"), log=lambda m: None) as ex:
        coords, whitening = compute_layout(lambda: ex, store, config.layout, seed=0)
    assert coords is not None
    bundle.write_coords(coords)
    bundle.write_whitening(whitening.matrix_)
    marks["layout_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    levels = []
    for level in build_grids(coords, store.chunks, config.grid.sizes, config.grid.min_count, None, channels, classes):
        bundle.write_grid_cells(level.size, [Cell.from_json(cell) for cell in level.cells])
        bundle.write_directions(level.size, level.directions)
        bundle.write_attribution(level.size, level.mean_attribution)
        levels.append({"grid": level.size, "n_cells": len(level.cells)})
    marks["grid_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for entry in levels:  # the viewer's data: each grid's cell blocks and cell index, as assemble writes them
        bundle.write_viewer_cells(entry["grid"], bundle.grid_cells(entry["grid"]))
    marks["viewer_data_s"] = time.perf_counter() - t0
    return {**marks, "rows": args["n_rows"], "levels": levels}


if __name__ == "__main__":
    mode, raw = sys.argv[1], sys.argv[2]
    result = {"plain": plain, "imagenet": imagenet, "tokens": tokens}[mode](json.loads(raw))
    print(json.dumps(result, default=str))
