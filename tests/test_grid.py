"""Grid invariants on a real layout of real activations from a small model."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from atlas.collect.store import ActivationStore, Rows, StoreLayout
from atlas.grid import build_grid, build_grids, cell_index


def make_rows(n: int = 3000, channels: int = 6, classes: int = 4):
    rng = np.random.default_rng(0)
    coords = rng.random((n, 2)).astype(np.float32)
    coords[:5] = 1.0  # the far edge belongs to the last cell
    activation = rng.normal(size=(n, channels)).astype(np.float32) + coords[:, :1] * 3
    attribution = rng.normal(size=(n, classes)).astype(np.float32)
    attribution[:, 2] += coords[:, 0] * 4  # class 2 dominates on the right
    return coords, activation, attribution, np.arange(n), rng.integers(0, 9, n), rng.integers(0, 9, n)


def test_counts_and_means() -> None:
    coords, activation, attribution, ids, ys, xs = make_rows()
    level = build_grid(coords, activation, attribution, ids, ys, xs, size=8, min_count=1, labels=["a", "b", "c", "d"])
    assert sum(c["count"] for c in level.cells) == len(coords)
    i, j = cell_index(coords, 8)
    for cell, direction in zip(level.cells, level.directions):
        members = (i == cell["i"]) & (j == cell["j"])
        assert members.sum() == cell["count"]
        np.testing.assert_allclose(direction, activation[members].mean(axis=0), rtol=1e-5, atol=1e-6)
        assert 0 <= cell["i"] < 8 and 0 <= cell["j"] < 8
        assert cell["icon"] == f"levels/8/icons/{cell['i']}_{cell['j']}.png"
        assert all(members[e["row"]] for e in cell["examples"])
    rightmost = [c for c in level.cells if c["i"] == 7]
    assert all(c["top_classes"][0]["label"] == "c" for c in rightmost)
    order = [(c["j"], c["i"]) for c in level.cells]
    assert order == sorted(order)


def test_min_count_drops_sparse_cells() -> None:
    coords, activation, attribution, ids, ys, xs = make_rows(n=400)
    full = build_grid(coords, activation, attribution, ids, ys, xs, size=20, min_count=1, labels=None)
    kept = build_grid(coords, activation, attribution, ids, ys, xs, size=20, min_count=3, labels=None)
    assert all(c["count"] >= 3 for c in kept.cells)
    assert len(kept.cells) == sum(c["count"] >= 3 for c in full.cells) < len(full.cells)
    assert len(kept.directions) == len(kept.cells)
    assert kept.cells[0]["top_classes"][0]["label"].startswith("class ")


# ---- the streaming grid (chunked reads of the store) against the in-memory one ----


def fill_store(path: Path, coords_rows: tuple[np.ndarray, ...], rows_per_shard: int, fill: list[int]) -> ActivationStore:
    """A real activation store whose shards hold ``fill[s]`` rows each (some empty, some partly full: padding)."""
    _, activation, attribution, ids, ys, xs = coords_rows
    store = ActivationStore(path)
    store.create(StoreLayout(len(fill), rows_per_shard, activation.shape[1], attribution.shape[1]), key="test")
    start = 0
    for shard, n in enumerate(fill):
        part = slice(start, start + n)
        rows = Rows(
            activation[part], attribution[part], ids[part], ys[part].astype(np.int32), xs[part].astype(np.int32), np.full(n, -1, np.int32)
        )
        store.write_shard(shard, rows, {"shard": shard, "n_rows": n})
        start += n
    return store


def test_streaming_grids_equal_the_in_memory_grids(tmp_path: Path) -> None:
    coords, activation, attribution, ids, ys, xs = make_rows(n=3000, channels=6, classes=4)
    fill = [400, 0, 250, 400, 400, 150, 400, 400, 400, 200]  # 3000 rows in 10 shards of 400, two partly full, one empty
    store = fill_store(tmp_path / "store", (coords, activation, attribution, ids, ys, xs), 400, fill)
    # What the store gives back (attribution now float16) is what the in-memory version gets too.
    rows = store.read()
    assert len(rows) == 3000 and rows.attribution.dtype == np.float16
    sizes = (2, 5, 8, 20)
    labels = ["a", "b", "c", "d"]
    # A budget this small gives every level its own pass: the grouping must not change anything.
    for budget in (1 << 30, 1):
        streamed = list(build_grids(coords, store.chunks, sizes, 3, labels, 6, 4, top_classes=3, n_examples=4, budget_bytes=budget))
        assert [level.size for level in streamed] == list(sizes)
        for level in streamed:
            reference = build_grid(coords, rows.activation, rows.attribution, rows.image_id, rows.y, rows.x, level.size, 3, labels, 3, 4)
            assert [(c["i"], c["j"], c["count"]) for c in level.cells] == [(c["i"], c["j"], c["count"]) for c in reference.cells]
            np.testing.assert_allclose(level.directions, reference.directions, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(level.mean_attribution, reference.mean_attribution, rtol=1e-5, atol=1e-6)
            for got, want in zip(level.cells, reference.cells):
                assert [t["index"] for t in got["top_classes"]] == [t["index"] for t in want["top_classes"]]
                assert [t["score"] for t in got["top_classes"]] == pytest.approx(
                    [t["score"] for t in want["top_classes"]], rel=1e-5, abs=1e-6
                )
                assert got["examples"] == want["examples"] and got["icon"] == want["icon"]


def test_store_take_and_chunks_agree_with_read(tmp_path: Path) -> None:
    data = make_rows(n=1000)
    store = fill_store(tmp_path / "store", data, 300, [300, 0, 120, 300, 280])
    rows = store.read()
    assert store.count() == 1000 and list(store.shard_starts()) == [0, 300, 300, 420, 720, 1000]
    chunks = list(store.chunks(("activation", "image_id")))
    assert [c.rows for c in chunks] == [slice(0, 300), slice(300, 420), slice(420, 720), slice(720, 1000)]
    np.testing.assert_array_equal(np.concatenate([c.arrays["image_id"] for c in chunks]), rows.image_id)
    pick = np.array([999, 0, 300, 419, 420, 5, 5])
    taken = store.take(pick, ("activation", "attribution", "x"))
    np.testing.assert_array_equal(taken["activation"], rows.activation[pick])
    np.testing.assert_array_equal(taken["attribution"], rows.attribution[pick])
    np.testing.assert_array_equal(taken["x"], rows.x[pick])
    with pytest.raises(IndexError):
        store.take(np.array([1000]))


def _grid_peak_bytes(store: ActivationStore, coords: np.ndarray, n_classes: int) -> int:
    tracemalloc.start()
    try:
        for _ in build_grids(coords, store.chunks, (5, 10), 1, None, 8, n_classes, n_examples=4):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_grid_memory_does_not_grow_with_the_classes_beyond_a_chunk(tmp_path: Path) -> None:
    """1,000 classes against 10 on the same 30,000 rows: the extra peak is about one chunk's attribution, not the matrix."""
    n, per_shard = 30_000, 500
    rng = np.random.default_rng(0)
    coords = rng.random((n, 2)).astype(np.float32)
    activation = rng.normal(size=(n, 8)).astype(np.float32)
    ids, ys, xs = np.arange(n), rng.integers(0, 9, n), rng.integers(0, 9, n)
    peaks = {}
    for k in (10, 1000):
        attribution = rng.normal(size=(n, k)).astype(np.float32)
        store = fill_store(tmp_path / f"k{k}", (coords, activation, attribution, ids, ys, xs), per_shard, [per_shard] * (n // per_shard))
        del attribution
        peaks[k] = _grid_peak_bytes(store, coords, k)
    whole = n * 1000 * 2  # the float16 attribution matrix of 1,000 classes
    one_chunk = per_shard * 1000 * (2 + 8 + 8)  # a chunk read as float16, as float64, and its product
    accumulators = (25 + 100) * 1000 * (8 + 4)  # float64 sums and float32 means of every cell of grids 5 and 10
    extra = peaks[1000] - peaks[10]
    assert extra < 2 * one_chunk + 2 * accumulators, (peaks, one_chunk, accumulators)
    assert extra < whole / 4, (peaks, whole)


def test_a_level_planned_in_blocks_equals_one_planned_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas.grid import streaming
    from atlas.grid.cells import cell_index

    coords = np.random.default_rng(2).random((5000, 2)).astype(np.float32)
    coords[:3] = [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]  # the edges land in the edge cells
    monkeypatch.setattr(streaming, "PLAN_BLOCK", 777)  # 7 blocks, the last one short
    plan = streaming.plan_level(coords, 20, 12)
    i, j = cell_index(coords, 20)
    counts = np.bincount(j * 20 + i, minlength=400)
    assert np.array_equal(plan.kept, np.flatnonzero(counts >= 12)) and np.array_equal(plan.counts, counts[plan.kept])
    kept_of = {int(flat): n for n, flat in enumerate(plan.kept)}
    assert [kept_of.get(int(f), -1) for f in j * 20 + i] == plan.row_cell.tolist()
