"""``AtlasLayout`` and ``Whitening`` as scikit-learn estimators, and their one way in from ``LayoutConfig``.

The estimator contract matters beyond style: the layout stage scatters a fitted
layout to workers (pickle), the compare pipeline builds one per variant from the
same settings (``layout_estimator``), and ``clone``/``get_params`` are how either is
copied or inspected without knowing the constructor.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from atlas.collect import ActivationStore, Rows, StoreLayout
from atlas.compare.align import aligned_layouts, independent_layouts
from atlas.config import LayoutConfig
from atlas.errors import AtlasError
from atlas.layout import AtlasLayout, Whitening
from atlas_pipelines.engine.executor import InProcessExecutor
from atlas_pipelines.stages.layout import compute_layout, layout_estimator, shard_groups, whitening_estimator

# LayoutConfig fields that are not the estimator's: how the stage samples and chunks, the whitening, given coords.
NOT_LAYOUT_PARAMS = {"fit_sample", "chunk_size", "whitening_eps", "coords"}


def blobs(n: int = 200, dims: int = 16, centres: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs: structure UMAP should keep, in a second."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 6.0, size=(centres, dims))
    labels = np.arange(n) % centres
    return (means[labels] + rng.normal(size=(n, dims))).astype(np.float32), labels


@pytest.fixture(scope="module")
def fitted() -> tuple[AtlasLayout, np.ndarray, np.ndarray, np.ndarray]:
    x, labels = blobs()
    layout = AtlasLayout(n_neighbors=10, metric="euclidean", pca_components=8, random_state=0)
    coords = layout.fit_transform(x)
    return layout, x, labels, coords


# --- the estimator contract ------------------------------------------------------------------------


def test_clone_round_trips_params_and_drops_fitted_state(fitted: tuple[AtlasLayout, Any, Any, Any]) -> None:
    params: dict[str, Any] = {"n_neighbors": 7, "min_dist": 0.2, "metric": "euclidean", "pca_components": None,
              "clip_percentile": 2.5, "margin": 0.1, "n_components": 2, "random_state": 3, "placement": "neighbours"}  # fmt: skip
    layout = AtlasLayout(**params)
    assert layout.get_params() == params
    assert clone(layout).get_params() == params
    assert clone(layout.set_params(n_neighbors=9)).n_neighbors == 9
    copy = clone(fitted[0])
    assert copy.get_params() == fitted[0].get_params()
    with pytest.raises(NotFittedError):
        copy.transform(fitted[1][:3])
    assert clone(Whitening(eps=0.3)).get_params() == {"eps": 0.3}


def test_use_before_fit_raises_not_fitted() -> None:
    layout = AtlasLayout()
    x = np.zeros((5, 3), dtype=np.float32)
    with pytest.raises(NotFittedError):
        layout.transform(x)
    with pytest.raises(NotFittedError):
        layout.to_unit_box(np.zeros((5, 2)))
    with pytest.raises(NotFittedError):
        _ = layout.fitted_coords_
    with pytest.raises(NotFittedError):
        Whitening().transform(x)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n_neighbors", 1),
        ("n_neighbors", 2.5),
        ("min_dist", -0.1),
        ("metric", ""),
        ("pca_components", 0),
        ("clip_percentile", 50.0),
        ("clip_percentile", -1.0),
        ("margin", 0.5),
        ("random_state", "zero"),
        ("placement", "nearest"),
    ],
)
def test_bad_layout_params_fail_in_fit_not_init(param: str, value: Any) -> None:
    layout = AtlasLayout(**{param: value})  # no validation here: set_params and clone need that
    assert layout.get_params()[param] == value
    with pytest.raises(ValueError, match=param):
        layout.fit(blobs(20)[0])


def test_too_few_rows_and_bad_eps_fail_in_fit() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        AtlasLayout().fit(np.ones((3, 5)))
    for eps in (0.0, -1e-3, float("nan")):
        whitening = Whitening(eps=eps)
        with pytest.raises(ValueError, match="eps must be a positive"):
            whitening.fit(np.ones((10, 3)))


# --- layout_estimator: the one place settings become estimators -------------------------------------


def test_layout_estimator_passes_every_layout_setting_through() -> None:
    config = LayoutConfig(n_neighbors=12, min_dist=0.3, metric="euclidean", pca_components=7, clip_percentile=3.0,
                          margin=0.2, whitening_eps=0.25)  # fmt: skip
    params = layout_estimator(config, seed=11).get_params()
    settings = set(LayoutConfig.model_fields) - NOT_LAYOUT_PARAMS
    # A new LayoutConfig field must either reach the estimator or be listed as not its own; the seed and
    # the output dimension (1 only for a two-class comparison's y axis) are the caller's, not the config's.
    assert settings == set(params) - {"random_state", "n_components"}
    assert params["n_components"] == 2
    assert {k: params[k] for k in settings} == {k: getattr(config, k) for k in settings}
    assert params["random_state"] == 11
    assert whitening_estimator(config).get_params() == {"eps": 0.25}


# --- a real fit -----------------------------------------------------------------------------------


def test_fit_places_rows_in_the_unit_square_and_transform_agrees(fitted: tuple[AtlasLayout, np.ndarray, np.ndarray, np.ndarray]) -> None:
    layout, x, labels, coords = fitted
    assert coords.shape == (len(x), 2) and coords.dtype == np.float32
    assert coords.min() >= 0.0 and coords.max() <= 1.0
    assert np.array_equal(coords, layout.fitted_coords_)  # fit_transform gives the fitted rows, not a re-placement
    # The blobs stay apart: each row's centre is nearer its own blob's centre than any other's.
    centres = np.stack([coords[labels == c].mean(axis=0) for c in np.unique(labels)])
    assert (np.linalg.norm(coords[:, None] - centres[None], axis=2).argmin(axis=1) == labels).mean() > 0.95
    placed = layout.transform(x)
    assert placed.min() >= 0.0 and placed.max() <= 1.0
    assert np.median(np.linalg.norm(placed - coords, axis=1)) < 0.1
    # Workers get the fitted layout by pickle; it must place rows the same there.
    assert np.array_equal(pickle.loads(pickle.dumps(layout)).transform(x[:20]), layout.transform(x[:20]))
    with pytest.raises(ValueError, match="features"):
        layout.transform(x[:, :5])


def test_a_small_fit_gets_umaps_own_exact_neighbour_graph_and_still_places_new_rows() -> None:
    """Below 4,096 rows atlas hands umap-learn exact neighbours it found vectorised: the graph must be umap-learn's."""
    import umap

    x, labels = blobs(n=300, dims=12)
    for metric in ("cosine", "euclidean"):
        ours = AtlasLayout(n_neighbors=15, metric=metric, pca_components=None, random_state=0).fit(x)
        assert ours.umap_._knn_search_index is None  # the exact path was taken, so no index was built in fit
        theirs = umap.UMAP(n_neighbors=15, metric=metric, min_dist=0.05, random_state=0, n_jobs=1).fit(x)
        a, b = ours.umap_.graph_.tocsr(), theirs.graph_.tocsr()
        same_edges = (a != 0).multiply(b != 0).nnz
        assert same_edges >= 0.99 * max(a.nnz, b.nnz), (same_edges, a.nnz, b.nnz)  # ties may swap a few
        assert abs(a - b).max() < 0.02
    placed = ours.transform(x[:40] + 0.01)  # new rows: the search index is built on first use
    assert ours.umap_._knn_search_index is not None
    for row, label in zip(placed, labels[:40], strict=True):  # each lands among its own blob
        own = ours.fitted_coords_[labels == label]
        assert np.linalg.norm(own - row, axis=1).min() < 0.05


def test_vectorised_graph_init_is_umaps_own_start() -> None:
    from umap.umap_ import init_graph_transform

    from atlas.layout.graph_init import vectorised_graph_init

    rng = np.random.default_rng(3)
    graph = scipy.sparse.random(300, 80, density=0.1, random_state=4, format="csr", dtype=np.float32)
    graph.data[::17] = 1.0  # a new row equal to a fitted row: umap-learn puts it on that row
    graph.data[graph.indptr[5] : graph.indptr[6]] = 0.0  # a row with no fitted neighbour: NaN, as umap-learn leaves it
    graph.eliminate_zeros()
    embedding = rng.normal(size=(80, 2)).astype(np.float32)
    ours, theirs = vectorised_graph_init(graph, embedding), init_graph_transform(graph, embedding)
    assert np.isnan(theirs[5]).all() and np.isnan(ours[5]).all()
    assert (graph.data == 1).any() and np.allclose(ours, theirs, atol=1e-5, equal_nan=True)


def test_the_vectorised_start_is_lent_until_the_last_thread_is_done() -> None:
    from umap import umap_

    from atlas.layout.graph_init import vectorised_graph_init, vectorised_start

    own = umap_.init_graph_transform
    assert own is not vectorised_graph_init
    inner_done = threading.Event()

    def borrow_briefly() -> None:
        with vectorised_start():
            assert umap_.init_graph_transform is vectorised_graph_init
        inner_done.set()

    with vectorised_start():
        thread = threading.Thread(target=borrow_briefly)
        thread.start()
        thread.join()
        assert inner_done.is_set() and umap_.init_graph_transform is vectorised_graph_init  # still lent to this block
    assert umap_.init_graph_transform is own


def test_rows_placed_by_threads_at_once_equal_rows_placed_one_chunk_at_a_time(
    fitted: tuple[AtlasLayout, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """A worker's threads place chunks side by side: each chunk's coordinates must not depend on the others' timing."""
    from concurrent.futures import ThreadPoolExecutor

    layout, x, _, _ = fitted
    new = x + np.random.default_rng(6).normal(scale=0.05, size=x.shape).astype(np.float32)
    chunks = np.array_split(new, 6)
    alone = [layout.transform(chunk) for chunk in chunks]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(layout.transform, chunks))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))


def test_umap_placement_gives_umaps_transform_and_neighbours_its_start(
    fitted: tuple[AtlasLayout, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    layout, x, labels, coords = fitted
    assert layout.placement == "umap"
    new = x + np.random.default_rng(5).normal(scale=0.05, size=x.shape).astype(np.float32)  # near, not equal, to fitted rows
    placed = layout.transform(new)
    # umap-learn's own transform: its start differs from ours by float rounding (1e-6), which its 30 epochs amplify for
    # a few rows, so the two agree closely rather than bit for bit.
    theirs = layout.to_unit_box(layout.umap_.transform(layout._reduce(new)))
    shift = np.linalg.norm(placed - theirs, axis=1)
    assert np.median(shift) < 0.005 and np.percentile(shift, 90) < 0.03, np.percentile(shift, [50, 90, 100])
    start = clone(layout).set_params(placement="neighbours").fit(x).transform(new)
    # The start lies inside the hull of its own blob's fitted coordinates (a mean of its neighbours there), near the
    # place its twin was fitted and near where the epochs then take it.
    for blob in np.unique(labels):
        own = coords[labels == blob]
        assert (start[labels == blob] >= own.min(axis=0) - 1e-6).all() and (start[labels == blob] <= own.max(axis=0) + 1e-6).all()
    assert np.median(np.linalg.norm(start - coords, axis=1)) < 0.05
    assert np.median(np.linalg.norm(start - placed, axis=1)) < 0.05
    assert np.array_equal(pickle.loads(pickle.dumps(layout)).transform(new[:20]), layout.transform(new[:20]))  # seeded: repeatable


def test_independent_layouts_take_the_config(fitted: tuple[AtlasLayout, np.ndarray, np.ndarray, np.ndarray]) -> None:
    _, x, _, coords = fitted
    config = LayoutConfig(n_neighbors=10, metric="euclidean", pca_components=8)
    (again,) = independent_layouts([x], layout_estimator(config, seed=0))
    assert np.array_equal(again, coords)  # the same settings and seed as the fixture, so the same layout
    with pytest.raises(AtlasError, match="same rows"):
        aligned_layouts([x, x[:50]], layout_estimator(config, seed=0))


# --- whitening -------------------------------------------------------------------------------------


def test_whitening_is_the_inverse_regularised_second_moment() -> None:
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(6, 6)) + 3 * np.eye(6)
    x = rng.normal(size=(2000, 6)) @ mixing  # correlated channels
    moment = x.T @ x / len(x)
    scale = np.trace(moment) / len(moment)
    for eps in (1e-1, 1e-2):
        w = Whitening(eps=eps).fit(x).matrix_.astype(np.float64)
        assert np.allclose(w, w.T, atol=1e-6 * np.abs(w).max())
        assert np.allclose(w @ (moment + eps * scale * np.eye(6)), np.eye(6), atol=1e-4)
    # With eps tiny, W is M^-1: whitened rows x W^(1/2) have identity second moment, and mean x W x^T = C.
    w = Whitening(eps=1e-8).fit(x).matrix_.astype(np.float64)
    values, vectors = np.linalg.eigh(w)
    whitened = x @ (vectors * np.sqrt(values)) @ vectors.T
    assert np.allclose(whitened.T @ whitened / len(x), np.eye(6), atol=1e-3)
    assert np.einsum("ij,jk,ik->i", x, w, x).mean() == pytest.approx(6.0, rel=1e-3)


def test_whitening_transform_applies_the_matrix() -> None:
    x = np.random.default_rng(2).normal(size=(100, 5))
    whitening = Whitening().fit(x)
    directions = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
    assert np.allclose(whitening.transform(directions), (whitening.matrix_ @ directions.T).T, atol=1e-6)
    assert np.allclose(whitening.transform(directions[0]), whitening.matrix_ @ directions[0], atol=1e-6)
    assert np.allclose(whitening.fit_transform(x), x.astype(np.float32) @ whitening.matrix_.T, atol=1e-5)
    with pytest.raises(ValueError, match="5 features"):
        whitening.transform(np.ones(4))


# --- the layout stage reads the store itself ----------------------------------------------------------


def test_whitening_from_summed_moments_equals_whitening_of_all_rows() -> None:
    x = np.random.default_rng(4).normal(size=(500, 7))
    halves = [x[:180], x[180:]]
    moment = sum(h.T @ h for h in halves)
    np.testing.assert_allclose(Whitening(eps=0.05).fit_moment(moment, 500).matrix_, Whitening(eps=0.05).fit(x).matrix_, rtol=1e-5)
    with pytest.raises(ValueError, match="square"):
        Whitening().fit_moment(np.ones((3, 4)), 10)


def test_compute_layout_reads_the_store_in_shards(tmp_path: Path, fitted: tuple[AtlasLayout, np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Every row gets coordinates, the fit sample its fitted ones, and the whitening sees every row, as from memory."""
    _, x, _, _ = fitted
    store = ActivationStore(tmp_path / "store")
    store.create(StoreLayout(4, 64, x.shape[1], 0), key="test")
    fill = [64, 30, 0, 64]  # shard 2 empty (every image unreadable), shard 1 part full
    start = 0
    for shard, n in enumerate(fill):
        part = x[start : start + n]
        zeros = np.zeros(n, np.int32)
        store.write_shard(shard, Rows(part, np.zeros((n, 0), np.float32), np.arange(start, start + n), zeros, zeros, zeros - 1), {})
        start += n
    rows = store.read().activation
    config = LayoutConfig(n_neighbors=10, metric="euclidean", pca_components=8, fit_sample=60, chunk_size=50)
    coords, whitening = compute_layout(lambda: InProcessExecutor(1), store, config, seed=0)
    assert coords is not None and coords.shape == (len(rows), 2) and np.isfinite(coords).all()
    assert coords.min() >= 0.0 and coords.max() <= 1.0
    np.testing.assert_allclose(whitening.matrix_, whitening_estimator(config).fit(rows).matrix_, rtol=1e-4, atol=1e-6)
    sample = np.sort(np.random.default_rng(0).choice(len(rows), size=60, replace=False))  # as the stage draws it
    refit = layout_estimator(config, 0).fit(rows[sample])
    np.testing.assert_array_equal(coords[sample], refit.fitted_coords_)
    assert shard_groups(store.shard_starts(), 50) == [[0], [1], [3]]  # the empty shard gets no task
    # The stage with layout.coords given: whitening only, no UMAP.
    none, again = compute_layout(lambda: InProcessExecutor(1), store, config, seed=0, place=False)
    assert none is None and np.array_equal(again.matrix_, whitening.matrix_)
