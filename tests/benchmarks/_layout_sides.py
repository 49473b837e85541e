"""The sides of the layout benchmark, each in a fresh process: ``python _layout_sides.py MODE JSON``.

- ``collect``: real activations for the benchmark: ``run_atlas(until="collect")``
  on ``builtin:photos`` with ``collect.attribution=false`` and
  ``collect.positions_per_image=all``; the first ``n_rows`` rows go to ``.npy``.
- ``plain``: ``umap.UMAP(n_neighbors=30, min_dist=0.05, metric="cosine",
  random_state=0).fit_transform`` on every row; the clock starts before
  ``import umap`` so numba's JIT (paid once per fresh process) is inside.
- ``ours``: ``atlas_pipelines.stages.layout.compute_layout`` with a fresh default local
  cluster from ``atlas_pipelines.engine.executor.open_executor`` (started lazily, as
  ``run_atlas`` does); the clock includes cluster start and each worker's JIT.
  The rows are first written to an activation store (untimed), which the
  workers read, as in a run.

Each prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def collect(args: dict) -> dict:
    import numpy as np

    from atlas.collect import ActivationStore
    from atlas.config import load_config
    from atlas_pipelines.commands.run import run_atlas

    config = load_config(
        REPO / "configs" / "default.yaml",
        [
            f"output.dir={args['out']}",
            "output.name=layout-activations",
            "images.source=builtin:photos",
            f"collect.n_images={args['n_images']}",
            "collect.positions_per_image=all",
            "collect.attribution=false",
            "scheduler.address=local",
        ],
    )
    t0 = time.perf_counter()
    run_dir = run_atlas(config, until="collect", log=lambda m: None)
    seconds = time.perf_counter() - t0
    rows = ActivationStore(run_dir / "activations").read()
    if len(rows) < args["n_rows"]:
        raise SystemExit(f"only {len(rows)} rows collected; need {args['n_rows']}")
    activation = np.ascontiguousarray(rows.activation[: args["n_rows"]], dtype=np.float32)
    np.save(args["npy"], activation)
    return {"rows_collected": len(rows), "rows_kept": len(activation), "channels": activation.shape[1], "seconds": seconds}


def plain(args: dict) -> dict:
    import numpy as np

    x = np.load(args["npy"])
    t0 = time.perf_counter()
    import umap

    t1 = time.perf_counter()
    embedding = umap.UMAP(n_neighbors=30, min_dist=0.05, metric="cosine", random_state=0).fit_transform(x)
    t2 = time.perf_counter()
    np.save(args["coords"], embedding.astype(np.float32))
    return {"seconds": t2 - t0, "import_s": t1 - t0, "fit_transform_s": t2 - t1, "rows": len(x)}


def ours(args: dict) -> dict:
    import numpy as np

    from atlas.config import LayoutConfig, SchedulerConfig
    from atlas_pipelines.engine.executor import open_executor
    from atlas_pipelines.stages.layout import compute_layout

    x = np.load(args["npy"])
    config = LayoutConfig(**args.get("layout", {}))
    store = store_of(x, Path(args["coords"]).with_suffix(".store"))  # the stage reads its rows from the store
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    with open_executor(SchedulerConfig(address="local"), log=lambda m: None) as ex:
        marks["cluster_start_s"] = time.perf_counter() - t0
        timed = _Marking(ex, marks, t0)
        coords, _ = compute_layout(lambda: timed, store, config, seed=0)
        marks["seconds"] = time.perf_counter() - t0
    if "first_scatter_at_s" in marks:
        marks["fit_s"] = marks["first_scatter_at_s"] - marks["first_submit_at_s"]  # the fit task, incl. its JIT
        marks["place_s"] = marks["seconds"] - marks["first_scatter_at_s"]
    marks["with_cluster_close_s"] = time.perf_counter() - t0
    np.save(args["coords"], coords)
    return {**marks, "rows": len(x), "fit_sample": config.fit_sample, "chunk_size": config.chunk_size}


def store_of(x, path: Path, rows_per_shard: int = 4096):
    """An activation store holding ``x`` (no attribution), as collect would leave it; not timed."""
    import numpy as np

    from atlas.collect import ActivationStore, Rows, StoreLayout

    store = ActivationStore(path)
    shards = -(-len(x) // rows_per_shard)
    store.create(StoreLayout(shards, rows_per_shard, x.shape[1], 0), key="benchmark")
    for shard in range(shards):
        part = x[shard * rows_per_shard : (shard + 1) * rows_per_shard]
        n = len(part)
        ids = np.arange(shard * rows_per_shard, shard * rows_per_shard + n)
        zeros = np.zeros(n, np.int32)
        store.write_shard(shard, Rows(part, np.zeros((n, 0), np.float32), ids, zeros, zeros, zeros - 1), {"n_rows": n})
    return store


class _Marking:
    """Passes calls through to the real executor and notes when the stage first submits and first scatters."""

    def __init__(self, ex, marks: dict, t0: float) -> None:
        self._ex, self._marks, self._t0 = ex, marks, t0
        self.threads_per_task = ex.threads_per_task

    def submit(self, fn, *args):
        self._marks.setdefault("first_submit_at_s", time.perf_counter() - self._t0)
        return self._ex.submit(fn, *args)

    def scatter(self, value):
        self._marks.setdefault("first_scatter_at_s", time.perf_counter() - self._t0)
        return self._ex.scatter(value)

    def as_completed(self, futures):
        return self._ex.as_completed(futures)


if __name__ == "__main__":
    mode, raw = sys.argv[1], sys.argv[2]
    result = {"collect": collect, "plain": plain, "ours": ours}[mode](json.loads(raw))
    print(json.dumps(result, default=str))
