"""The second streamed pass over every row with the saved arrays: the dictionary's quality and each feature's record.

Computed with the documented numpy forward (atlas.dictionary.weights), so the figures are those anyone recomputes
from the saved files. Memory is one shard plus [F, K] attribution sums and [F, examples] top rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from atlas.collect.store import RowChunk
from atlas.dictionary.weights import DictionaryWeights, encode, reconstruct

FEATURE_FIELDS = ("activation", "attribution", "image_id", "y", "x")  # the store's arrays this pass reads


@dataclass(frozen=True)
class FeatureStats:
    """Quality over all rows and, per feature, its density, activations, top rows and activation-weighted attribution."""

    rows: int
    variance_explained: float  # 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2 over all rows
    mean_l0: float  # mean number of active features per row
    density: np.ndarray  # float64 [F]: share of rows where the feature is active
    mean_activation: np.ndarray  # float64 [F]: mean over the rows where it is active (0 where never)
    max_activation: np.ndarray  # float64 [F]
    top_rows: np.ndarray  # int64 [F, E]: rows of highest activation first, -1 past the rows where it is active
    top_values: np.ndarray  # float32 [F, E]
    attribution: np.ndarray  # float64 [F, K]: mean attribution of the rows weighted by the feature's activation

    @property
    def dead(self) -> int:
        """Features active on no row at all."""
        return int((self.density == 0).sum())


def measure_features(weights: DictionaryWeights, chunks: Iterable[RowChunk], n_classes: int, examples: int) -> FeatureStats:
    """Stream ``chunks`` (each with the FEATURE_FIELDS arrays; ``attribution`` may be [n, 0]) through the forward."""
    features = weights.features
    count, active, total, peak = 0, np.zeros(features, np.int64), np.zeros(features), np.zeros(features)
    weighted = np.zeros((features, n_classes))
    row_sum, row_squares, error = None, 0.0, 0.0
    top_rows = np.full((features, examples), -1, np.int64)
    top_values = np.full((features, examples), -np.inf, np.float32)
    for chunk in chunks:
        x = chunk.arrays["activation"].astype(np.float32)
        z = encode(weights, x)
        x64 = x.astype(np.float64)
        error += float(((x64 - reconstruct(weights, z)) ** 2).sum())
        row_sum = x64.sum(axis=0) + (0.0 if row_sum is None else row_sum)
        row_squares += float((x64**2).sum())
        count += len(x)
        fired = z > 0
        active += fired.sum(axis=0)
        total += z.sum(axis=0)
        peak = np.maximum(peak, z.max(axis=0))
        if n_classes:
            weighted += z.T.astype(np.float64) @ chunk.arrays["attribution"].astype(np.float64)
        top_rows, top_values = _merge_top(top_rows, top_values, z, chunk.start, examples)
    if count == 0 or row_sum is None:
        raise ValueError("no rows to measure the dictionary on")
    spread = row_squares - float((row_sum**2).sum()) / count  # sum |x - mean|^2
    weight = np.maximum(total, 1e-12)[:, None]
    top_rows[~np.isfinite(top_values) | (top_values <= 0)] = -1
    return FeatureStats(
        rows=count,
        variance_explained=1.0 - error / max(spread, 1e-12),
        mean_l0=float(active.sum() / count),
        density=active / count,
        mean_activation=np.where(active > 0, total / np.maximum(active, 1), 0.0),
        max_activation=peak,
        top_rows=top_rows,
        top_values=np.where(top_rows >= 0, top_values, 0.0).astype(np.float32),
        attribution=weighted / weight,
    )


def _merge_top(rows: np.ndarray, values: np.ndarray, z: np.ndarray, start: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's ``keep`` highest activations so far, with this chunk's rows; ties keep the earlier row."""
    if keep == 0:
        return rows, values
    by_feature = z.T.astype(np.float32)  # [F, n]
    local = np.broadcast_to(np.arange(len(z), dtype=np.int64), by_feature.shape)
    if len(z) > keep:  # only the chunk's own top rows can enter
        local = np.argpartition(-by_feature, keep - 1, axis=1)[:, :keep]
    all_values = np.concatenate([values, np.take_along_axis(by_feature, local, axis=1)], axis=1)
    all_rows = np.concatenate([rows, local + start], axis=1)
    order = _order(all_values, all_rows)[:, :keep]
    return np.take_along_axis(all_rows, order, axis=1), np.take_along_axis(all_values, order, axis=1)


def _order(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per feature: highest value first, then the lower row (rows of -1, not yet filled, have -inf values)."""
    return np.stack([np.lexsort((r, -v)) for v, r in zip(values, rows, strict=True)])
