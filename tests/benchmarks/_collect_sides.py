"""The two sides of the collection benchmark, each run in a fresh process: ``python _collect_sides.py MODE JSON``.

Both sides run as children of the benchmark with the same environment, so
neither inherits the state of the pytest process (imported modules, cached
photos, torch thread settings, or the variables a Dask nanny writes into
``os.environ`` of the process that starts a LocalCluster). Each prints one JSON
object as its last line of stdout.

- ``bare``: a plain PyTorch loop in one process, torch threads = cores: read the
  same built-in photos, preprocess with ``atlas.images.preprocess.to_tensor``,
  sample the same positions, ``atlas.collect.activations_at``. No Dask, no store.
- ``pipeline``: ``atlas_pipelines.commands.run.run_atlas(config, until="collect")`` with the
  default local cluster, timed from outside and from the log lines it prints.
- ``profile``: the same collect stage taken apart: cluster start, per-worker
  model and photo load, then ``run_collect`` on the warm cluster (steady state)
  with Dask's task stream, and the read/model/write split inside a task.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _config(args: dict):
    from atlas.config import load_config

    sets = [
        f"output.dir={args['out']}",
        f"output.name={args.get('name', 'bench')}",
        f"collect.n_images={args['n_images']}",
        f"collect.positions_per_image={args['ppi']}",
        f"collect.batch_size={args['batch_size']}",
        "scheduler.address=local",
    ]
    sets += list(args.get("extra_sets", []))
    return load_config(REPO / "configs" / "default.yaml", sets)


def bare(args: dict) -> dict:
    import numpy as np
    import torch

    from atlas.collect import activations_at, sample_positions
    from atlas.config import ModelConfig
    from atlas.images import open_source
    from atlas.images.preprocess import to_tensor
    from atlas.models import ModelView, load_model

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    config = _config(args)
    t0 = time.perf_counter()
    model = load_model(ModelConfig(spec=config.model.spec, layer=config.model.layer))
    model.module.to(memory_format=torch.channels_last)
    view = ModelView.of(model, config.model.layer)
    prep = model.preprocessing
    height, width = view.grid
    t_model = time.perf_counter()
    source = open_source(config.images.source, config.images.root, config.images.max_pixels)
    if hasattr(source, "size_hint"):
        source.size_hint = prep.input_size
    n_images = args["n_images"]
    (shard,) = source.plan(Path(args["out"]) / "bare-images", n_images, n_images)  # loads the photos (once per process)
    t_photos = time.perf_counter()

    ppi = args["ppi"]
    per_batch = max(1, args["batch_size"] // ppi)
    activations, attributions = [], []
    read_s = model_s = 0.0
    records = iter(source.read(shard))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t_loop = time.perf_counter()
    while True:
        t_a = time.perf_counter()
        batch = []
        for record in records:
            batch.append(record)
            if len(batch) == per_batch:
                break
        if not batch:
            break
        tensors = [to_tensor(r.image, prep) for r in batch]
        positions = [sample_positions(r.image_id, height, width, ppi, config.seed) for r in batch]
        rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(positions)])
        where = np.concatenate(positions)
        images = torch.stack(tensors).contiguous(memory_format=torch.channels_last)
        t_b = time.perf_counter()
        out = activations_at(view, images, rows, where, True)
        t_c = time.perf_counter()
        activations.append(out.activation)
        attributions.append(out.attribution)
        read_s += t_b - t_a
        model_s += t_c - t_b
    activation = np.concatenate(activations)
    t_end = time.perf_counter()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "rows": int(len(activation)),
        "attribution_shape": list(np.concatenate(attributions).shape),
        "threads": torch.get_num_threads(),
        "model_load_s": t_model - t0,
        "photo_load_s": t_photos - t_model,
        "loop_s": t_end - t_loop,
        "read_preprocess_s": read_s,
        "model_s": model_s,
        "total_s": t_end - t0,
        "loop_minor_page_faults": faults,
    }


def pipeline(args: dict) -> dict:
    from atlas_pipelines.commands.run import run_atlas

    config = _config(args)
    events: list[tuple[float, str]] = []

    def log(message: str) -> None:
        events.append((time.perf_counter(), message))

    t0 = time.perf_counter()
    run_dir = run_atlas(config, until="collect", log=log)
    wall = time.perf_counter() - t0
    manifest = json.loads((run_dir / "manifest.json").read_text())

    def when(prefix: str) -> float | None:
        return next((t - t0 for t, m in events if m.startswith(prefix)), None)

    stage_start, cluster_up, stage_done = when("[collect] running"), when("dask:"), when("[collect] done")
    return {
        "rows": manifest["n_activations"],
        "n_images": manifest["n_images"],
        "stage_s": manifest["stages"]["collect"]["seconds"],
        "stage_cached": manifest["stages"]["collect"]["cached"],
        "run_atlas_wall_s": wall,
        "before_stage_s": stage_start,  # driver: model load, layer shape, photo plan
        "cluster_start_s": None if cluster_up is None else cluster_up - stage_start,
        "after_cluster_s": None if cluster_up is None else stage_done - cluster_up,  # scatter + tasks (+ worker warm-up)
        "log": [f"{t - t0:7.2f} {m}" for t, m in events],
    }


def _warm_worker(model_json: str, source) -> dict:
    """Runs on a worker: what the first task of a fresh worker pays before its first batch."""
    t0 = time.perf_counter()
    import torch

    from atlas.config import ModelConfig
    from atlas_pipelines.engine.worker_state import model_view

    t1 = time.perf_counter()
    model_view(ModelConfig.model_validate_json(model_json))
    t2 = time.perf_counter()
    if hasattr(source, "crops"):
        source.crops()  # built-in photos: loads and downscales the photos, cached per process
    t3 = time.perf_counter()
    env = {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "OMP_NUM_THREADS")}
    return {"import_s": t1 - t0, "model_s": t2 - t1, "photos_s": t3 - t2, "torch_threads": torch.get_num_threads(), "env": env}


def _timed_shard(shard, source, model_config, collect, seed, store_path, n_classes, threads) -> dict:
    """``collect_shard_task`` with its parts timed (same library calls, same order)."""
    from atlas.collect import ActivationStore, collect_records
    from atlas_pipelines.engine.worker_state import model_view, use_threads

    t0 = time.perf_counter()
    use_threads(threads)
    view = model_view(model_config)
    records = list(source.read(shard))
    t1 = time.perf_counter()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    result = collect_records(
        view, records, collect.positions_per_image, collect.batch_size, seed, collect.attribution, n_classes,
    )  # fmt: skip
    t2 = time.perf_counter()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    report = {"shard": shard.index, "n_images": result.n_images, "n_rows": len(result.rows), "skipped": result.skipped}
    ActivationStore(store_path).write_shard(shard.index, result.rows, report)
    t3 = time.perf_counter()
    return {
        "shard": shard.index,
        "rows": len(result.rows),
        "read_s": t1 - t0,
        "collect_records_s": t2 - t1,
        "write_s": t3 - t2,
        "minor_page_faults": faults,
    }


def profile(args: dict) -> dict:
    from distributed import get_task_stream

    from atlas.collect import ActivationStore, StoreLayout
    from atlas.images import open_source
    from atlas.models import ModelView, load_model
    from atlas_pipelines.engine.executor import open_executor
    from atlas_pipelines.stages.collect import collect_shard_task

    config = _config(args)
    model = load_model(config.model)
    prep = model.preprocessing
    shape = ModelView.of(model, config.model.layer).layer_shape
    n_classes = model.num_classes
    source = open_source(config.images.source, config.images.root, config.images.max_pixels)
    if hasattr(source, "size_hint"):
        source.size_hint = prep.input_size
    run_dir = Path(config.output.dir) / config.name
    shards = source.plan(run_dir / "images", config.collect.n_images, config.collect.shard_size)
    per_image = config.collect.positions_per_image
    layout = StoreLayout(len(shards), config.collect.shard_size * per_image, shape[0], n_classes)
    out: dict = {}
    t0 = time.perf_counter()
    with open_executor(config.scheduler, log=lambda m: None) as ex:
        out["cluster_start_s"] = time.perf_counter() - t0
        client = ex.client
        t1 = time.perf_counter()
        out["worker_warmup"] = client.run(_warm_worker, config.model.model_dump_json(), source)
        out["worker_warmup_wall_s"] = time.perf_counter() - t1
        # Steady state: the real stage function on workers that already hold the model and photos.
        store = ActivationStore(run_dir / "steady")
        store.create(layout, "steady")
        t2 = time.perf_counter()
        with get_task_stream(client=client) as stream:  # what the collect stage submits: one task per shard
            futures = [
                ex.submit(
                    collect_shard_task, s, source, config.model, config.collect, config.seed, store.path, n_classes,
                    ex.threads_per_task,
                )
                for s in shards
            ]  # fmt: skip
            for future in ex.as_completed(futures):
                future.result()
        out["steady_s"] = time.perf_counter() - t2
        computes = []
        for task in stream.data:
            for ss in task["startstops"]:
                if ss["action"] == "compute":
                    computes.append({"worker": task["worker"], "s": ss["stop"] - ss["start"]})
        out["steady_task_compute_s"] = [round(c["s"], 3) for c in computes]
        out["steady_rows"] = len(store.read())
        # Where the time goes inside one task (read+crop, preprocess+model, zarr write).
        store2 = ActivationStore(run_dir / "split")
        store2.create(layout, "split")
        futures = [
            ex.submit(_timed_shard, s, source, config.model, config.collect, config.seed, store2.path, n_classes, ex.threads_per_task)
            for s in shards[:4]  # a few shards tell where a task's time goes
        ]
        out["task_split"] = [f.result() for f in futures]
    return out


if __name__ == "__main__":
    mode, raw = sys.argv[1], sys.argv[2]
    result = {"bare": bare, "pipeline": pipeline, "profile": profile}[mode](json.loads(raw))
    print(json.dumps(result, default=str))
