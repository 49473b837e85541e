"""Layout stage: fit PCA + UMAP on a sample in a worker, place the other rows in parallel chunks, each task reading its own rows."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from atlas.bundle import COORDS, WHITENING
from atlas.collect import ActivationStore
from atlas.config import LayoutConfig
from atlas.errors import AtlasError
from atlas.layout import AtlasLayout, Whitening
from atlas.storage import Location
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.executor import Executor
from atlas_pipelines.engine.stage import Report, Stage, StageCall, file_fingerprint
from atlas_pipelines.engine.worker_state import use_threads


def layout_estimator(config: LayoutConfig, seed: int | None) -> AtlasLayout:
    """The one place a run's ``layout`` settings become an estimator, so no caller can drop one."""
    return AtlasLayout(
        n_neighbors=config.n_neighbors,
        min_dist=config.min_dist,
        metric=config.metric,
        pca_components=config.pca_components,
        clip_percentile=config.clip_percentile,
        margin=config.margin,
        random_state=seed,
        placement=config.placement,
    )


def whitening_estimator(config: LayoutConfig) -> Whitening:
    """The one place ``layout.whitening_eps`` becomes an estimator."""
    return Whitening(eps=config.whitening_eps)


def fit_layout_task(store_path: Location, sample: np.ndarray, layout: AtlasLayout, threads: int) -> bytes:
    """Runs on a worker, which reads the fit sample from the store itself (the driver never holds the rows).

    Returns the fitted layout already pickled, before any ``transform`` has touched it: Dask pickles a task's
    result when another worker asks for it, and pynndescent's index, once searched, can fail to pickle; Dask
    then leaves the dependent task waiting for ever (seen on the built-in photos at every position).
    """
    use_threads(threads)
    activation = ActivationStore(store_path).take(sample, ("activation",))["activation"]
    return pickle.dumps(layout.fit(activation), protocol=pickle.HIGHEST_PROTOCOL)


@lru_cache(maxsize=1)
def fitted_layout(blob: bytes) -> AtlasLayout:
    """The fitted layout, unpickled once per worker process (every placement task there gets the same bytes)."""
    layout: AtlasLayout = pickle.loads(blob)
    return layout


def fitted_coords_task(blob: bytes) -> np.ndarray:
    """The fit sample's own coordinates: all the driver needs of the fitted layout."""
    return fitted_layout(blob).fitted_coords_


@dataclass
class Placed:
    """What one placement task returns: coordinates of its rows outside the fit sample, and its share of the moment."""

    rows: np.ndarray  # int64 indices among the N
    coords: np.ndarray  # float32 [len(rows), 2]
    moment: np.ndarray  # float64 [C, C]: sum of x x^T over every row of its shards (the whitening's input)
    count: int


def place_shards_task(blob: bytes | None, store_path: Location, shards: list[int], fitted: np.ndarray, threads: int) -> Placed:
    """Runs on a worker: reads its shards from the store, places the rows not in ``fitted``, sums their moment."""
    use_threads(threads)
    layout = fitted_layout(blob) if blob is not None else None
    store = ActivationStore(store_path)
    rows, coords, moment, count = [], [], None, 0
    for chunk in store.chunks(("activation",), shards):
        x = chunk.arrays["activation"]
        product = x.T.astype(np.float64) @ x.astype(np.float64)
        moment = product if moment is None else moment + product
        count += len(x)
        if layout is not None:
            index = np.arange(chunk.start, chunk.start + len(x))
            new = ~np.isin(index, fitted, assume_unique=True)
            rows.append(index[new])
            coords.append(layout.transform(x[new]))
    channels = store.layout().channels
    return Placed(
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        np.concatenate(coords) if coords else np.zeros((0, 2), np.float32),
        moment if moment is not None else np.zeros((channels, channels)),
        count,
    )


def shard_groups(starts: np.ndarray, rows_per_task: int) -> list[list[int]]:
    """Consecutive shards holding about ``rows_per_task`` rows each: one placement task apiece."""
    groups: list[list[int]] = [[]]
    held = 0
    for shard in range(len(starts) - 1):
        n = int(starts[shard + 1] - starts[shard])
        if not n:
            continue
        if groups[-1] and held + n > rows_per_task:
            groups.append([])
            held = 0
        groups[-1].append(shard)
        held += n
    return [g for g in groups if g]


def compute_layout(
    executor: Callable[[], Executor], store: ActivationStore, config: LayoutConfig, seed: int, place: bool = True
) -> tuple[np.ndarray | None, Whitening]:
    """Coordinates in [0, 1] for every row (``place``: else None) and the whitening, with workers reading the store.

    The fit sample is drawn on the driver (indices only) and read by the worker that fits; every other row is
    placed by tasks that each read their own shards, and those tasks also sum the second moment for the whitening.
    """
    starts = store.shard_starts()
    n = int(starts[-1])
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, config.fit_sample), replace=False))
    ex = executor()
    coords = np.empty((n, 2), dtype=np.float32) if place else None
    fitted: Any = None  # a future of the pickled fitted layout: umap stays on the workers, never in this process
    if coords is not None:
        fitted = ex.submit(fit_layout_task, store.path, sample, layout_estimator(config, seed), ex.threads_per_task)
        coords[sample] = ex.submit(fitted_coords_task, fitted).result()
    groups = shard_groups(starts, config.chunk_size)
    futures = []
    for shards in groups:
        lo, hi = starts[shards[0]], starts[shards[-1] + 1]
        mine = sample[(sample >= lo) & (sample < hi)]
        futures.append(ex.submit(place_shards_task, fitted, store.path, shards, mine, ex.threads_per_task))
    moment, count = None, 0
    for future in tqdm(ex.as_completed(futures), total=len(futures), desc="layout", unit="chunk"):
        placed: Placed = future.result()
        if coords is not None:
            coords[placed.rows] = placed.coords
        moment = placed.moment if moment is None else moment + placed.moment
        count += placed.count
    assert moment is not None and count == n
    return coords, whitening_estimator(config).fit_moment(moment, count)


# --- the stage ------------------------------------------------------------------------------------


def layout_settings(run: RunInputs) -> Any:
    given = run.config.layout.coords
    if given is not None and not Path(given).is_file():
        raise AtlasError(f"layout.coords '{given}': no such file; give a .npy of [N, 2] coordinates or remove the key")
    return [run.config.layout.model_dump(mode="json"), run.config.seed, file_fingerprint(given) if given else None]


def layout(call: StageCall) -> Report:
    """Coordinates for every row (UMAP, or ``layout.coords`` made elsewhere) and the renderer's whitening."""
    run = call.run
    config = run.config.layout
    store = run.bundle.store()
    given = given_coords(config.coords, store.count()) if config.coords is not None else None
    placed, whitening = compute_layout(run.executor, store, config, run.config.seed, place=given is None)
    coords = given if given is not None else placed
    assert coords is not None
    run.bundle.write_coords(coords)
    run.bundle.write_whitening(whitening.matrix_)
    return {"coords": COORDS, "whitening": WHITENING}


def given_coords(path: Path, n_rows: int) -> np.ndarray:
    """``layout.coords``: a layout made elsewhere (``atlas compare`` aligns several), checked against the rows."""
    try:
        coords = np.load(path)
    except (OSError, ValueError) as err:
        raise AtlasError(f"layout.coords '{path}': cannot read it as .npy ({err})") from None
    if coords.shape != (n_rows, 2) or not np.isfinite(coords).all() or coords.min() < 0 or coords.max() > 1:
        raise AtlasError(f"layout.coords '{path}': expected finite [{n_rows}, 2] values in [0, 1] (one per row), got shape {coords.shape}")
    return coords.astype(np.float32)


STAGE = Stage("layout", reads=("collect",), settings=layout_settings, work=layout)
