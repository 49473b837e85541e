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
import dataclasses
import importlib.metadata
from typing import Any

from atlas.bundle import FORMAT, VIEWER, Bundle, Cell, Manifest, alpha_file, patch_file
from atlas.viewer import install_viewer
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, StageRecord, merge_reports

VERSIONED = ("activation-atlas", "torch", "torchvision", "timm", "umap-learn", "dask", "distributed", "numpy", "scikit-learn", "zarr")


def assemble(run: RunInputs, records: dict[str, StageRecord], more: Report | None = None) -> dict[str, Any]:
    """Write every grid's ``cells.json``, the viewer (once tiles exist) and ``manifest.json``; returns the manifest.

    ``more``: what the run adds beside its stages' reports (``model.layers``: the manifest's ``layers``)."""
    bundle, config = run.bundle, run.config
    viewer_levels = []
    if "grid" in records:
        patches = bundle.patches() if "examples" in records else None
        for size in config.grid.sizes:
            cells = joined_cells(bundle, size, "render" in records, patches, config.tiles.examples_per_cell, "path" in records,
                                 rendered_alpha(records))  # fmt: skip
            bundle.write_cells(size, cells)
            viewer_levels.append({"grid": size, **bundle.write_viewer_cells(size, cells)})
    if "tiles" in records:
        install_viewer(bundle)
    reports = [record.report for record in records.values()]
    manifest = merge_reports(base_manifest(run), *reports, more or {}, {"levels": viewer_levels})
    if "render" in manifest:
        manifest["render"]["seconds"] = records["render"].seconds
    if "tiles" in records:
        manifest["viewer"] = VIEWER
    manifest["stages"] = {name: {"seconds": r.seconds, "cached": r.cached} for name, r in records.items()}
    bundle.write_manifest(Manifest.from_json(manifest))
    return manifest


def rendered_alpha(records: dict[str, StageRecord]) -> bool:
    """Whether render wrote transparency maps."""
    report = records["render"].report.get("render", {}) if "render" in records else {}
    return bool(report.get("alpha"))


def joined_cells(
    bundle: Bundle,
    size: int,
    rendered: bool,
    patches: set[str] | None,
    per_cell: int,
    checked: bool = False,
    alphas: bool = False,
) -> list[Cell]:
    """Each cell with its fidelity, its icon's full view (where render recorded keeping them) and transparency map
    (``alphas``: render's report says it wrote them), its path check and its shown examples' patches."""
    fidelity = bundle.fidelity(size) if rendered else None
    paths = bundle.path_check(size) if checked else None
    cells = []
    for n, cell in enumerate(bundle.grid_cells(size)):
        if fidelity is not None:
            cell = dataclasses.replace(
                cell,
                fidelity=fidelity[n],
                view=bundle.full_view(cell.icon),
                alpha=alpha_file(cell.icon) if alphas else None,
            )
        if paths is not None:
            cell = dataclasses.replace(cell, path_check=paths[n], path_checked=True)
        if patches is not None:
            shown = [patch_file(e.image_id, e.y, e.x) for e in cell.examples]
            examples = [dataclasses.replace(e, patch=name) if k < per_cell and name in patches else e
                        for k, (e, name) in enumerate(zip(cell.examples, shown))]  # fmt: skip
            cell = dataclasses.replace(cell, examples=tuple(examples))
        cells.append(cell)
    return cells


def base_manifest(run: RunInputs) -> dict[str, Any]:
    """What every manifest says about its run, before any stage's report."""
    config, prep = run.config, run.model.preprocessing
    return {
        "format": FORMAT,
        "name": config.name,
        "model": config.model.spec,
        "layer": config.model.layer,
        "channels": run.view.channels,  # through the layout: the length of one position's vector, as collect stores it
        "layer_shape": list(run.layer_shape),
        "layer_layout": run.view.layout.to_json(),
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
        "config": (run.given or config).model_dump(mode="json"),  # as given; what the data decided is under choices
        **({"choices": dict(run.choices)} if run.choices else {}),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found
