"""Path stage: every icon against its cell's real example patches at earlier layers (atlas.featurevis.pathcheck).

Runs on the driver, like render's fidelity check: the icons (their full view where render kept one, which is the
image the model was fed) and the example patches are read back, each patch fed once however many cells show it,
and each grid's scores written to ``levels/<g>/path.json``.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError

from atlas.bundle import Bundle, Cell, Score, patch_file
from atlas.devices import key_part
from atlas.featurevis.icon_files import load_icons
from atlas.featurevis.image_statistics import image_statistics
from atlas.featurevis.pathcheck import choose_layers, early_vectors, path_check, path_layouts, reads_own_layouts
from atlas.models import LayerLayout, ModelView, resolve_layer
from atlas.models.input_sizes import only_input_size
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall

READ_BATCH = 256  # images read and fed at a time: a 320 grid's icons would be gigabytes as one float tensor


def path_layers(run: RunInputs) -> list[str]:
    return choose_layers(run.model, run.config.model.layer, run.config.path_check.layers, reads_own_layouts(run.view))


def cell_patches(cell: Cell, per_cell: int, written: Set[str]) -> list[str]:
    """The patches the examples stage wrote for a cell's first ``per_cell`` examples."""
    names = [patch_file(e.image_id, e.y, e.x) for e in cell.examples[:per_cell]]
    return [name for name in names if name in written]


def _read(bundle: Bundle, name: str, channels: int) -> torch.Tensor | None:
    """One image as [C, H, W] in [0, 1]; None for a patch that cannot be read (that cell is checked without it)."""
    try:
        return load_icons(bundle, [name], channels, 0)[0]
    except (OSError, UnidentifiedImageError):
        return None


@dataclass(frozen=True)
class EarlyLayers:
    """The layers the check reads, how each is read (None: as the atlas layer), and the one input size images are
    resized to for a model that takes no other (None: each fed at its own size)."""

    modules: list[torch.nn.Module]
    layouts: list[LayerLayout] | None
    fixed_size: int | None


def vectors_of(bundle: Bundle, names: list[str], view: ModelView, early: EarlyLayers, strict: bool) -> list[np.ndarray | None]:
    """Each named image's early vector (None: unreadable, allowed only when not ``strict``), READ_BATCH at a time."""
    prep = view.preprocessing
    found: list[np.ndarray | None] = []
    for start in range(0, len(names), READ_BATCH):
        chunk = names[start : start + READ_BATCH]
        images = [load_icons(bundle, [name], prep.channels, 0)[0] if strict else _read(bundle, name, prep.channels) for name in chunk]
        readable = [image for image in images if image is not None]
        vectors = iter(early_vectors(view, early.modules, readable, layouts=early.layouts, fixed_size=early.fixed_size))
        found += [next(vectors) if image is not None else None for image in images]
    return found


def check_paths(call: StageCall) -> Report:
    run = call.run
    bundle, view = run.bundle, run.view
    names = path_layers(run)
    early = EarlyLayers([resolve_layer(view.model, name) for name in names], path_layouts(view, names), only_input_size(view))
    per_cell = run.config.tiles.examples_per_cell
    written = bundle.patches()
    cells = {size: bundle.grid_cells(size) for size in run.config.grid.sizes}
    unique = sorted({name for grid in cells.values() for cell in grid for name in cell_patches(cell, per_cell, written)})
    patch_vectors = dict(zip(unique, vectors_of(bundle, unique, view, early, strict=False)))
    run.log(f"[path] {len(unique)} example patches at {', '.join(names)}")
    levels = []
    for size, grid in cells.items():
        icons = [v for v in vectors_of(bundle, [bundle.fed_image(c.icon) for c in grid], view, early, strict=True) if v is not None]
        dim = len(icons[0]) if icons else 0
        examples = []
        for cell in grid:
            rows = [v for v in (patch_vectors[name] for name in cell_patches(cell, per_cell, written)) if v is not None]
            examples.append(np.stack(rows) if rows else np.zeros((0, dim), np.float32))
        result = path_check(np.stack(icons) if icons else np.zeros((0, dim), np.float32), examples)
        bundle.write_path_check(size, [Score.maybe_from_json(record) for record in result.records()])
        summary = None
        if result.cells:
            summary = {"mean_cosine": round(result.mean_cosine, 4), "top1": round(result.top1, 4), "cells": result.cells, "layers": names}
            if result.nonfinite:
                summary["nonfinite"] = result.nonfinite
            run.log(f"[path] grid {size}: top-1 {result.top1:.2f}, mean cosine {result.mean_cosine:.2f} over {result.cells} cells")
        else:
            run.log(f"[path] grid {size}: no cell with an example patch to check")
        statistics = level_statistics(bundle, grid, per_cell, written, view.preprocessing.channels)
        if statistics:
            run.log(f"[path] grid {size}: {describe_statistics(statistics)}")
        levels.append({"grid": size, "path_check": summary, "image_statistics": statistics})
    return {"levels": levels}


def level_statistics(bundle: Bundle, grid: list[Cell], per_cell: int, written: set[str], channels: int) -> dict[str, Any] | None:
    """The icons' spectral slope and colourfulness beside their cells' example patches' (atlas.featurevis.image_statistics)."""
    icons = image_statistics(image for image in (_read(bundle, cell.icon, channels) for cell in grid) if image is not None)
    patches = sorted({name for cell in grid for name in cell_patches(cell, per_cell, written)})
    examples = image_statistics(image for image in (_read(bundle, name, channels) for name in patches) if image is not None)
    if icons is None:
        return None
    return {"icons": icons.to_json(), "examples": None if examples is None else examples.to_json()}


def describe_statistics(statistics: dict[str, Any]) -> str:
    def one(entry: dict[str, Any] | None) -> str:
        return "-" if entry is None else f"{entry['spectral_slope']:.2f} / {entry['colourfulness']:.1f}"

    return f"spectral slope / colourfulness: icons {one(statistics['icons'])}, their example patches {one(statistics['examples'])}"


def path_settings(run: RunInputs) -> list[Any]:
    """The chosen layers (so 'auto' re-runs if its choice changes) and the device off the CPU."""
    return [path_layers(run), *key_part(run.device)]


STAGE = Stage("path", reads=("render", "examples"), settings=path_settings, work=check_paths, version=2)  # 2: image statistics
