"""Icons of atlas cells: each cell's objective towards its direction, and one batch of cells rendered with it.

A cell's objective grows the layer's activation along its direction (whitened or not) and, with the retrieval
term, pushes it away from the grid's other cells. The parameterisation is the run's (fourier, maco with the run's
spectrum, or accentuate from each cell's best example patch). ``render_cells`` is what a render task and a probe
candidate both run, so the probe scores exactly the icons the run would render.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from atlas.bundle import Cell
from atlas.featurevis.choice import PARAMS, RenderSettings
from atlas.featurevis.icon_files import first_patch
from atlas.featurevis.objectives import Direction, Log, Objective, Proximity, Retrieval
from atlas.featurevis.param import ParamFactory, accentuate, fourier, maco
from atlas.featurevis.render import Precision, RenderResult, render, score_images
from atlas.featurevis.seeding import derive_seed
from atlas.models.view import ModelView


@dataclass(frozen=True)
class IconRecipe:
    """The render settings no probe chooses, the same for every icon of a run (the parameterisation is a probe's
    choice: :class:`atlas.featurevis.choice.RenderSettings`)."""

    steps: int = 128
    proximity: float = 10.0  # accentuate: how near its start an icon stays, relative to its objective there
    precision: Precision = "fp32"
    alpha: bool = False
    coarse_steps: int = 0  # the first steps at half size (atlas.featurevis.render); 0 for a model of one input size


@dataclass(frozen=True)
class CellBatch:
    """Cells of one grid rendered together, as planned on the driver (small to ship to a worker): their ``rows`` of
    the grid's directions, their seeds and each one's best example patch (accentuate's start; None without one)."""

    grid: int
    rows: tuple[int, ...]
    seeds: tuple[int, ...]
    starts: tuple[str | None, ...]


def cell_batch(cells: Sequence[Cell], grid: int, rows: Sequence[int], seed: int) -> CellBatch:
    """The cells at ``rows`` of a grid's cell list, each seeded from the run's ``seed`` and its place in the grid."""
    picked = [cells[row] for row in rows]
    return CellBatch(
        grid,
        tuple(rows),
        tuple(derive_seed(seed, grid, cell.i, cell.j) for cell in picked),
        tuple(first_patch(cell) for cell in picked),
    )


@dataclass(frozen=True)
class GridCells:
    """Some cells of one grid: ``rows`` of all its ``directions`` (the retrieval term ranks against every one), each
    with its own seed; ``whitening`` is the layer's (None: no whitened objective)."""

    directions: np.ndarray
    rows: tuple[int, ...]
    seeds: tuple[int, ...]
    whitening: np.ndarray | None = None


@dataclass(frozen=True)
class ParamInputs:
    """What a parameterisation needs besides seeds: the run's spectrum (maco), the cells' start images (accentuate)."""

    spectrum: np.ndarray | None = None
    starts: np.ndarray | None = None  # [B, C, S, S] in [0, 1], one per cell in seed order


def objective_for(directions: np.ndarray, rows: Sequence[int], whitening: np.ndarray | None, settings: RenderSettings) -> Objective:
    """The objective of the cells at ``rows`` of a grid's ``directions`` under ``settings``.

    ``whiten``: full (whitened), dot (whitened growth, own cosine) or off. ``contrast`` adds the retrieval term over
    all of the grid's directions, balanced against the direction term as a sum of logs (a product of the two).
    """
    targets = directions[list(rows)]
    if settings.whiten == "off" or whitening is None:
        direction = Direction(targets, cossim_power=settings.cossim_power)
    else:
        cosine = "raw" if settings.whiten == "dot" else "whitened"
        direction = Direction.whitened(targets, whitening, cosine=cosine, cossim_power=settings.cossim_power)
    if not settings.contrast:
        return direction
    return Log(direction) + Retrieval(directions, list(rows))


def render_cells(
    view: ModelView,
    cells: GridCells,
    recipe: IconRecipe,
    settings: RenderSettings,
    canvas: int,
    inputs: ParamInputs = ParamInputs(),
) -> RenderResult:
    """Render ``cells`` on a ``canvas`` px square: ``images`` is the whole render of each, as the model is fed it
    (before any crop to the receptive field or scaling to the icon size)."""
    prep = view.preprocessing
    objective = objective_for(cells.directions, cells.rows, cells.whitening, settings)
    param: ParamFactory
    if settings.param == "maco":
        if inputs.spectrum is None:
            raise ValueError("render.param maco needs the run's spectrum")
        param = maco(prep.channels, canvas, torch.from_numpy(inputs.spectrum))
    elif settings.param == "accentuate":
        if inputs.starts is None:
            raise ValueError("render.param accentuate needs each cell's start image")
        starts = torch.from_numpy(inputs.starts)
        param = accentuate(prep.channels, canvas, starts)
        # The penalty follows each icon's own objective at its start, so one setting suits any layer's scale.
        at_start = score_images(view, objective, starts)
        objective = objective + Proximity(starts, weight=recipe.proximity * at_start.abs().clamp_min(1e-6).cpu())
    elif settings.param == "fourier":
        param = fourier(prep.channels, canvas)
    else:
        raise ValueError(f"render.param {settings.param!r}: expected one of {', '.join(PARAMS)}")
    return render(
        view, objective, param,
        seeds=list(cells.seeds),
        steps=recipe.steps, lr=settings.learning_rate, tries=settings.tries, precision=recipe.precision, alpha=recipe.alpha,
        coarse_steps=recipe.coarse_steps,
    )  # fmt: skip


__all__ = ["CellBatch", "GridCells", "IconRecipe", "ParamInputs", "cell_batch", "objective_for", "render_cells"]
