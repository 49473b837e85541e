"""`atlas run`: images -> collect -> layout -> grid, into one resumable bundle folder."""

from __future__ import annotations

import importlib.metadata
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from atlas.collect import ActivationStore, StoreLayout, layer_shape
from atlas.config import AtlasConfig
from atlas.grid import build_grid
from atlas.images import open_source
from atlas.io import read_json, write_json, write_npy
from atlas.layout import Whitening
from atlas.models import load_model, resolve_layer
from pipelines.collect_stage import run_collect
from pipelines.executor import Executor, open_executor
from pipelines.layout_stage import compute_layout
from pipelines.stages import StageLog, file_fingerprint, fingerprint

FORMAT = "activation-atlas/1"


def _versions() -> dict[str, str]:
    names = ("atlas", "torch", "torchvision", "timm", "umap-learn", "dask", "distributed", "numpy", "scikit-learn", "zarr")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _weights_identity(path: Path | None) -> str | None:
    if path is None:
        return None
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class _LazyExecutor:
    """Starts the cluster the first time a stage needs it, so a fully cached re-run starts none."""

    def __init__(self, config: AtlasConfig, stack: ExitStack, log: Callable[[str], None]) -> None:
        self._config, self._stack, self._log = config, stack, log
        self._executor: Executor | None = None

    def __call__(self) -> Executor:
        if self._executor is None:
            self._executor = self._stack.enter_context(open_executor(self._config.scheduler, self._log))
        return self._executor


def run_atlas(config: AtlasConfig, log: Callable[[str], None] = print) -> Path:
    run_dir = Path(config.output.dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = StageLog(run_dir, log)

    model = load_model(config.model)
    layer = resolve_layer(model, config.model.layer)  # a wrong layer fails here, before any work
    prep = model.preprocessing
    example = torch.zeros(1, prep.channels, prep.input_size, prep.input_size)
    shape = layer_shape(model.module, layer, example)
    channels = shape[0]
    layer_hw = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
    n_classes = (model.num_classes or 0) if config.collect.attribution else 0
    if config.collect.attribution and not n_classes:
        n_classes = _output_width(model.module, example)

    source = open_source(config.images)
    if hasattr(source, "size_hint"):
        source.size_hint = prep.input_size
    plan_started = time.perf_counter()
    shards = source.plan(run_dir / "images", config.collect.n_images, config.collect.shard_size)
    if not shards:
        from atlas.errors import AtlasError

        raise AtlasError(f"images.source {config.images.source!r}: no images found; point it at a folder of photos")
    log(f"[images] {sum(s.count for s in shards)} images in {len(shards)} shards ({time.perf_counter() - plan_started:.1f} s to list)")

    positions = config.collect.positions_per_image
    per_image = layer_hw[0] * layer_hw[1] if positions == "all" else positions
    store_layout = StoreLayout(len(shards), config.collect.shard_size * per_image, channels, n_classes)
    index_file = run_dir / "images" / "images.txt"
    collect_key = fingerprint(
        "collect",
        config.model.model_dump(mode="json", exclude={"classes"}),
        _weights_identity(config.model.weights),
        source.identity(),
        file_fingerprint(index_file) if index_file.exists() else None,
        config.collect.model_dump(mode="json", exclude={"batch_size"}),
        config.seed,
    )
    store = ActivationStore(run_dir / "activations")

    with ExitStack() as stack:
        executor = _LazyExecutor(config, stack, log)
        stages.run(
            "collect",
            collect_key,
            lambda: run_collect(executor, shards, source, config.model, config.collect, config.seed, store, store_layout, collect_key, layer_hw),
        )
        rows = store.read()
        if len(rows) < 4:
            from atlas.errors import AtlasError

            raise AtlasError(f"only {len(rows)} activations were collected; give more readable images (images.source)")

        layout_key = fingerprint("layout", collect_key, config.layout.model_dump(mode="json"), config.seed)

        def layout_work() -> None:
            coords = compute_layout(executor, rows.activation, config.layout, config.seed)
            write_npy(run_dir / "layout" / "coords.npy", coords)
            whitening = Whitening(config.layout.whitening_eps).fit(rows.activation)
            write_npy(run_dir / "layout" / "whitening.npy", whitening.matrix_)

        stages.run("layout", layout_key, layout_work)

    coords = np.load(run_dir / "layout" / "coords.npy")
    grid_key = fingerprint("grid", layout_key, config.grid.model_dump(mode="json"), str(config.model.classes))
    levels: list[dict[str, Any]] = []

    def grid_work() -> None:
        for size in config.grid.sizes:
            level = build_grid(
                coords, rows.activation, rows.attribution, rows.image_id, rows.y, rows.x,
                size, config.grid.min_count, model.labels, config.grid.top_classes, config.grid.examples,
            )  # fmt: skip
            write_npy(run_dir / "levels" / str(size) / "directions.npy", level.directions)
            write_json(run_dir / "levels" / str(size) / "cells.json", level.cells)

    stages.run("grid", grid_key, grid_work)
    for size in config.grid.sizes:
        n_cells = len(read_json(run_dir / "levels" / str(size) / "cells.json"))
        levels.append(
            {
                "grid": size,
                "cells": f"levels/{size}/cells.json",
                "directions": f"levels/{size}/directions.npy",
                "n_cells": n_cells,
                "icon_size": config.render.icon_size,
            }
        )

    reports = store.reports()
    skipped = _listing_skips(run_dir / "images" / "skipped_listing.txt") + [item for r in reports for item in r["skipped"]]
    manifest = {
        "format": FORMAT,
        "name": config.name,
        "model": config.model.spec,
        "layer": config.model.layer,
        "channels": channels,
        "layer_shape": list(shape),
        "input_size": prep.input_size,
        "input_channels": prep.channels,
        "n_images": sum(r["n_images"] for r in reports),
        "n_activations": len(rows),
        "labels": model.labels,
        "activations": "activations/rows.zarr",
        "coords": "layout/coords.npy",
        "whitening": "layout/whitening.npy",
        "image_index": "images/images.txt" if index_file.exists() else None,
        "skipped": {"count": len(skipped), "files": skipped[:1000]},
        "levels": levels,
        "config": config.model_dump(mode="json"),
        "versions": _versions(),
        "stages": stages.records,
    }
    write_json(run_dir / "manifest.json", manifest)
    log(f"atlas: {manifest['n_activations']} activations from {manifest['n_images']} images -> {run_dir}")
    return run_dir


def _output_width(module: torch.nn.Module, example: torch.Tensor) -> int:
    with torch.no_grad():
        out = module(example)
    return int(out.shape[-1])


def _listing_skips(path: Path) -> list[dict[str, str]]:
    """Files the folder listing passed over without opening (``reason<TAB>path`` lines)."""
    if not path.exists():
        return []
    skips = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            reason, _, name = line.rstrip("\n").partition("\t")
            skips.append({"name": name, "error": reason})
    return skips
