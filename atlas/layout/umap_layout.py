"""2-D layout of activations: PCA, then UMAP, then a box that maps it into [0, 1].

A scikit-learn estimator: ``fit`` on a sample learns the PCA, the UMAP
embedding and the [0, 1] box, and ``transform`` places any other
rows the same way, so chunks can be placed in parallel by whoever schedules
them. Being a real ``BaseEstimator`` means ``get_params``/``set_params``/
``clone`` work, so a layout can be copied unfitted (for a per-variant fit) or
inspected without knowing its constructor.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_array, check_is_fitted

from atlas.layout.graph_init import vectorised_graph_init, vectorised_start

MIN_ROWS = 4  # UMAP's spectral init and neighbour graph need a handful of points
# umap-learn finds a small fit's neighbours exactly, through scikit-learn's per-pair loop over its own distance:
# 15 of a 20 s fit on 3,944 rows (0.5 s vectorised). Below this many rows atlas hands it the same exact neighbours.
EXACT_NEIGHBOURS_BELOW = 4096
EXACT_METRICS = ("cosine", "euclidean")  # the same distance in scikit-learn's vectorised search and in umap-learn
PLACEMENTS = ("umap", "neighbours")
_index_lock = threading.Lock()


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


def exact_neighbours(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ``k`` nearest rows (itself first) and their distances, in umap-learn's ``precomputed_knn`` form."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(x).kneighbors(x)
    return indices.astype(np.int32), np.maximum(distances, 0.0).astype(np.float32)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and bool(np.isfinite(float(value)))


class AtlasLayout(TransformerMixin, BaseEstimator):
    """PCA + UMAP + a percentile box; parameters as given, checked in ``fit`` (sklearn's contract for ``clone``)."""

    # Learned in ``fit`` (absent before it, which is what ``check_is_fitted`` looks for).
    n_features_in_: int
    pca_: PCA | None
    umap_: Any
    low_: np.ndarray
    high_: np.ndarray

    def __init__(
        self,
        n_neighbors: int = 30,
        min_dist: float = 0.05,
        metric: str | Callable[..., float] = "cosine",
        pca_components: int | None = 50,
        clip_percentile: float = 1.0,
        margin: float = 0.05,
        random_state: int | None = 0,
        n_components: int = 2,
        placement: str = "umap",
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.pca_components = pca_components
        self.clip_percentile = clip_percentile
        self.margin = margin
        self.random_state = random_state
        self.n_components = n_components  # 1 for the y axis of a two-class comparison
        self.placement = placement  # how ``transform`` places new rows: see ``place``

    def check_params(self) -> None:
        """Every parameter, with a message naming it; ``set_params`` may have put anything there."""
        if not _is_int(self.n_neighbors) or self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be an integer >= 2, got {self.n_neighbors!r}")
        if not _is_real(self.min_dist) or self.min_dist < 0:
            raise ValueError(f"min_dist must be a finite number >= 0, got {self.min_dist!r}")
        if not (isinstance(self.metric, str) and self.metric) and not callable(self.metric):
            raise ValueError(f"metric must be a metric name or a callable, got {self.metric!r}")
        if self.pca_components is not None and (not _is_int(self.pca_components) or self.pca_components < 1):
            raise ValueError(f"pca_components must be None or an integer >= 1, got {self.pca_components!r}")
        if not _is_real(self.clip_percentile) or not 0 <= self.clip_percentile < 50:
            raise ValueError(f"clip_percentile must be in [0, 50), got {self.clip_percentile!r}")
        if not _is_real(self.margin) or not 0 <= self.margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {self.margin!r}")
        if not _is_int(self.n_components) or self.n_components not in (1, 2):
            raise ValueError(f"n_components must be 1 or 2, got {self.n_components!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.random_state is not None and not _is_int(self.random_state):
            raise ValueError(f"random_state must be None or an integer seed, got {self.random_state!r}")

    def _rows(self, X: np.ndarray) -> np.ndarray:
        """[N, C] finite float32 rows (2-D so a single vector fails loudly rather than being read as C rows)."""
        return check_array(X, dtype=np.float32, ensure_min_samples=0)

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        return x if self.pca_ is None else self.pca_.transform(x).astype(np.float32)

    def fit(self, X: np.ndarray, y: None = None) -> AtlasLayout:
        """Learn PCA, UMAP and the [0, 1] box from ``X`` ([N, C] activations, N >= 4)."""
        self.check_params()
        x = self._rows(X)
        if len(x) < MIN_ROWS:
            raise ValueError(f"a layout needs at least {MIN_ROWS} activations, got {len(x)}")
        import umap  # numba JIT on import: keep it out of module import time

        self.n_features_in_ = x.shape[1]
        self.pca_ = fit_pca(x, self.pca_components, self.random_state)
        reduced = self._reduce(x)
        k = min(self.n_neighbors, len(x) - 1)
        exact: dict[str, Any] = {}
        if len(x) < EXACT_NEIGHBOURS_BELOW and self.metric in EXACT_METRICS:
            indices, distances = exact_neighbours(reduced, k, str(self.metric))
            exact = {"precomputed_knn": (indices, distances, None), "force_approximation_algorithm": True}
        with warnings.catch_warnings():
            # umap-learn warns that a precomputed graph without an index cannot place new rows: here it can.
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
            self.umap_ = umap.UMAP(
                n_neighbors=k,
                n_components=self.n_components,
                min_dist=self.min_dist,
                metric=self.metric,
                random_state=self.random_state,
                init="spectral" if len(x) > self.n_neighbors + 2 else "random",
                n_jobs=1 if self.random_state is not None else -1,  # a seed makes umap-learn single-threaded anyway
                **exact,
            ).fit(reduced)
        self.low_, self.high_ = percentile_box(self.umap_.embedding_, self.clip_percentile, self.margin)
        return self

    def fit_transform(self, X: np.ndarray, y: None = None, **fit_params: Any) -> np.ndarray:
        """The fitted rows' own coordinates: UMAP's ``transform`` would re-place them, slightly elsewhere."""
        return self.fit(X, y, **fit_params).fitted_coords_

    def to_unit_box(self, embedding: np.ndarray) -> np.ndarray:
        """Raw UMAP coordinates -> [0, 1] through the box learned in ``fit`` (outliers clipped to the edge)."""
        check_is_fitted(self, ("low_", "high_"))
        scaled = (np.asarray(embedding, dtype=np.float64) - self.low_) / (self.high_ - self.low_)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

    @property
    def fitted_coords_(self) -> np.ndarray:
        """[0, 1] coordinates of the rows ``fit`` saw, in order."""
        check_is_fitted(self, "umap_")
        return self.to_unit_box(self.umap_.embedding_)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Place new rows ([M, C], the same C as in ``fit``) in the fitted layout, in [0, 1]."""
        check_is_fitted(self, "umap_")
        x = self._rows(X)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features per row (as in fit), got {x.shape[1]}")
        if len(x) == 0:
            return np.empty((0, self.n_components), dtype=np.float32)
        return self.to_unit_box(self.place(self._reduce(x)))

    def _ensure_search_index(self) -> None:
        """A fit on exact neighbours has no search index; the first placement of new rows builds the one umap-learn's
        own fit would have (its ``nearest_neighbors``: pynndescent with its settings and its own search trees; an
        index seeded with the exact graph lacks them, and on disconnected clusters its searches stay in the wrong
        one). Built only when needed, since its compilation costs more than a small fit; under a lock, since a
        worker's tasks share one fitted layout."""
        umap_ = self.umap_
        if getattr(umap_, "_knn_search_index", True) is not None:
            return
        with _index_lock:
            if umap_._knn_search_index is not None:
                return
            from sklearn.utils import check_random_state
            from umap.umap_ import nearest_neighbors

            _, _, umap_._knn_search_index = nearest_neighbors(
                umap_._raw_data, umap_._n_neighbors, self.metric, umap_._metric_kwds, umap_.angular_rp_forest,
                check_random_state(self.random_state), umap_.low_memory, use_pynndescent=True, n_jobs=umap_.n_jobs,
            )  # fmt: skip

    def place(self, reduced: np.ndarray) -> np.ndarray:
        """Raw UMAP coordinates of new (reduced) rows.

        ``umap``: umap-learn's ``transform``, which starts each row at the weighted mean of its fitted neighbours and
        runs 30 epochs of layout against the fitted map (its start computed without a Python loop over the rows:
        atlas.layout.graph_init). ``neighbours``: that start alone, 5 times faster again, but without the epochs
        placed rows bunch at their neighbours' mean (trustworthiness 0.92 against 0.98 on clustered 192-channel rows;
        the README's "At the article's scale" has the figures).
        """
        self._ensure_search_index()
        if self.placement == "umap":
            with vectorised_start():
                return np.asarray(self.umap_.transform(reduced))
        searcher = copy.copy(self.umap_)  # a shallow copy: the fitted model is shared by the tasks of a worker
        searcher.transform_mode = "graph"  # umap-learn's own neighbour search and membership strengths, no epochs
        start = vectorised_graph_init(searcher.transform(reduced), self.umap_.embedding_)
        lonely = np.isnan(start).any(axis=1)
        if lonely.any():  # no fitted neighbour within UMAP's disconnection distance: its own transform decides
            start[lonely] = self.umap_.transform(reduced[lonely])
        return start
