"""``atlas compare`` on any models (``compare.models``): the same images through each, one aligned atlas per model,
and the measures that say how their representations differ.

The first model samples its rows as any atlas does; every other model reads the same images at the same points of
the input (each position mapped to its own layer's grid, :data:`atlas.collect.sampling.SAME_ROWS_RULE`), so a CNN's
7 x 7 map and a ViT's 7 x 7 patch tokens, or maps of different sizes, give rows that pair one to one. On those rows:
aligned layouts, linear CKA between every pair of models, a linear probe of each, and with a model's ``layers`` the
same measures across its depth (and across models at matched depth, where every model lists as many layers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from atlas.bundle import Bundle
from atlas.compare.page import write_page
from atlas.compare.plots import plot_histograms
from atlas.compare.similarity import cka_matrix, cka_table, linear_probe
from atlas.config import AtlasConfig, ExperimentConfig, ModelConfig
from atlas.devices import resolve_device
from atlas.errors import AtlasError
from atlas.io import write_json
from atlas_pipelines.commands.compare import FORMAT, build_group, metrics_row, similarity_figures, slug
from atlas_pipelines.commands.run import run_atlas
from atlas_pipelines.commands.train import experiment_dir
from atlas_pipelines.engine.context import SameRows
from atlas_pipelines.engine.executor import Executor, LazyExecutor


def run_model_comparison(
    config: ExperimentConfig, log: Callable[[str], None] = print, executor: Callable[[], Executor] | None = None
) -> Path:
    """Build, align and measure one atlas per model of ``compare.models``; writes ``compare.json`` and the page.

    ``executor``: a cluster already open (``atlas.compare`` passes the caller's client and in-memory models)."""
    models = config.compare.models
    assert models is not None
    root = experiment_dir(config)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "models"
    bundles = {name: model_bundle_config(config, name, section, folder) for name, section in models.items()}
    with ExitStack() as stack:
        executor = executor or LazyExecutor(config.scheduler, stack, log, resolve_device(config.device))
        group = build_group(
            config, executor, log, title=f"{len(models)} models", kind="models", bundles=bundles, folder=folder, match_rows=True
        )
        depth = depth_measures(config, models, group, executor, log, root / "depth")
    names = list(models)
    panels = group["panels"]
    figures = {"histograms": "figures/histograms.png", **similarity_figures(root, [group], depth)}
    plot_histograms({p["name"]: p["_histogram"] for p in panels}, "each model's compared layer", root / figures["histograms"])
    result = {
        "format": FORMAT,
        "name": config.name,
        "mode": "models",
        "title": f"{config.name}: {', '.join(f'{n} at {models[n].layer}' for n in names)} on {config.images.source}",
        "architecture": "models",
        "dataset": config.images.source,
        "layer": {name: section.layer for name, section in models.items()},
        "models": {name: {"spec": section.spec, "layer": section.layer} for name, section in models.items()},
        "metrics": [metrics_row(name, trained_metrics(models[name]), panels[k]) for k, name in enumerate(names)],
        "claims": [],
        "figures": figures,
        "groups": [{k: v for k, v in group.items() if not k.startswith("_")}],
        "depth": depth,
        "config": config.model_dump(mode="json"),
    }
    write_json(root / "compare.json", result)
    write_page(root, result)
    log(f"atlas compare: {len(models)} models -> {root}; view it with: atlas serve {root}")
    return root


def model_option(text: str) -> tuple[str, dict[str, str]]:
    """``--model NAME=SPEC:LAYER`` -> (NAME, {spec, layer}); SPEC may hold colons (``package.module:factory``), the
    layer is after the last one."""
    name, equals, rest = text.partition("=")
    spec, colon, layer = rest.rpartition(":")
    if not equals or not name or not colon or not spec or not layer:
        raise AtlasError(
            f"--model {text!r}: expected NAME=SPEC:LAYER, e.g. relu=outputs/compare_activations/train/relu:features.act5 "
            "(atlas layers SPEC lists a model's layers)"
        )
    return name, {"spec": spec, "layer": layer}


def model_bundle_config(config: ExperimentConfig, name: str, section: ModelConfig, folder: Path, layer: str | None = None) -> AtlasConfig:
    """The shared atlas settings with this model's section (at ``layer``, default its own), written to ``folder/name``.

    The section's ``layers`` are the comparison's (CKA across depth), not a layer chooser: the bundle is of one layer.
    """
    tree = config.model_dump(exclude={"train", "compare"})
    model = section.model_dump(exclude_unset=True)
    model.pop("layers", None)
    tree["model"] = {**model, "layer": layer or section.layer}
    tree["output"] = {**tree["output"], "dir": folder, "name": name}
    return AtlasConfig.model_validate(tree)


def trained_metrics(section: ModelConfig) -> dict[str, Any]:
    """The training record ``atlas train`` leaves beside a variant's weights (``metrics.json``); empty for any other
    model, whose accuracy is then unknown to the comparison."""
    path = Path(section.spec) / "metrics.json"
    try:
        loaded = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def depth_measures(
    config: ExperimentConfig,
    models: dict[str, ModelConfig],
    group: dict[str, Any],
    executor: Callable[[], Executor],
    log: Callable[[str], None],
    folder: Path,
) -> dict[str, Any] | None:
    """Per model with ``layers``: CKA between its layers and a probe of each, on the group's rows; across models, CKA
    at each depth when every model lists as many layers. Layers other than the compared one are collected only."""
    deep = {name: section.layers for name, section in models.items() if section.layers}
    if not deep:
        return None
    reference: SameRows = group["_reference"]
    group_rows = group["_rows"]
    first = next(iter(group_rows.values()))
    activations: dict[str, list[np.ndarray]] = {}
    result: dict[str, Any] = {"models": {}}
    for name, layers in deep.items():
        activations[name] = []
        probes = {}
        for layer in layers:
            if layer == models[name].layer:
                rows = group_rows[name]
            else:
                log(f"[compare] depth: {name} ({layer})")
                bundle = model_bundle_config(config, slug(layer), models[name], folder / name, layer)
                rows = Bundle(run_atlas(bundle, until="collect", log=log, executor=executor, same_rows=reference)).rows()
            if len(rows) != len(first) or not np.array_equal(rows.image_id, first.image_id):
                raise AtlasError(
                    f"compare: {name} at {layer} gave {len(rows)} rows, not the {len(first)} of the other layers; a layer must give every image's row"
                )
            activations[name].append(rows.activation)
            probes[layer] = linear_probe(rows.activation, rows.label, config.seed, config.compare.probe_test_fraction)
        result["models"][name] = {"layers": list(layers), "cka": cka_table(list(layers), cka_matrix(activations[name])), "probes": probes}
    depths = {len(layers) for layers in deep.values()}
    if len(deep) == len(models) and len(depths) == 1:
        names = list(deep)
        result["matched"] = [
            {
                "depth": d,
                "layers": {name: deep[name][d] for name in names},
                "cka": cka_table(names, cka_matrix([activations[n][d] for n in names])),
            }
            for d in range(depths.pop())
        ]
    return result


__all__ = ["depth_measures", "model_bundle_config", "model_option", "run_model_comparison", "trained_metrics"]
