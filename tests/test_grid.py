"""Grid invariants on a real layout of real activations from a small model."""

import numpy as np

from atlas.grid import build_grid, cell_index


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
