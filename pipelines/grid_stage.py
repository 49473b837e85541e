"""Grid stage: every grid size's kept cells, their directions and their mean attribution, on the driver."""

from __future__ import annotations

from typing import Any

from atlas.bundle import attribution_file, cells_file, directions_file
from atlas.grid import build_grid
from pipelines.context import RunInputs
from pipelines.stage import Report, Stage, StageCall


def grid_settings(run: RunInputs) -> Any:
    return [run.config.grid.model_dump(mode="json"), run.labels]


def grid(call: StageCall) -> Report:
    run = call.run
    config, bundle = run.config.grid, run.bundle
    rows, coords = bundle.rows(), bundle.coords()
    levels = []
    for size in config.sizes:
        level = build_grid(
            coords, rows.activation, rows.attribution, rows.image_id, rows.y, rows.x,
            size, config.min_count, run.labels, config.top_classes, config.examples,
        )  # fmt: skip
        bundle.write_grid_cells(size, level.cells)
        bundle.write_directions(size, level.directions)
        entry: dict[str, Any] = {"grid": size, "cells": cells_file(size), "directions": directions_file(size), "n_cells": len(level.cells)}
        if run.n_classes:
            bundle.write_attribution(size, level.mean_attribution)
        entry["attribution"] = attribution_file(size) if run.n_classes else None
        if not level.cells:
            entry["note"] = f"no cell of this grid holds grid.min_count = {config.min_count} activations; lower it or collect more"
            run.log(f"[grid] grid {size}: {entry['note']}")
        levels.append(entry)
    return {"levels": levels}


GRID = Stage("grid", reads=("layout",), settings=grid_settings, work=grid)
