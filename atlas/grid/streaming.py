"""Every grid level from chunked reads of the activation store, in memory bounded by the cells, not the rows.

The rows never sit in memory together: counts come from the layout coordinates
(two floats a row); each level's sums of activation and attribution are
accumulated chunk by chunk (segment sums, float64) and turned into means; the
examples (the member rows pointing most nearly along their cell's mean) are
the best ``k`` of each chunk, merged at the end. Levels share passes over the
store while their accumulators fit ``budget_bytes``; a larger level gets a
pass of its own. The results equal :func:`atlas.grid.build_grid` (the
in-memory version) to float tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from atlas.collect.store import CLASS_TOKEN_ROW, RowChunk
from atlas.grid.cells import cell_index
from atlas.grid.grid import GridLevel, make_cell

ReadChunks = Callable[[Sequence[str]], Iterable[RowChunk]]  # the store's chunks of the named row fields
DEFAULT_BUDGET = 512 << 20  # bytes of float64 accumulators one pass over the store may hold


@dataclass
class _Plan:
    """One level before its pass: which rows fall in which kept cell."""

    size: int
    kept: np.ndarray  # flat cell index (j * size + i) of each kept cell, ascending
    counts: np.ndarray  # rows per kept cell
    row_cell: np.ndarray  # int32 [N]: position in ``kept`` of each row's cell, -1 where the cell was dropped

    def accumulator_bytes(self, width: int) -> int:
        return len(self.kept) * width * 8


PLAN_BLOCK = 1 << 20  # rows whose cells are computed at once: bounds the float64 and int64 temporaries to ~50 MB


def plan_level(coords: np.ndarray, size: int, min_count: int) -> _Plan:
    """Which kept cell each row falls in, computed a block of rows at a time (10 M rows at once made ~0.5 GB of
    temporaries per level)."""
    blocks = [slice(start, start + PLAN_BLOCK) for start in range(0, len(coords), PLAN_BLOCK)]
    counts = np.zeros(size * size, np.int64)
    for block in blocks:
        counts += np.bincount(_flat_cell(coords[block], size), minlength=size * size)
    kept = np.flatnonzero(counts >= min_count)
    lookup = np.full(size * size, -1, np.int32)
    lookup[kept] = np.arange(len(kept), dtype=np.int32)
    row_cell = np.empty(len(coords), np.int32)
    for block in blocks:
        row_cell[block] = lookup[_flat_cell(coords[block], size)]
    return _Plan(size, kept, counts[kept], row_cell)


def _flat_cell(coords: np.ndarray, size: int) -> np.ndarray:
    i, j = cell_index(coords, size)
    return j * size + i


def build_grids(
    coords: np.ndarray,
    read_chunks: ReadChunks,
    sizes: Sequence[int],
    min_count: int,
    labels: Sequence[str] | None,
    channels: int,
    n_classes: int,
    top_classes: int = 5,
    n_examples: int = 8,
    budget_bytes: int = DEFAULT_BUDGET,
) -> Iterator[GridLevel]:
    """One :class:`GridLevel` per size, in ``sizes`` order, each yielded as soon as its pass is done."""
    plans = [plan_level(coords, size, min_count) for size in sizes]
    for group in _groups(plans, channels + n_classes, budget_bytes):
        directions, attribution, class_tokens = _means(group, read_chunks, channels, n_classes)
        examples = _examples(group, read_chunks, directions, n_examples) if n_examples else [{} for _ in group]
        for plan, direction, mean_attr, best, tokens in zip(group, directions, attribution, examples, class_tokens):
            cells = [
                make_cell(plan.size, int(flat), int(count), mean_attr[n], labels, top_classes, best.get(n, []), int(tokens[n]))
                for n, (flat, count) in enumerate(zip(plan.kept, plan.counts))
            ]
            yield GridLevel(plan.size, cells, direction, mean_attr)


def _groups(plans: list[_Plan], width: int, budget: int) -> Iterator[list[_Plan]]:
    """Consecutive levels whose accumulators fit the budget together (a level over it alone)."""
    group: list[_Plan] = []
    used = 0
    for plan in plans:
        need = plan.accumulator_bytes(width)
        if group and used + need > budget:
            yield group
            group, used = [], 0
        group.append(plan)
        used += need
    if group:
        yield group


def _means(
    group: list[_Plan], read_chunks: ReadChunks, channels: int, n_classes: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per level: float32 [cells, C] mean activation, [cells, K] mean attribution and each cell's count of class-token
    rows, from one pass."""
    act_sums = [np.zeros((len(p.kept), channels), np.float64) for p in group]
    attr_sums = [np.zeros((len(p.kept), n_classes), np.float64) for p in group]
    class_tokens = [np.zeros(len(p.kept), np.int64) for p in group]
    fields = ("activation", "kind", "attribution") if n_classes else ("activation", "kind")
    for chunk in read_chunks(fields):
        activation = chunk.arrays["activation"].astype(np.float64)
        attribution = chunk.arrays["attribution"].astype(np.float64) if n_classes else None
        is_class_token = chunk.arrays["kind"] == CLASS_TOKEN_ROW
        for plan, act_sum, attr_sum, tokens in zip(group, act_sums, attr_sums, class_tokens):
            cell = plan.row_cell[chunk.rows]
            touched = membership(cell)
            if touched is None:
                continue
            cells, members = touched
            act_sum[cells] += members @ activation
            if attribution is not None:
                attr_sum[cells] += members @ attribution
            tokens += np.bincount(cell[is_class_token & (cell >= 0)], minlength=len(plan.kept))
    divide = [np.maximum(p.counts, 1)[:, None] for p in group]
    return (
        [(s / d).astype(np.float32) for s, d in zip(act_sums, divide)],
        [(s / d).astype(np.float32) for s, d in zip(attr_sums, divide)],
        class_tokens,
    )


def membership(cell: np.ndarray) -> tuple[np.ndarray, sparse.csr_matrix] | None:
    """The cells a chunk touches and its touched-cell-by-row 0/1 matrix, so a segment sum is one small sparse product.

    Only the touched cells get a row of the product: at a 320 grid a chunk of a few thousand rows touches a few
    thousand of the ~50k cells, and a product over every cell would allocate a dense [cells, classes] block per chunk.
    None when no row of the chunk is in a kept cell.
    """
    kept = np.flatnonzero(cell >= 0)
    if not len(kept):
        return None
    cells, local = np.unique(cell[kept], return_inverse=True)
    return cells, sparse.csr_matrix((np.ones(len(kept)), (local, kept)), shape=(len(cells), len(cell)))


def _examples(group: list[_Plan], read_chunks: ReadChunks, directions: list[np.ndarray], k: int) -> list[dict[int, list[dict[str, int]]]]:
    """Per level, per cell: the ``k`` member rows of highest cosine to the cell's direction (ties: lower row first).

    Each chunk's candidates are merged into the running best at once, so what is held is ``k`` rows per cell, not
    ``k`` per cell per chunk (at 10 M rows and a 320 grid, the candidates of every chunk kept to the end were ~0.9 GB).
    """
    norms = [np.maximum(np.linalg.norm(d.astype(np.float64), axis=1), 1e-12) for d in directions]
    best: list[tuple[np.ndarray, ...] | None] = [None for _ in group]
    for chunk in read_chunks(("activation", "image_id", "y", "x")):
        vectors = chunk.arrays["activation"].astype(np.float64)
        row_norms = np.linalg.norm(vectors, axis=1)
        for n, plan in enumerate(group):
            cell = plan.row_cell[chunk.rows]
            local = np.flatnonzero(cell >= 0)
            if not len(local):
                continue
            c = cell[local]
            cosine = np.einsum("ij,ij->i", vectors[local], directions[n][c]) / np.maximum(row_norms[local] * norms[n][c], 1e-12)
            top = _top_k_per_cell(c, cosine, local + chunk.start, k)
            found = (c[top], cosine[top], local[top] + chunk.start, *(chunk.arrays[f][local[top]] for f in ("image_id", "y", "x")))
            held = best[n]
            if held is not None:
                found = tuple(np.concatenate(pair) for pair in zip(held, found))
                found = tuple(column[_top_k_per_cell(found[0], found[1], found[2], k)] for column in found)
            best[n] = found
    merged: list[dict[int, list[dict[str, int]]]] = []
    for held in best:
        by_cell: dict[int, list[dict[str, int]]] = {}
        if held is not None:
            cell, cosine, row, image_id, y, x = held
            for t in _top_k_per_cell(cell, cosine, row, k):
                by_cell.setdefault(int(cell[t]), []).append(
                    {"row": int(row[t]), "image_id": int(image_id[t]), "y": int(y[t]), "x": int(x[t])}
                )
        merged.append(by_cell)
    return merged


def _top_k_per_cell(cell: np.ndarray, cosine: np.ndarray, row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the best ``k`` entries of each cell, ordered by cell, then cosine descending, then row."""
    order = np.lexsort((row, -cosine, cell))
    sorted_cell = cell[order]
    first = np.concatenate([[0], np.flatnonzero(np.diff(sorted_cell)) + 1])
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.concatenate([first, [len(order)]])))
    return order[rank < k]
