"""Collect stage: one Dask task per shard, each writing its own chunk of the activation store."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from atlas.bundle import IMAGE_INDEX, LISTING_SKIPS, ROWS
from atlas.collect import ActivationStore, StoreLayout, collect_records
from atlas.config import CollectConfig, ModelConfig
from atlas.devices import key_part
from atlas.errors import AtlasError
from atlas.images.source import ImageSource, Shard
from atlas.models import model_files_identity
from atlas.storage import Location
from pipelines.context import RunInputs
from pipelines.stage import Report, Stage, StageCall, file_fingerprint, file_identity
from pipelines.worker_state import model_and_layer, use_threads

MIN_ROWS = 4  # UMAP and the grid need a few rows to mean anything


def collect_shard_task(
    shard: Shard,
    source: ImageSource,
    model_config: ModelConfig,
    collect: CollectConfig,
    seed: int,
    store_path: Location,
    layer_hw: tuple[int, int],
    n_classes: int,
    threads: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Runs on a worker: the model comes from the worker's cache, loaded once per process onto ``device``."""
    use_threads(threads)
    model, layer = model_and_layer(model_config, device)
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


def store_layout(run: RunInputs) -> StoreLayout:
    """Every shard owns a fixed block of rows, sized for its fullest possible shard."""
    config = run.config.collect
    h, w = run.layer_hw
    per_image = h * w if config.positions_per_image == "all" else config.positions_per_image
    return StoreLayout(len(run.shards), config.shard_size * per_image, run.layer_shape[0], run.n_classes)


def collect_settings(run: RunInputs) -> Any:
    config = run.config
    index = run.bundle.path(IMAGE_INDEX)
    return [
        config.model.model_dump(mode="json", exclude={"classes"}),
        file_identity(config.model.weights),
        model_files_identity(config.model.spec),
        run.source.identity(),
        file_fingerprint(index) if index.exists() else None,
        config.collect.model_dump(mode="json", exclude={"batch_size"}),  # batching changes speed, not rows
        config.seed,
        *key_part(run.device),  # GPU rows differ from CPU rows in the last bits; on CPU the key is what it always was
    ]


def collect(call: StageCall) -> Report:
    """Collect every shard not already in the store; finished shards survive a kill."""
    run, key = call.run, call.key
    config = run.config
    store, layout = run.bundle.store(), store_layout(run)
    if not store.exists_for(layout, key):
        store.create(layout, key)
    todo = [s for s in run.shards if not store.is_done(s.index)]
    if todo:
        ex = run.executor()
        source_ref = ex.scatter(run.source)
        futures = [
            ex.submit(
                collect_shard_task, shard, source_ref, config.model, config.collect, config.seed, store.path, run.layer_hw,
                layout.n_classes, ex.threads_per_task, str(run.device),
            )
            for shard in todo
        ]  # fmt: skip
        skipped = 0
        with tqdm(total=len(run.shards), initial=len(run.shards) - len(todo), desc="collect", unit="shard") as bar:
            for future in ex.as_completed(futures):
                report = future.result()
                bar.update(1)
                if report["skipped"]:
                    skipped += len(report["skipped"])
                    bar.set_postfix(skipped=skipped)
    reports = store.reports()
    n_rows = sum(r["n_rows"] for r in reports)
    if n_rows < MIN_ROWS:
        raise AtlasError(f"only {n_rows} activations were collected; give more readable images (images.source)")
    skipped_files = _listing_skips(run.bundle.path(LISTING_SKIPS)) + [s for r in reports for s in r["skipped"]]
    return {
        "n_images": sum(r["n_images"] for r in reports),
        "n_activations": n_rows,
        "activations": ROWS,
        "image_index": IMAGE_INDEX if run.bundle.path(IMAGE_INDEX).exists() else None,
        "skipped": {"count": len(skipped_files), "files": skipped_files[:1000]},
    }


def _listing_skips(path: Location) -> list[dict[str, str]]:
    """Files the folder listing passed over without opening (``reason<TAB>path`` lines)."""
    if not path.exists():
        return []
    skips = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            reason, _, name = line.rstrip("\n").partition("\t")
            skips.append({"name": name, "error": reason})
    return skips


COLLECT = Stage("collect", reads=(), settings=collect_settings, work=collect)
