"""The two axes of a two-class comparison: attribution difference across, a 1-D layout down."""

from __future__ import annotations

from typing import Literal

import numpy as np

from atlas.layout.umap_layout import AtlasLayout, fit_pca, percentile_box

LineMethod = Literal["umap", "tsne"]


def difference_axis(attribution_a: np.ndarray, attribution_b: np.ndarray, percentile: float = 99.0) -> tuple[np.ndarray, float]:
    """x = (a - b) / (the ``percentile``-th percentile of |a - b|), clipped to [-1, 1]; and that scale.

    Positive x favours class a. The scale keeps a few extreme rows from squeezing all others into the middle.
    """
    difference = attribution_a.astype(np.float64) - attribution_b.astype(np.float64)
    scale = float(np.percentile(np.abs(difference), percentile)) if len(difference) else 0.0
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.abs(difference).max()) if len(difference) and np.abs(difference).max() > 0 else 1.0
    return np.clip(difference / scale, -1.0, 1.0).astype(np.float32), scale


def line_layout(
    activation: np.ndarray,
    method: LineMethod = "umap",
    seed: int = 0,
    n_neighbors: int = 20,
    min_dist: float = 0.02,
    metric: str = "cosine",
    pca_components: int | None = 50,
) -> np.ndarray:
    """Each row's place on a line, in [0, 1] (1st..99th percentile plus a margin): similar activations sit close."""
    x = np.asarray(activation, dtype=np.float32)
    if method == "umap":
        layout = AtlasLayout(n_neighbors, min_dist, metric, pca_components, random_state=seed, n_components=1)
        return layout.fit_transform(x)[:, 0]
    from sklearn.manifold import TSNE

    pca = fit_pca(x, pca_components, seed)
    reduced = pca.transform(x) if pca is not None else x
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    embedding = TSNE(1, perplexity=perplexity, metric=metric, init="pca", random_state=seed).fit_transform(reduced)
    low, high = percentile_box(embedding, 1.0, 0.05)
    return np.clip((embedding[:, 0] - low[0]) / (high[0] - low[0]), 0.0, 1.0).astype(np.float32)
