"""Layout stage: fit PCA + UMAP on a sample in a worker, place the other rows in parallel chunks."""

from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm import tqdm

from atlas.config import LayoutConfig
from atlas.layout import AtlasLayout
from pipelines.executor import Executor
from pipelines.worker_state import use_threads


def fit_layout_task(sample: np.ndarray, config: LayoutConfig, seed: int, threads: int) -> AtlasLayout:
    use_threads(threads)
    return AtlasLayout(
        n_neighbors=config.n_neighbors,
        min_dist=config.min_dist,
        metric=config.metric,
        pca_components=config.pca_components,
        clip_percentile=config.clip_percentile,
        margin=config.margin,
        random_state=seed,
    ).fit(sample)


def place_chunk_task(layout: AtlasLayout, chunk: np.ndarray, threads: int) -> np.ndarray:
    use_threads(threads)
    return layout.transform(chunk)


def compute_layout(executor: Callable[[], Executor], activation: np.ndarray, config: LayoutConfig, seed: int) -> np.ndarray:
    """Coordinates in [0, 1] for every row; rows outside the fit sample are placed by ``transform``."""
    n = len(activation)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, config.fit_sample), replace=False))
    ex = executor()
    fitted: AtlasLayout = ex.submit(fit_layout_task, activation[sample], config, seed, ex.threads_per_task).result()
    coords = np.empty((n, 2), dtype=np.float32)
    coords[sample] = fitted.fitted_coords_
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    if len(rest):
        fitted_ref = ex.scatter(fitted)
        pieces = [rest[i : i + config.chunk_size] for i in range(0, len(rest), config.chunk_size)]
        futures = {ex.submit(place_chunk_task, fitted_ref, activation[p], ex.threads_per_task): p for p in pieces}
        for future in tqdm(ex.as_completed(list(futures)), total=len(futures), desc="layout", unit="chunk"):
            coords[futures[future]] = future.result()
    return coords
