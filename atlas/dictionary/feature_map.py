"""The feature map: a dictionary's features laid out by UMAP of their decoder directions (cosine), binned into grids
like the activation atlas, each cell holding the features that land in it, densest first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas.grid.cells import cell_index
from atlas.layout import AtlasLayout


@dataclass(frozen=True)
class FeatureCell:
    """Cell (i, j) of a grid and its features, densest first (ties to the lower index)."""

    i: int
    j: int
    features: tuple[int, ...]


def feature_coords(decoder: np.ndarray, n_neighbors: int, seed: int) -> np.ndarray:
    """float [F, 2] in [0, 1]: the decoder directions ([F, C]) laid out by the atlas's own PCA + UMAP (cosine)."""
    features = len(decoder)
    layout = AtlasLayout(n_neighbors=max(2, min(n_neighbors, features - 1)), metric="cosine", random_state=seed,
                         pca_components=min(50, features, decoder.shape[1]))  # fmt: skip
    return np.asarray(layout.fit_transform(np.asarray(decoder, np.float32)), np.float64)


def map_cells(coords: np.ndarray, density: np.ndarray, size: int) -> list[FeatureCell]:
    """The cells of a ``size`` grid that hold a feature, row-major by (j, i) like the activation atlas's cells."""
    i, j = cell_index(coords, size)
    flat = j * size + i
    order = np.lexsort((np.arange(len(flat)), -np.asarray(density), flat))  # by cell, then densest, then index
    cells: list[FeatureCell] = []
    for cell in np.unique(flat):
        members = order[flat[order] == cell]
        cells.append(FeatureCell(int(cell % size), int(cell // size), tuple(int(f) for f in members)))
    return cells
