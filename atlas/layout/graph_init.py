"""umap-learn's starting point for new rows, vectorised: the same numbers, without a Python loop over the rows.

``UMAP.transform`` starts each new row at the weighted mean of its fitted neighbours (``init_graph_transform``),
then runs its layout epochs. In umap-learn 0.5.12 that start is a Python loop that slices the sparse graph once per
row: two thirds of ``transform``'s time on 30,000 rows of 192 channels (4.4 of 6.5 s; the neighbour search took
0.6 s and the 30 epochs 1.3 s), and what stopped a 10-million-row layout. :func:`vectorised_graph_init` computes
the same result in array operations, and :func:`vectorised_start` lends it to umap-learn while a block runs; the
neighbour search, the epochs and every other part of ``transform`` stay umap-learn's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse


def vectorised_graph_init(graph: scipy.sparse.csr_matrix, embedding: np.ndarray) -> np.ndarray:
    """``umap.umap_.init_graph_transform``'s result: per row of ``graph`` (new rows x fitted rows, membership
    strengths), the strength-weighted mean of the fitted rows' ``embedding``; the fitted row's own place where a
    strength is exactly 1 (the new row is that row; the first such, as umap-learn takes it); NaN with no neighbour."""
    graph = scipy.sparse.csr_matrix(graph)
    fitted = np.asarray(embedding, dtype=np.float64)
    sums = np.asarray(graph.sum(axis=1), dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.asarray(graph @ fitted) / sums[:, None]
    result[np.diff(graph.indptr) == 0] = np.nan
    ones = np.flatnonzero(graph.data == 1)
    if len(ones):
        rows_of_ones = np.searchsorted(graph.indptr, ones, side="right") - 1
        rows, first = np.unique(rows_of_ones, return_index=True)
        result[rows] = fitted[graph.indices[ones[first]]]
    return result.astype(np.float32)


_lending = threading.Lock()
_borrowers = 0
_umaps_own: Any = None


@contextmanager
def vectorised_start() -> Iterator[None]:
    """umap-learn's ``transform`` starts rows at :func:`vectorised_graph_init` while the block runs.

    The swap is of a module attribute, shared by the process's threads, so it is counted: umap-learn's own start
    comes back only when the last block ends. The two starts agree only to float rounding, which the epochs amplify;
    a plain swap undone by one thread while another transforms placed that thread's rows differently from run to run.
    """
    global _borrowers, _umaps_own
    from umap import umap_

    with _lending:
        if _borrowers == 0:
            _umaps_own, umap_.init_graph_transform = umap_.init_graph_transform, vectorised_graph_init
        _borrowers += 1
    try:
        yield
    finally:
        with _lending:
            _borrowers -= 1
            if _borrowers == 0:
                umap_.init_graph_transform = _umaps_own
