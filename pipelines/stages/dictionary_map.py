"""The dictionary stage's feature map (``dictionary/map/``): a sub-bundle of the bundle's own format, like a class
atlas, so the same viewer opens it. Its layout (``layout/coords.npy``, one row per feature) is UMAP of the decoder directions (atlas.dictionary.feature_map); a
cell holds the features that land in it (``features``, densest first) and shows its densest feature's icon, top
classes, examples and fidelity; tiles are cut by the tiles stage's own task."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from atlas.bundle import DICTIONARY_MAP, BundleWriter, Cell, CellExample, Manifest, TopClass, dzi_file, icon_file, poster_file
from atlas.dictionary.feature_map import feature_coords, map_cells
from atlas.io import write_bytes
from atlas.viewer import install_viewer
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.stages.assemble import base_manifest
from atlas_pipelines.stages.tiles import cell_scale, tile_grid_task

PARENT = "../.."  # the parent bundle, from the map's folder


def write_feature_map(run: RunInputs, decoder: np.ndarray, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Writes the map's sub-bundle and returns the dictionary entry's ``map``; None without feature icons to show."""
    if not all(record.get("icon") for record in records):
        return None
    bundle, config, started = run.bundle, run.config, time.perf_counter()
    sub = BundleWriter(bundle.path(DICTIONARY_MAP))
    coords = feature_coords(decoder, config.layout.n_neighbors, config.seed)
    sub.write_coords(coords)
    density = np.array([record["density"] for record in records])
    icon_px = config.render.icon_size
    scale = cell_scale(config.tiles, icon_px)
    bands = 1 if run.model.preprocessing.channels == 1 else 3
    levels = []
    for size in config.grid.sizes:
        cells = [feature_cell(bundle.path(records[c.features[0]]["icon"]).read_bytes(), sub, size, c.i, c.j, c.features, records)
                 for c in map_cells(coords, density, size)]  # fmt: skip
        sub.write_cells(size, cells)
        viewer = sub.write_viewer_cells(size, cells)
        tile_grid_task(sub, size, cells, icon_px, scale, bands, config.tiles.format, config.tiles.quality, 1)
        levels.append({"grid": size, "n_cells": len(cells), "icon_size": icon_px, "cell_px": icon_px * scale,
                       "canvas_px": size * icon_px * scale, "dzi": dzi_file(size), "poster": poster_file(size), **viewer})  # fmt: skip
    install_viewer(sub)
    run.log(f"[dictionary] feature map of {len(records)} features: {DICTIONARY_MAP}/ ({time.perf_counter() - started:.1f} s)")
    sub.write_manifest(Manifest.from_json({
        **base_manifest(run), "name": f"feature map of {config.name or 'the atlas'}", "levels": levels,
        "tiles": {"scale": scale, "channels": run.model.preprocessing.channels},
        "subset": {"kind": "features", "parent": PARENT, "features": len(records), "layout": "UMAP (cosine) of the decoder directions"},
    }))  # fmt: skip
    return {"folder": f"{DICTIONARY_MAP}/", "viewer": f"{DICTIONARY_MAP}/index.html", "grids": list(config.grid.sizes)}


def feature_cell(
    icon: bytes, sub: BundleWriter, size: int, i: int, j: int, features: tuple[int, ...], records: list[dict[str, Any]]
) -> Cell:
    """One cell of the map: its densest feature's icon (copied), classes, examples (the parent's patches) and fidelity."""
    record = records[features[0]]
    path = icon_file(size, i, j)
    write_bytes(sub.path(path), icon)
    examples = tuple(CellExample(e["row"], e["image_id"], e["y"], e["x"], f"{PARENT}/{e['patch']}" if e.get("patch") else None)
                     for e in record["examples"])  # fmt: skip
    return Cell(i, j, len(features), tuple(TopClass.from_json(t) for t in record.get("top_classes", [])), path, examples,
                extra={"features": list(features), "feature": features[0], "density": record["density"],
                       "feature_fidelity": record.get("fidelity")})  # fmt: skip
