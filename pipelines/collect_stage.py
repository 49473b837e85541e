"""Collect stage: one Dask task per shard, each writing its own chunk of the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from atlas.collect import ActivationStore, StoreLayout, collect_records
from atlas.config import CollectConfig, ModelConfig
from atlas.images.source import ImageSource, Shard
from pipelines.executor import Executor
from pipelines.worker_state import model_and_layer, use_threads


def collect_shard_task(
    shard: Shard,
    source: ImageSource,
    model_config: ModelConfig,
    collect: CollectConfig,
    seed: int,
    store_path: Path,
    layer_hw: tuple[int, int],
    n_classes: int,
    threads: int,
) -> dict[str, Any]:
    """Runs on a worker: the model comes from the worker's cache, loaded once per process."""
    use_threads(threads)
    model, layer = model_and_layer(model_config)
    result = collect_records(
        model.module,
        layer,
        model.preprocessing,
        layer_hw,
        source.read(shard),
        collect.positions_per_image,
        collect.batch_size,
        seed,
        collect.attribution,
        n_classes,
    )
    report = {"shard": shard.index, "n_images": result.n_images, "n_rows": len(result.rows), "skipped": result.skipped}
    ActivationStore(store_path).write_shard(shard.index, result.rows, report)
    return report


def run_collect(
    executor: Callable[[], Executor],
    shards: list[Shard],
    source: ImageSource,
    model_config: ModelConfig,
    collect: CollectConfig,
    seed: int,
    store: ActivationStore,
    layout: StoreLayout,
    key: str,
    layer_hw: tuple[int, int],
) -> None:
    """Collect every shard not already in the store; finished shards survive a kill."""
    if not store.exists_for(layout, key):
        store.create(layout, key)
    todo = [s for s in shards if not store.is_done(s.index)]
    if not todo:
        return
    ex = executor()
    source_ref = ex.scatter(source)
    futures = [
        ex.submit(
            collect_shard_task, shard, source_ref, model_config, collect, seed, store.path, layer_hw, layout.n_classes, ex.threads_per_task
        )
        for shard in todo
    ]
    skipped = 0
    with tqdm(total=len(shards), initial=len(shards) - len(todo), desc="collect", unit="shard") as bar:
        for future in ex.as_completed(futures):
            report = future.result()
            bar.update(1)
            if report["skipped"]:
                skipped += len(report["skipped"])
                bar.set_postfix(skipped=skipped)
