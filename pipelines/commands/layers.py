"""``model.layers``: one atlas per layer of the same rows, the main one at the bundle, the others as sub-bundles.

The main bundle is ``model.layer``'s ordinary run. Each other layer is a bundle of the same contract under
``layers/<layer>/``, made by the same stage loop with the ordinary stages: its collect reads the main bundle's rows
again at its own layer (the same images, each position mapped to its grid:
:data:`atlas.collect.sampling.SAME_ROWS_RULE`) instead of sampling, and everything after is its own layout, grids,
icons and tiles. Every bundle of the run records the layers in its manifest's ``layers``, which the viewer's layer
chooser reads.

Collection runs one forward pass per layer, not one for all: forward-mode attribution pushes a tangent from each
layer to the output (about two forwards per layer whatever is shared), and a layer's store, key and markers stay its
own, so adding a layer later collects that layer only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from atlas.bundle import BundleWriter, layer_folder, stage_marker
from atlas.collect.sampling import SAME_ROWS_RULE
from atlas.config import AtlasConfig
from atlas.errors import AtlasError
from atlas.markers import read_marker
from atlas.models import ModelView
from atlas.models.layers import resolve_layer
from atlas_pipelines.engine.context import RunInputs, SameRows
from atlas_pipelines.engine.stage import Report, Stage, run_stages
from atlas_pipelines.engine.worker_state import model_view
from atlas_pipelines.stages.assemble import assemble

MAIN_FOLDER = "."  # the main bundle's folder, relative to itself


def other_layers(config: AtlasConfig) -> list[str]:
    """The layers beyond the main one, in ``model.layers`` order (none without the key)."""
    return [name for name in config.model.layers or () if name != config.model.layer]


def layer_views(main: ModelView, config: AtlasConfig, device: str) -> dict[str, ModelView]:
    """Every layer's view, the main one's first; an unknown name fails here, before any work, naming model.layers.

    Two names that would share a folder (only characters a folder cannot hold differ) are one line too."""
    views = {config.model.layer: main}
    folders: dict[str, str] = {}
    for name in other_layers(config):
        resolve_layer(main.model, name, key="model.layers")
        folder = layer_folder(name)
        if folder in folders:
            raise AtlasError(f"model.layers: {folders[folder]!r} and {name!r} would share the folder {folder}; list one of them")
        folders[folder] = name
        views[name] = model_view(layer_config(config, name, None).model, device)
    return views


def layer_config(config: AtlasConfig, layer: str, main_root: Any) -> AtlasConfig:
    """One more layer's own config: the run's, at ``layer``, written under the main bundle (``main_root``), without
    the optional sections (a dictionary is the main layer's)."""
    model = config.model.model_copy(update={"layer": layer, "layers": None})
    update: dict[str, Any] = {"model": model, "dictionary": None}
    if main_root is not None:
        folder = layer_folder(layer).split("/")
        update["output"] = config.output.model_copy(update={"dir": str(main_root / folder[0]), "name": folder[1]})
    return config.model_copy(update=update)


def layers_report(config: AtlasConfig, views: dict[str, ModelView], layer: str, same_rows: bool) -> Report:
    """The manifest's ``layers`` of the bundle of ``layer``: every layer's folder (relative to the main bundle) and
    grid, the rule that maps rows across them, and whether this bundle's rows are the main's one for one."""
    main = config.model.layer
    bundles = [
        {"layer": name, "folder": MAIN_FOLDER if name == main else layer_folder(name), "grid": list(view.grid)}
        for name, view in sorted(views.items(), key=lambda item: _order(config, item[0]))
    ]
    return {
        "layers": {
            "layer": layer,
            "main": MAIN_FOLDER if layer == main else "../..",
            "bundles": bundles,
            "rule": SAME_ROWS_RULE,
            "same_rows": same_rows,
        }
    }


def _order(config: AtlasConfig, name: str) -> int:
    return list(config.model.layers or (name,)).index(name)


def build_layers(main: RunInputs, views: dict[str, ModelView], stages: tuple[Stage, ...], until: str | None) -> dict[str, dict[str, Any]]:
    """Run (or resume) each other layer's atlas after the main bundle's stages; returns each one's manifest."""
    marker = read_marker(main.bundle.path(stage_marker("collect")))
    store = main.bundle.store()
    same = SameRows(store.path, main.view.grid, store.layout().rows_per_shard, None if marker is None else marker.get("key"))
    manifests = {}
    for layer in other_layers(main.config):
        config = layer_config(main.config, layer, main.bundle.root)
        bundle = BundleWriter(main.bundle.path(layer_folder(layer)))
        bundle.root.mkdir(parents=True, exist_ok=True)
        main.log(f"atlas: layer {layer!r} of the same rows -> {layer_folder(layer)}")
        run = dataclasses.replace(main, config=config, bundle=bundle, view=views[layer], same_rows=same)
        records = run_stages(stages, run, until if until in {stage.name for stage in stages} else None)
        nonfinite = records["collect"].report.get("nonfinite", {}).get("count", 0) if "collect" in records else 0
        more = {**layers_report(main.config, views, layer, same_rows=nonfinite == 0), "name": main.config.name}  # the run's atlas
        manifests[layer] = assemble(run, records, more)
    return manifests
