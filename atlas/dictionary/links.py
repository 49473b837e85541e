"""The links between a dictionary's features and the cells of each grid, from one streamed pass over the store.

Per kept cell, each feature's mean activation over the cell's rows (the documented forward, numpy) and the share of
those rows where it fires; the viewer lights up one feature's cells from the first and lists a cell's strongest
features from both. Memory: two float64 [cells, F] sums per grid plus one shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from atlas.collect.store import RowChunk
from atlas.dictionary.weights import DictionaryWeights, encode
from atlas.grid.streaming import membership


@dataclass(frozen=True)
class CellFeatures:
    """One grid's links: float32 [cells, F] ``mean`` (mean activation over the cell's rows, zeros counted) and
    ``active`` (share of the cell's rows where the feature fires), in the grid's cell order."""

    mean: np.ndarray
    active: np.ndarray

    def top(self, count: int) -> list[list[dict[str, float | int]]]:
        """Per cell, its ``count`` features of highest mean activation (highest first, ties to the lower index),
        leaving out features that never fire there."""
        order = np.argsort(-self.mean, axis=1, kind="stable")
        return [
            [
                {"feature": int(f), "activation": round(float(mean[f]), 5), "active": round(float(active[f]), 5)}
                for f in ranked[:count]
                if mean[f] > 0
            ]
            for ranked, mean, active in zip(order, self.mean, self.active, strict=True)
        ]


def cell_features(
    weights: DictionaryWeights, chunks: Iterable[RowChunk], row_cells: Sequence[np.ndarray], n_cells: Sequence[int]
) -> list[CellFeatures]:
    """One :class:`CellFeatures` per grid; ``row_cells[g]``: each store row's position in grid g's cells (-1: a dropped
    cell); ``chunks`` carry the ``activation`` array."""
    features = weights.features
    sums = [np.zeros((n, features)) for n in n_cells]
    fired = [np.zeros((n, features)) for n in n_cells]
    counts = [np.zeros(n, np.int64) for n in n_cells]
    for chunk in chunks:
        z = encode(weights, chunk.arrays["activation"]).astype(np.float64)
        on = (z > 0).astype(np.float64)
        for cells, total, active, count in zip(row_cells, sums, fired, counts, strict=True):
            touched = membership(cells[chunk.rows])
            if touched is None:
                continue
            ids, members = touched
            total[ids] += members @ z
            active[ids] += members @ on
            count[ids] += np.asarray(members.sum(axis=1)).ravel().astype(np.int64)
    return [
        CellFeatures(
            (total / np.maximum(count, 1)[:, None]).astype(np.float32), (active / np.maximum(count, 1)[:, None]).astype(np.float32)
        )
        for total, active, count in zip(sums, fired, counts, strict=True)
    ]
