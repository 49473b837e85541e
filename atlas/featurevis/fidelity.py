"""Icon fidelity: does an icon, fed back through the model, point along its cell's direction?

docs/architecture.md section 8: the cosine between the icon's own centre activation and its
cell's mean activation, and the rank of the cell's own direction among every
direction of that grid (0 = the icon is closest to its own cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atlas.bundle import BundleWriter, Score
from atlas.featurevis.icon_files import load_icons
from atlas.models.view import ModelView

FIDELITY_BATCH = 256  # icons read and fed back at a time


@dataclass
class Fidelity:
    cosine: np.ndarray  # [N]
    rank: np.ndarray  # [N], 0 = own direction is the nearest
    nonfinite: int = 0  # icons whose activation was NaN or infinite, scored cosine 0 and last rank

    @property
    def top1(self) -> float:
        return float((self.rank == 0).mean()) if len(self.rank) else 0.0

    @property
    def mean_cosine(self) -> float:
        return float(self.cosine.mean()) if len(self.cosine) else 0.0


def centre_activations(view: ModelView, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """[N, C] activation at the layer's centre for images in [0, 1], fed at their own size, on the model's device."""
    device = view.device
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = view.normalise(images[start : start + batch_size].to(device).float())
            batch = batch.contiguous(memory_format=torch.channels_last)
            parts.append(view.layout.centre(view.run_to_layer(batch)).float().cpu())
    return torch.cat(parts).numpy()


def direction_fidelity(activations: np.ndarray, directions: np.ndarray, block: int = 512, own: np.ndarray | None = None) -> Fidelity:
    """Cosine of row i of ``activations`` with direction i (or ``own[i]``: a sample of cells), and that direction's
    rank among all directions.

    Compared a block of icons at a time, so memory is ``block x cells`` rather than ``cells x cells`` (which at a
    320 grid of ~50k cells would be 10 GB). An icon whose activation is not finite (a model that emits NaN for
    it) points nowhere: cosine 0 and the worst rank, never a NaN that would compare as a perfect match.
    """
    broken = ~np.isfinite(activations).all(axis=1)
    activations = np.where(broken[:, None], 0.0, activations)
    a = activations / np.maximum(np.linalg.norm(activations, axis=1, keepdims=True), 1e-12)
    d = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    index = np.arange(len(a)) if own is None else np.asarray(own, np.int64)
    cosine = np.einsum("ij,ij->i", a, d[index])
    rank = np.zeros(len(a), np.int64)
    for start in range(0, len(a), block):
        similarity = a[start : start + block] @ d.T  # [block icons, every direction]
        diagonal = similarity[np.arange(len(similarity)), index[start : start + len(similarity)]]
        rank[start : start + block] = (similarity > diagonal[:, None]).sum(axis=1)
    cosine[broken] = 0.0
    rank[broken] = max(len(d) - 1, 0)
    return Fidelity(cosine.astype(np.float32), rank, int(broken.sum()))


def measure_fidelity(bundle: BundleWriter, grid: int, view: ModelView, canvas: int) -> Fidelity:
    """Feed a grid's saved PNGs back through the model (each icon's full view where render kept one: what was
    optimised, ``canvas`` px); each cell's cosine and rank go to the level's fidelity file."""
    cells = bundle.grid_cells(grid)
    fed = [bundle.fed_image(c.icon) for c in cells]
    channels = view.preprocessing.channels
    if len(cells):
        # A batch of icons at a time: a 320 grid of 80 px RGB icons would be 4 GB as one float tensor.
        activations = np.concatenate(
            [
                centre_activations(view, load_icons(bundle, fed[start : start + FIDELITY_BATCH], channels, canvas))
                for start in range(0, len(cells), FIDELITY_BATCH)
            ]
        )
        fidelity = direction_fidelity(activations, bundle.directions(grid))
    else:
        fidelity = Fidelity(np.zeros(0, np.float32), np.zeros(0, np.int64))
    bundle.write_fidelity(grid, [Score(round(float(c), 4), int(r)) for c, r in zip(fidelity.cosine, fidelity.rank)])
    return fidelity
