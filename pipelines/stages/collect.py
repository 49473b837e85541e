"""Collect stage: one Dask task per shard, each writing its own chunk of the activation store."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from atlas.bundle import IMAGE_INDEX, LISTING_SKIPS, ROWS
from atlas.collect import CLASS_TOKEN_ROW, ActivationStore, StoreLayout, collect_records
from atlas.collect.sampling import SAME_ROWS_RULE, map_positions
from atlas.config import CollectConfig, ModelConfig
from atlas.devices import key_part
from atlas.errors import AtlasError
from atlas.images.folder import read_listing_line
from atlas.images.source import ImageSource, Shard, display_name, one_line
from atlas.models import model_files_identity
from atlas.models.layouts import require_class_token
from atlas.storage import Location
from atlas_pipelines.engine.context import RunInputs, SameRows
from atlas_pipelines.engine.stage import Report, Stage, StageCall, file_fingerprint, file_identity
from atlas_pipelines.engine.worker_state import READING_KEYS, folded_view, use_threads

MIN_ROWS = 4  # UMAP and the grid need a few rows to mean anything
MANIFEST_LIST = 1000  # the manifest names at most this many skipped files, and as many images with non-finite rows


def collect_shard_task(
    shard: Shard,
    source: ImageSource,
    model_config: ModelConfig,
    collect: CollectConfig,
    seed: int,
    store_path: Location,
    n_classes: int,
    threads: int,
    device: str = "cpu",
    same_rows: SameRows | None = None,
) -> dict[str, Any]:
    """Runs on a worker: the model comes from the worker's cache, loaded once per process onto ``device``, its norms
    folded into their convolutions.

    ``same_rows``: this shard's rows are the main bundle's, read again at this layer (``model.layers``)."""
    use_threads(threads)
    view = folded_view(model_config, device)
    positions = None if same_rows is None else main_positions(same_rows, shard.index, view.grid)
    result = collect_records(
        view,
        source.read(shard),
        collect.positions_per_image,
        collect.batch_size,
        seed,
        collect.attribution,
        n_classes,
        collect.nonfinite,
        collect.class_token,
        positions,
    )
    report = {
        "shard": shard.index,
        "n_images": result.n_images,
        "n_rows": len(result.rows),
        "skipped": result.skipped,
        "nonfinite": result.nonfinite,
        "n_zero": result.n_zero,
        **({"n_class_tokens": int((result.rows.kind == CLASS_TOKEN_ROW).sum())} if collect.class_token else {}),
    }
    ActivationStore(store_path).write_shard(shard.index, result.rows, report)
    return report


def main_positions(same_rows: SameRows, shard: int, grid: tuple[int, int]) -> dict[int, np.ndarray]:
    """Each image's (y, x) rows in the main bundle's shard ``shard``, in store order, mapped to a layer of ``grid``."""
    main = ActivationStore(same_rows.store)
    chunks = list(main.chunks(("image_id", "y", "x"), shards=[shard]))
    if not chunks:
        return {}
    ids, ys, xs = (chunks[0].arrays[name] for name in ("image_id", "y", "x"))
    mapped = map_positions(np.stack([ys, xs], axis=1), same_rows.grid, grid)
    return {int(image): mapped[ids == image] for image in np.unique(ids)}


def store_layout(run: RunInputs) -> StoreLayout:
    """Every shard owns a fixed block of rows, sized for its fullest possible shard (another layer's: the main's)."""
    config = run.config.collect
    h, w = run.layer_hw
    per_image = (h * w if config.positions_per_image == "all" else config.positions_per_image) + int(config.class_token)
    rows = config.shard_size * per_image if run.same_rows is None else run.same_rows.rows_per_shard
    return StoreLayout(len(run.shards), rows, run.view.channels, run.n_classes)


def collect_settings(run: RunInputs) -> Any:
    config = run.config
    index = run.bundle.path(IMAGE_INDEX)
    reading = {key: value for key, value in config.model.model_dump(mode="json", include=set(READING_KEYS)).items() if value != "auto"}
    return [
        config.model.model_dump(mode="json", exclude={"classes", "layers", *READING_KEYS}),  # layers: which atlases, not these rows
        file_identity(config.model.weights),
        model_files_identity(config.model.spec),
        run.source.identity(),
        file_fingerprint(index) if index.exists() else None,
        # batching changes speed, not rows; class_token is in the key only when set, so older bundles keep theirs
        # target_rows only chose positions_per_image, which is here as chosen: a set reaching it keeps its key
        config.collect.model_dump(
            mode="json", exclude={"batch_size", "target_rows", *(() if config.collect.class_token else ("class_token",))}
        ),
        config.seed,
        *key_part(run.device),  # GPU rows differ from CPU rows in the last bits
        *([reading] if reading else []),  # how the layer is read, when set: auto keeps the keys it always had
        *([{"same_rows": run.same_rows.key, "rule": SAME_ROWS_RULE}] if run.same_rows is not None else []),
    ]


def collect(call: StageCall) -> Report:
    """Collect every shard not already in the store; finished shards survive a kill."""
    run, key = call.run, call.key
    config = run.config
    _check_channels(run)
    if config.collect.class_token:
        require_class_token(run.view.layout, run.view.module, run.view.layer_name)
    store, layout = run.bundle.store(), store_layout(run)
    if not store.exists_for(layout, key):
        store.create(layout, key)
    todo = [s for s in run.shards if not store.is_done(s.index)]
    if todo:
        ex = run.executor()
        source_ref = ex.scatter(run.source)
        futures = [
            ex.submit(
                collect_shard_task, shard, source_ref, config.model, config.collect, config.seed, store.path, layout.n_classes,
                ex.threads_per_task, str(run.device), run.same_rows,
            )
            for shard in todo
        ]  # fmt: skip
        skipped = dropped = 0
        with tqdm(total=len(run.shards), initial=len(run.shards) - len(todo), desc="collect", unit="shard") as bar:
            for future in ex.as_completed(futures):
                report = future.result()
                bar.update(1)
                skipped += len(report["skipped"])
                dropped += sum(entry["rows"] for entry in report["nonfinite"])
                if skipped or dropped:
                    bar.set_postfix(skipped=skipped, **({"nonfinite_rows": dropped} if dropped else {}))
    reports = store.reports()
    n_rows = sum(r["n_rows"] for r in reports)
    listing_count, listing_files = _listing_skips(run.bundle.path(LISTING_SKIPS), MANIFEST_LIST)
    read_skips = [s for r in reports for s in r["skipped"]]
    nonfinite = [entry for r in reports for entry in r.get("nonfinite", [])]  # stores written before the key: none
    if n_rows < MIN_ROWS:
        raise AtlasError(_too_few_rows(run, n_rows, read_skips, nonfinite))
    if all("n_zero" in r for r in reports) and sum(r["n_zero"] for r in reports) == n_rows:
        raise AtlasError(
            f"layer '{config.model.layer}' is zero in every channel for all {n_rows} activations collected: there is "
            "nothing to lay out or visualise; pick another layer (atlas layers MODEL) or check the model's weights"
        )
    skipped_files = (listing_files + read_skips)[:MANIFEST_LIST]
    return {
        "n_images": sum(r["n_images"] for r in reports),
        "n_activations": n_rows,
        "activations": ROWS,
        "image_index": IMAGE_INDEX if run.bundle.path(IMAGE_INDEX).exists() else None,
        "skipped": {"count": listing_count + len(read_skips), "files": skipped_files},
        "nonfinite": {
            "count": sum(entry["rows"] for entry in nonfinite),
            "images": len(nonfinite),
            "files": nonfinite[:MANIFEST_LIST],
        },
        **({"class_tokens": sum(r["n_class_tokens"] for r in reports)} if config.collect.class_token else {}),
    }


ANGULAR_METRICS = ("cosine", "correlation")


def _check_channels(run: RunInputs) -> None:
    """Fail before any work when the layout could not mean anything: a 1-channel layer under an angular metric.

    The cosine distance between 1-channel activations is 0 or 2 (their sign only) and the correlation is undefined,
    so UMAP would scatter equal points at random. Euclidean distance orders them by value, and whitening (1 x 1),
    rendering and fidelity all work with one channel.
    """
    layout = run.config.layout
    if run.view.channels == 1 and layout.coords is None and layout.metric in ANGULAR_METRICS:
        raise AtlasError(
            f"layer '{run.config.model.layer}' has 1 channel: layout.metric={layout.metric} sees only the sign of "
            "1-channel activations; set layout.metric=euclidean, or pick a layer with more channels"
        )


def _too_few_rows(run: RunInputs, n_rows: int, read_skips: list[dict[str, str]], nonfinite: list[dict[str, Any]]) -> str:
    """The one line for a collection that left too little to lay out, saying why."""
    source = run.config.images.source
    listed = sum(shard.count for shard in run.shards)
    decoded = listed - len(read_skips)
    if decoded == 0 and read_skips:
        first = read_skips[0]
        return (
            f"images.source '{source}': none of the {listed} image files could be read (for example '{one_line(first['name'])}': "
            f"{first['error']}); point images.source at readable images"
        )
    if nonfinite and n_rows == 0:
        first = nonfinite[0]
        return (
            f"collect.nonfinite=drop dropped every row: layer '{run.config.model.layer}' gives NaN or infinity for all "
            f"{len(nonfinite)} readable images (for example '{one_line(first['name'])}': {first['error']}); fix the model "
            "(its weights, preprocessing or layer)"
        )
    dropped = f", {sum(e['rows'] for e in nonfinite)} dropped as non-finite" if nonfinite else ""
    return (
        f"only {n_rows} activations were collected from {listed} listed images ({len(read_skips)} unreadable{dropped}); "
        f"at least {MIN_ROWS} are needed: give more readable images (images.source) or raise collect.positions_per_image"
    )


def _listing_skips(path: Location, keep: int) -> tuple[int, list[dict[str, str]]]:
    """How many files the folder listing passed over without opening, and the first ``keep`` of them.

    Streams ``reason<TAB>path`` lines, so a folder of a million non-images costs one line in memory at a time.
    """
    if not path.exists():
        return 0, []
    count = 0
    skips: list[dict[str, str]] = []
    with path.open("rb") as handle:
        for line in handle:
            count += 1
            if len(skips) < keep:
                reason, _, name = read_listing_line(line).partition("\t")
                skips.append({"name": display_name(name), "error": reason})
    return count, skips


STAGE = Stage("collect", reads=(), settings=collect_settings, work=collect)
