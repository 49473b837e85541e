"""2-D layout of activations: PCA, then UMAP, then normalisation to [0, 1].

An estimator in the scikit-learn style: ``fit`` on a sample learns the PCA, the
UMAP embedding and the normalisation bounds, and ``transform`` places any other
rows the same way, so chunks can be placed in parallel by whoever schedules them.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA


def fit_pca(x: np.ndarray, components: int | None, seed: int | None) -> PCA | None:
    """PCA to ``components`` dimensions, or None when that would not reduce anything."""
    n = min(components or x.shape[1], x.shape[1], len(x))
    # PCA centres the rows before projecting; on these activations that changed cosine neighbours by < 1%.
    return PCA(n, random_state=seed).fit(x) if n < x.shape[1] else None


def percentile_box(embedding: np.ndarray, clip_percentile: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Low and high corners that map the embedding's clip..100-clip percentile range, plus a margin, to [0, 1]."""
    embedding = np.asarray(embedding, dtype=np.float64)
    low = np.percentile(embedding, clip_percentile, axis=0)
    high = np.percentile(embedding, 100.0 - clip_percentile, axis=0)
    span = np.maximum(high - low, 1e-9)
    return low - margin * span, high + margin * span


class AtlasLayout:
    def __init__(
        self,
        n_neighbors: int = 30,
        min_dist: float = 0.05,
        metric: str = "cosine",
        pca_components: int | None = 50,
        clip_percentile: float = 1.0,
        margin: float = 0.05,
        random_state: int | None = 0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.pca_components = pca_components
        self.clip_percentile = clip_percentile
        self.margin = margin
        self.random_state = random_state

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        return x if self.pca_ is None else self.pca_.transform(x).astype(np.float32)

    def fit(self, activations: np.ndarray) -> "AtlasLayout":
        import umap  # numba JIT on import: keep it out of module import time

        x = np.asarray(activations, dtype=np.float32)
        if len(x) < 4:
            raise ValueError(f"a layout needs at least 4 activations, got {len(x)}")
        self.pca_ = fit_pca(x, self.pca_components, self.random_state)
        reduced = self._reduce(x)
        self.umap_ = umap.UMAP(
            n_neighbors=min(self.n_neighbors, len(x) - 1),
            min_dist=self.min_dist,
            metric=self.metric,
            random_state=self.random_state,
            init="spectral" if len(x) > self.n_neighbors + 2 else "random",
            n_jobs=1 if self.random_state is not None else -1,  # a seed makes umap-learn single-threaded anyway
        ).fit(reduced)
        self.low_, self.high_ = percentile_box(self.umap_.embedding_, self.clip_percentile, self.margin)
        return self

    def normalise(self, embedding: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(embedding, dtype=np.float64) - self.low_) / (self.high_ - self.low_)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

    @property
    def fitted_coords_(self) -> np.ndarray:
        """Normalised coordinates of the rows ``fit`` saw, in order."""
        return self.normalise(self.umap_.embedding_)

    def transform(self, activations: np.ndarray) -> np.ndarray:
        x = np.asarray(activations, dtype=np.float32)
        return self.normalise(self.umap_.transform(self._reduce(x)))
