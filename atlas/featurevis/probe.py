"""The probe: render a few cells under each candidate setting and score them as fidelity scores the real icons.

Which cells, how their renders are scored, and when an atlas is too small to be worth probing; the search over
candidates is atlas.featurevis.choice, and the renders themselves are atlas.featurevis.icons.render_cells, run
wherever the caller likes (the render stage runs each candidate's cells as worker tasks, side by side).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from atlas.bundle import Cell
from atlas.featurevis.choice import probe_cells
from atlas.featurevis.fidelity import Fidelity, centre_activations, direction_fidelity
from atlas.featurevis.icons import CellBatch, cell_batch
from atlas.models.view import ModelView

PROBE_MIN_RATIO = 4  # a probe of more than a quarter of the atlas's cells would cost more than it could save


def worth_probing(total_cells: int, per_candidate: int) -> bool:
    """Whether an atlas of ``total_cells`` has enough cells for a probe of ``per_candidate`` of them to pay off."""
    return per_candidate > 0 and total_cells >= PROBE_MIN_RATIO * per_candidate


def sample_cells(grids: Mapping[int, Sequence[Cell]], per_candidate: int, seed: int) -> list[CellBatch]:
    """The probe's cells: half of ``per_candidate`` from the coarsest grid and half from the finest (all of it from
    a single grid), spread evenly and seeded as the run seeds them, so a probe render is the run's own render."""
    sizes = list(grids)
    per_grid = max(1, per_candidate // (1 if len(sizes) == 1 else 2))
    sample = probe_cells([len(grids[size]) for size in sizes], per_grid, seed)
    return [cell_batch(grids[sizes[level]], sizes[level], rows, seed) for level, rows in sample]


def as_saved(images: torch.Tensor) -> np.ndarray:
    """Renders as the saved 8-bit PNGs would hold them, so the probe scores what a run would keep."""
    return (torch.round(images.float().cpu() * 255.0) / 255.0).numpy()


def probe_fidelity(
    view: ModelView, sample: Sequence[CellBatch], renders: Sequence[np.ndarray], directions: Mapping[int, np.ndarray]
) -> Fidelity:
    """One candidate's renders of the ``sample`` (one array per batch), each ranked against all of its grid's
    ``directions``, pooled over the grids."""
    parts = []
    for cells, images in zip(sample, renders, strict=True):
        activations = centre_activations(view, torch.from_numpy(images))
        parts.append(direction_fidelity(activations, directions[cells.grid], own=np.asarray(cells.rows)))
    if not parts:
        return Fidelity(np.zeros(0, np.float32), np.zeros(0, np.int64))
    return Fidelity(np.concatenate([p.cosine for p in parts]), np.concatenate([p.rank for p in parts]), sum(p.nonfinite for p in parts))


__all__ = ["PROBE_MIN_RATIO", "as_saved", "probe_fidelity", "sample_cells", "worth_probing"]
