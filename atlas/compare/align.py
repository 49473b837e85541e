"""Layouts of several variants in one frame, so the same region holds the same images in each.

umap-learn's ``AlignedUMAP`` embeds every variant's rows together, with the
identity relation between consecutive variants (row r is the same image and
position everywhere) pulling each row towards its place in its neighbours.
All embeddings are then put in one shared [0, 1] box, so coordinates are
comparable across variants, not just within one.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import clone

from atlas.errors import AtlasError
from atlas.layout.umap_layout import AtlasLayout, fit_pca, percentile_box


def _reduce(x: np.ndarray, components: int | None, seed: int | None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    pca = fit_pca(x, components, seed)
    return x if pca is None else pca.transform(x).astype(np.float32)


def box_together(embeddings: list[np.ndarray], clip_percentile: float, margin: float) -> list[np.ndarray]:
    """One percentile box over every embedding, so [0, 1] means the same place in each."""
    low, high = percentile_box(np.concatenate(embeddings), clip_percentile, margin)
    return [np.clip((e - low) / (high - low), 0.0, 1.0).astype(np.float32) for e in embeddings]


def aligned_layouts(
    activations: list[np.ndarray],
    layout: AtlasLayout,
    *,
    regularisation: float = 0.01,
    window: int = 3,
) -> list[np.ndarray]:
    """[N, 2] coordinates in [0, 1] per variant; every variant must have the same N rows, in the same order.

    ``layout`` is an unfitted layout whose parameters and seed every variant shares (so a compared variant is
    laid out like a lone atlas); ``regularisation`` and ``window`` are AlignedUMAP's pull between neighbouring variants.
    """
    sizes = {len(a) for a in activations}
    if len(sizes) != 1:
        raise AtlasError(f"aligned layouts need the same rows in every variant; got row counts {sorted(sizes)}")
    (n,) = sizes
    if len(activations) == 1:
        return independent_layouts(activations, layout)
    # The same settings, checked the same way, as a plain layout; AlignedUMAP itself takes them below.
    layout.check_params()
    seed = layout.random_state
    reduced = [_reduce(a, layout.pca_components, seed) for a in activations]
    identity = {i: i for i in range(n)}
    from umap import AlignedUMAP

    with warnings.catch_warnings():
        # AlignedUMAP builds one seeded UMAP per variant, and each warns that a seed means one thread.
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        mapper = AlignedUMAP(
            n_neighbors=min(layout.n_neighbors, n - 1),
            min_dist=layout.min_dist,
            metric=layout.metric,
            alignment_regularisation=regularisation,
            alignment_window_size=window,
            random_state=seed,
            force_approximation_algorithm=len(reduced) * n * n > EXACT_PAIRS_AT_MOST,
        ).fit(reduced, relations=[identity] * (len(reduced) - 1))
    return box_together(list(mapper.embeddings_), layout.clip_percentile, layout.margin)


# Below 4,096 rows umap-learn finds each variant's neighbours exactly, through scikit-learn's per-pair loop over its own
# distance: about 1 s per million pairs, 70 s for 8 variants of 3,000 rows. Its approximate search (pynndescent) costs
# about 25 s of compilation once per process and then a second a variant, so past this many pairs in all it is used.
EXACT_PAIRS_AT_MOST = 30_000_000


def independent_layouts(activations: list[np.ndarray], layout: AtlasLayout) -> list[np.ndarray]:
    """One plain atlas layout per variant (the unaligned baseline), each a fresh copy of ``layout`` boxed on its own."""
    return [clone(layout).fit_transform(a) for a in activations]


def alignment_error(layouts: list[np.ndarray]) -> float:
    """Mean distance (in [0, 1] layout units) between a row's positions in consecutive variants; 0 = perfectly aligned."""
    if len(layouts) < 2:
        return 0.0
    return float(np.mean([np.linalg.norm(a - b, axis=1).mean() for a, b in zip(layouts[:-1], layouts[1:])]))


def neighbour_agreement(layouts: list[np.ndarray], k: int = 10) -> float:
    """Share of each row's k nearest layout neighbours that stay neighbours in the next variant (rotation-proof)."""
    from sklearn.neighbors import NearestNeighbors

    if len(layouts) < 2:
        return 1.0
    scores = []
    for a, b in zip(layouts[:-1], layouts[1:]):
        na = NearestNeighbors(n_neighbors=k + 1).fit(a).kneighbors(a, return_distance=False)[:, 1:]
        nb = NearestNeighbors(n_neighbors=k + 1).fit(b).kneighbors(b, return_distance=False)[:, 1:]
        scores.append(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))
    return float(np.mean(scores))
