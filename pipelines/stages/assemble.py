"""The last step of every run: join the stages' outputs into ``cells.json`` and ``manifest.json``, once.

It also splits each grid's cells for the viewer (a file per 16 x 16 block of
cells, and an index of where each cell is), so the page never loads a fine
grid whole.

``cells.json`` of a grid is the grid stage's cells, with render's fidelity and the path
stage's check per cell and the examples stage's patches linked, for whichever of those stages
this run reached; the manifest is a base describing the run, merged with what
every stage reported (:func:`atlas_pipelines.engine.stage.merge_reports`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from typing import Any

from atlas.bundle import FORMAT, VIEWER, Bundle, alpha_file, cells_file, full_view_file, patch_file
from atlas.io import read_json
from atlas.viewer import install_viewer
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import StageRecord, merge_reports

VERSIONED = ("activation-atlas", "torch", "torchvision", "timm", "umap-learn", "dask", "distributed", "numpy", "scikit-learn", "zarr")


def assemble(run: RunInputs, records: dict[str, StageRecord]) -> dict[str, Any]:
    """Write every grid's ``cells.json``, the viewer (once tiles exist) and ``manifest.json``; returns the manifest."""
    bundle, config = run.bundle, run.config
    viewer_levels = []
    if "grid" in records:
        patches = bundle.patches() if "examples" in records else None
        for size in config.grid.sizes:
            cells = joined_cells(bundle, size, "render" in records, patches, config.tiles.examples_per_cell, "path" in records,
                                 rendered_extras(records))  # fmt: skip
            _write_if_changed(bundle, size, cells)
            viewer_levels.append({"grid": size, **bundle.write_viewer_cells(size, cells)})
    if "tiles" in records:
        install_viewer(bundle)
    reports = [record.report for record in records.values()]
    manifest = merge_reports(base_manifest(run), *reports, {"levels": viewer_levels})
    if "render" in manifest:
        manifest["render"]["seconds"] = records["render"].seconds
    if "tiles" in records:
        manifest["viewer"] = VIEWER
    manifest["stages"] = {name: {"seconds": r.seconds, "cached": r.cached} for name, r in records.items()}
    bundle.write_manifest(manifest)
    return manifest


def rendered_extras(records: dict[str, StageRecord]) -> tuple[bool, bool]:
    """Whether render kept full views (icons cropped to the receptive field) and transparency maps."""
    report = records["render"].report.get("render", {}) if "render" in records else {}
    return bool((report.get("frame") or {}).get("views")), bool(report.get("alpha"))


def joined_cells(
    bundle: Bundle,
    size: int,
    rendered: bool,
    patches: set[str] | None,
    per_cell: int,
    checked: bool = False,
    extras: tuple[bool, bool] = (False, False),
) -> list[dict[str, Any]]:
    """``extras``: link each icon's full view and its transparency map (render's report says whether it wrote them)."""
    views, alphas = extras
    cells = bundle.grid_cells(size)
    fidelity = bundle.fidelity(size) if rendered else None
    paths = bundle.path_check(size) if checked else None
    for n, cell in enumerate(cells):
        if fidelity is not None:
            cell["fidelity"] = fidelity[n]
            if views:
                cell["view"] = full_view_file(cell["icon"])
            if alphas:
                cell["alpha"] = alpha_file(cell["icon"])
        if paths is not None:
            cell["path_check"] = paths[n]
        if patches is not None:
            for k, example in enumerate(cell["examples"]):
                name = patch_file(example["image_id"], example["y"], example["x"])
                if k < per_cell and name in patches:
                    example["patch"] = name
    return cells


def _write_if_changed(bundle: Bundle, size: int, cells: list[dict[str, Any]]) -> None:
    """A re-run with nothing changed leaves the file (and its modification time) alone."""
    path = bundle.path(cells_file(size))
    if not path.is_file() or read_json(path) != cells:
        bundle.write_cells(size, cells)


def base_manifest(run: RunInputs) -> dict[str, Any]:
    """What every manifest says about its run, before any stage's report."""
    config, prep = run.config, run.model.preprocessing
    return {
        "format": FORMAT,
        "name": config.name,
        "model": config.model.spec,
        "layer": config.model.layer,
        "channels": run.layer_shape[0],
        "layer_shape": list(run.layer_shape),
        "input_size": prep.input_size,
        "input_channels": prep.channels,
        "n_images": 0,
        "n_activations": 0,
        "labels": run.labels,
        "activations": None,
        "coords": None,
        "whitening": None,
        "image_index": None,
        "skipped": {"count": 0, "files": []},
        "levels": [],
        "config": config.model_dump(mode="json"),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found
