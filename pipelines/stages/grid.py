"""Grid stage: every grid size's kept cells, their directions and their mean attribution, streamed from the store on the driver."""

from __future__ import annotations

from typing import Any

from atlas.bundle import Cell, attribution_file, cells_file, directions_file
from atlas.grid import build_grids
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall


def grid_settings(run: RunInputs) -> Any:
    # fit_to_rows only chose the sizes, which are here as chosen: rows that fill the configured sizes keep their key
    return [run.config.grid.model_dump(mode="json", exclude={"fit_to_rows"}), run.labels]


def grid(call: StageCall) -> Report:
    run = call.run
    config, bundle = run.config.grid, run.bundle
    store = bundle.store()
    shape = store.layout()
    levels = []
    streamed = build_grids(
        bundle.coords(), store.chunks, config.sizes, config.min_count, run.labels, shape.channels, shape.n_classes,
        config.top_classes, config.examples,
    )  # fmt: skip
    for level in streamed:
        size = level.size
        bundle.write_grid_cells(size, [Cell.from_json(cell) for cell in level.cells])
        bundle.write_directions(size, level.directions)
        entry: dict[str, Any] = {"grid": size, "cells": cells_file(size), "directions": directions_file(size), "n_cells": len(level.cells)}
        if run.n_classes:
            bundle.write_attribution(size, level.mean_attribution)
        entry["attribution"] = attribution_file(size) if run.n_classes else None
        if not level.cells:
            entry["note"] = (
                f"no cell of this grid holds grid.min_count = {config.min_count} activations; lower it, give smaller grid.sizes "
                "(or grid.fit_to_rows=true), or collect more rows (collect.positions_per_image, collect.target_rows)"
            )
        levels.append(entry)
    return {"levels": levels}


STAGE = Stage("grid", reads=("layout",), settings=grid_settings, work=grid)
