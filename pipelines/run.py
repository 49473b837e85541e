"""`atlas run`: images -> collect -> layout -> grid -> render -> tiles, into one resumable bundle folder.

Each stage is a function of a shared ``RunContext``; each is keyed by its inputs
(chained through the previous stage's key) and skipped when its marker matches.
"""

from __future__ import annotations

import importlib.metadata
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from atlas.collect import ActivationStore, Rows, StoreLayout, layer_shape
from atlas.config import AtlasConfig
from atlas.errors import AtlasError
from atlas.grid import build_grid
from atlas.images import open_source
from atlas.images.source import ImageSource, Shard
from atlas.io import read_json, write_json, write_npy
from atlas.layout import Whitening
from atlas.models import LoadedModel, load_model, model_files_identity, resolve_layer
from atlas.runtime import tune_allocator
from pipelines.collect_stage import run_collect
from pipelines.executor import Executor, LazyExecutor
from pipelines.layout_stage import compute_layout
from pipelines.render_stage import measure_fidelity, run_render
from pipelines.stages import StageLog, file_fingerprint, fingerprint
from pipelines.tiles_stage import manifest_entries, tiles

FORMAT = "activation-atlas/1"


@dataclass
class RunContext:
    config: AtlasConfig
    run_dir: Path
    model: LoadedModel
    layer: torch.nn.Module
    layer_shape: tuple[int, ...]
    n_classes: int
    source: ImageSource
    shards: list[Shard]
    executor: Callable[[], Executor]
    stages: StageLog
    labels: list[str] | None = None
    keys: dict[str, str] = field(default_factory=dict)
    _rows: Rows | None = None

    @property
    def store(self) -> ActivationStore:
        return ActivationStore(self.run_dir / "activations")

    @property
    def layer_hw(self) -> tuple[int, int]:
        return (self.layer_shape[1], self.layer_shape[2]) if len(self.layer_shape) == 3 else (1, 1)

    def rows(self) -> Rows:
        if self._rows is None:
            self._rows = self.store.read()
        return self._rows


def collect(ctx: RunContext) -> None:
    config = ctx.config
    positions = config.collect.positions_per_image
    per_image = ctx.layer_hw[0] * ctx.layer_hw[1] if positions == "all" else positions
    layout = StoreLayout(len(ctx.shards), config.collect.shard_size * per_image, ctx.layer_shape[0], ctx.n_classes)
    index_file = ctx.run_dir / "images" / "images.txt"
    key = fingerprint(
        "collect",
        config.model.model_dump(mode="json", exclude={"classes"}),
        _weights_identity(config.model.weights),
        model_files_identity(config.model.spec),
        ctx.source.identity(),
        file_fingerprint(index_file) if index_file.exists() else None,
        config.collect.model_dump(mode="json", exclude={"batch_size"}),  # batching changes speed, not rows
        config.seed,
    )
    ctx.keys["collect"] = key
    ctx.stages.run(
        "collect",
        key,
        lambda: run_collect(
            ctx.executor, ctx.shards, ctx.source, config.model, config.collect, config.seed, ctx.store, layout, key, ctx.layer_hw
        ),
    )
    if len(ctx.rows()) < 4:
        raise AtlasError(f"only {len(ctx.rows())} activations were collected; give more readable images (images.source)")


def layout(ctx: RunContext) -> None:
    config = ctx.config
    given = config.layout.coords
    if given is not None and not Path(given).is_file():
        raise AtlasError(f"layout.coords '{given}': no such file; give a .npy of [N, 2] coordinates or remove the key")
    key = fingerprint(
        "layout", ctx.keys["collect"], config.layout.model_dump(mode="json"), config.seed, file_fingerprint(given) if given else None
    )
    ctx.keys["layout"] = key

    def work() -> None:
        activation = ctx.rows().activation
        if given is not None:
            coords = _given_coords(given, len(activation))
        else:
            coords = compute_layout(ctx.executor, activation, config.layout, config.seed)
        write_npy(ctx.run_dir / "layout" / "coords.npy", coords)
        write_npy(ctx.run_dir / "layout" / "whitening.npy", Whitening(config.layout.whitening_eps).fit(activation).matrix_)

    ctx.stages.run("layout", key, work)


def _given_coords(path: Path, n_rows: int) -> np.ndarray:
    """``layout.coords``: a layout made elsewhere (``atlas compare`` aligns several), checked against the rows."""
    try:
        coords = np.load(path)
    except (OSError, ValueError) as err:
        raise AtlasError(f"layout.coords '{path}': cannot read it as .npy ({err})") from None
    if coords.shape != (n_rows, 2) or not np.isfinite(coords).all() or coords.min() < 0 or coords.max() > 1:
        raise AtlasError(f"layout.coords '{path}': expected finite [{n_rows}, 2] values in [0, 1] (one per row), got shape {coords.shape}")
    return coords.astype(np.float32)


def grid(ctx: RunContext) -> None:
    config = ctx.config
    key = fingerprint("grid", ctx.keys["layout"], config.grid.model_dump(mode="json"), ctx.labels)
    ctx.keys["grid"] = key

    def work() -> None:
        rows = ctx.rows()
        coords = np.load(ctx.run_dir / "layout" / "coords.npy")
        for size in config.grid.sizes:
            level = build_grid(
                coords, rows.activation, rows.attribution, rows.image_id, rows.y, rows.x,
                size, config.grid.min_count, ctx.labels, config.grid.top_classes, config.grid.examples,
            )  # fmt: skip
            write_npy(ctx.run_dir / "levels" / str(size) / "directions.npy", level.directions)
            write_json(ctx.run_dir / "levels" / str(size) / "cells.json", level.cells)

    ctx.stages.run("grid", key, work)


def render_icons(ctx: RunContext) -> None:
    config = ctx.config
    key = fingerprint("render", ctx.keys["grid"], config.render.model_dump(mode="json"), config.seed)
    ctx.keys["render"] = key

    def work() -> None:
        run_render(ctx.executor, ctx.run_dir, config.grid.sizes, config.model, config.render, config.seed, key)
        for size in config.grid.sizes:
            fidelity = measure_fidelity(ctx.run_dir, size, ctx.model, ctx.layer)
            ctx.stages.log(f"[render] grid {size}: top-1 {fidelity.top1:.2f}, mean cosine {fidelity.mean_cosine:.2f}")

    ctx.stages.run("render", key, work)


STAGE_FUNCTIONS: dict[str, Callable[[RunContext], None]] = {
    "collect": collect,
    "layout": layout,
    "grid": grid,
    "render": render_icons,
    "tiles": tiles,
}


def run_atlas(
    config: AtlasConfig, until: str | None = None, log: Callable[[str], None] = print, executor: Callable[[], Executor] | None = None
) -> Path:
    """Run every stage (or up to ``until``) and write the manifest; returns the bundle folder.

    ``executor``: a cluster already open (``atlas compare`` runs many bundles on one); default, one started on demand.
    """
    if until is not None and until not in STAGE_FUNCTIONS:
        raise AtlasError(f"--until {until!r}: expected one of {', '.join(STAGE_FUNCTIONS)}")
    tune_allocator()  # before the first Dask thread allocates (atlas.runtime)
    run_dir = Path(config.output.dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)

    model = load_model(config.model)
    layer = resolve_layer(model, config.model.layer)  # a wrong layer fails here, before any work
    prep = model.preprocessing
    example = torch.zeros(1, prep.channels, prep.input_size, prep.input_size)
    shape = layer_shape(model.module, layer, example)
    n_classes = 0
    if config.collect.attribution:
        n_classes = model.num_classes or _output_width(model.module, example)

    source = open_source(config.images)
    if hasattr(source, "size_hint"):
        source.size_hint = prep.input_size
    started = time.perf_counter()
    shards = source.plan(run_dir / "images", config.collect.n_images, config.collect.shard_size)
    if not shards:
        raise AtlasError(f"images.source {config.images.source!r}: no images found; point it at a folder of images")
    log(f"[images] {sum(s.count for s in shards)} images in {len(shards)} shards ({time.perf_counter() - started:.1f} s to list)")

    with ExitStack() as stack:
        ctx = RunContext(
            config, run_dir, model, layer, shape, n_classes, source, shards, executor or LazyExecutor(config.scheduler, stack, log),
            StageLog(run_dir, log),
            labels=_class_names(model, source, n_classes),
        )  # fmt: skip
        for name, stage in STAGE_FUNCTIONS.items():
            stage(ctx)
            if name == until:
                break
    manifest = build_manifest(ctx)
    if "tiles" in ctx.keys:
        manifest = manifest_entries(manifest, config, run_dir, ctx.model.preprocessing.channels)
    write_json(run_dir / "manifest.json", manifest)
    log(f"atlas: {manifest['n_activations']} activations from {manifest['n_images']} images -> {run_dir}")
    return run_dir


def build_manifest(ctx: RunContext) -> dict[str, Any]:
    config, run_dir = ctx.config, ctx.run_dir
    reports = ctx.store.reports()
    skipped = _listing_skips(run_dir / "images" / "skipped_listing.txt") + [s for r in reports for s in r["skipped"]]
    levels = []
    if "grid" in ctx.keys:
        for size in config.grid.sizes:
            levels.append(
                {
                    "grid": size,
                    "cells": f"levels/{size}/cells.json",
                    "directions": f"levels/{size}/directions.npy",
                    "icon_size": config.render.icon_size,
                    **_level_summary(read_json(run_dir / "levels" / str(size) / "cells.json")),
                }
            )
    return {
        "format": FORMAT,
        "name": config.name,
        "model": config.model.spec,
        "layer": config.model.layer,
        "channels": ctx.layer_shape[0],
        "layer_shape": list(ctx.layer_shape),
        "input_size": ctx.model.preprocessing.input_size,
        "input_channels": ctx.model.preprocessing.channels,
        "n_images": sum(r["n_images"] for r in reports),
        "n_activations": len(ctx.rows()),
        "labels": ctx.labels,
        "activations": "activations/rows.zarr",
        "coords": "layout/coords.npy" if "layout" in ctx.keys else None,
        "whitening": "layout/whitening.npy" if "layout" in ctx.keys else None,
        "image_index": "images/images.txt" if (run_dir / "images" / "images.txt").exists() else None,
        "skipped": {"count": len(skipped), "files": skipped[:1000]},
        "levels": levels,
        "config": config.model_dump(mode="json"),
        "versions": _versions(),
        "render": {k: config.render.model_dump(mode="json")[k] for k in ("steps", "icon_size", "tries", "learning_rate", "whiten")}
        | {"seconds": ctx.stages.records.get("render", {}).get("seconds")},
        "stages": ctx.stages.records,
    }


def _level_summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"n_cells": len(cells)}
    scored = [c["fidelity"] for c in cells if "fidelity" in c]
    if scored:
        summary["fidelity"] = {
            "mean_cosine": round(float(np.mean([f["cosine"] for f in scored])), 4),
            "top1": round(float(np.mean([f["rank"] == 0 for f in scored])), 4),
        }
    return summary


def _class_names(model: LoadedModel, source: ImageSource, n_classes: int) -> list[str] | None:
    """The model's own class names, else the dataset's when they match the model's outputs."""
    if model.labels is not None:
        return model.labels
    dataset_labels = source.labels
    return list(dataset_labels) if dataset_labels is not None and len(dataset_labels) == n_classes else None


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


def _output_width(module: torch.nn.Module, example: torch.Tensor) -> int:
    with torch.no_grad():
        return int(module(example).shape[-1])


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
