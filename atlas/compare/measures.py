"""Measurements of one variant's atlas layer: sparsity, statistics, layout quality, class purity."""

from __future__ import annotations

from typing import Any

import numpy as np

from atlas.grid.grid import cell_index


def hoyer_sparsity(activation: np.ndarray) -> float:
    """Mean Hoyer sparsity of the rows: 0 when every channel is equal, 1 when one channel (or none) holds everything."""
    x = np.abs(np.asarray(activation, dtype=np.float64))
    n = x.shape[1]
    l1, l2 = x.sum(axis=1), np.sqrt((x * x).sum(axis=1))
    ratio = np.where(l2 > 0, l1 / np.maximum(l2, 1e-12), 1.0)  # an all-zero row is as sparse as a row can be
    return float(np.mean((np.sqrt(n) - ratio) / (np.sqrt(n) - 1))) if n > 1 else 0.0


def layer_statistics(activation: np.ndarray) -> dict[str, float]:
    x = np.asarray(activation, dtype=np.float64)
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "inactive_fraction": float((x <= 0).mean()),  # zero for ReLU's off state, negative for the smooth ones
        "hoyer_sparsity": hoyer_sparsity(x),
    }


def trustworthiness_of(activation: np.ndarray, coords: np.ndarray, sample: int, seed: int, k: int = 10) -> float:
    """scikit-learn's trustworthiness (cosine in activation space) of the layout on a seeded sample."""
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(activation), size=min(sample, len(activation)), replace=False))
    return float(trustworthiness(activation[pick], coords[pick], n_neighbors=k, metric="cosine"))


def class_purity(coords: np.ndarray, labels: np.ndarray, size: int, min_count: int) -> float | None:
    """Count-weighted share of each kept cell's rows that carry the cell's majority label; None without labels."""
    known = labels >= 0
    if not known.any():
        return None
    i, j = cell_index(coords[known], size)
    cell = j * size + i
    y = labels[known].astype(np.int64)
    table = np.zeros((size * size, int(y.max()) + 1), dtype=np.int64)
    np.add.at(table, (cell, y), 1)
    counts = table.sum(axis=1)
    kept = counts >= min_count
    return float(table[kept].max(axis=1).sum() / max(1, counts[kept].sum()))


def activation_histogram(activation: np.ndarray, bins: int = 60) -> dict[str, Any]:
    """A histogram of every value of the layer (1st-99.9th percentile range), for the comparison plot."""
    x = np.asarray(activation, dtype=np.float64).ravel()
    low, high = np.percentile(x, [0.1, 99.9])
    if high <= low:
        high = low + 1e-6
    counts, edges = np.histogram(np.clip(x, low, high), bins=bins, range=(low, high), density=True)
    return {"counts": counts.tolist(), "edges": edges.tolist()}
