"""``atlas compare``: one atlas per trained variant (and per compared layer), aligned, measured, on one page.

Flow: train what is missing, collect every variant's rows at the same layer on
the same images and positions, fit the aligned layouts, then finish every
bundle with ``layout.coords`` pointing at its aligned coordinates, so each
bundle is an ordinary atlas that follows the output contract. The comparison
itself adds ``compare.json``, the figures and the page at the experiment root.
Every step is cached: bundles by their stages, alignments by a key over their
inputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from atlas.bundle import Bundle, stage_marker
from atlas.collect.sampling import SAME_ROWS_RULE
from atlas.compare.align import aligned_layouts, alignment_error, independent_layouts, neighbour_agreement
from atlas.compare.claims import activation_cost, check_claims
from atlas.compare.measures import activation_histogram, class_purity, layer_statistics, trustworthiness_of
from atlas.compare.page import write_page
from atlas.compare.plots import plot_cka, plot_dictionaries, plot_functions, plot_gradients, plot_histograms, plot_training
from atlas.compare.similarity import cka_matrix, cka_table, linear_probe, matrix_of
from atlas.config import AtlasConfig, ExperimentConfig
from atlas.devices import resolve_device
from atlas.dictionary import default_features, default_k
from atlas.errors import AtlasError
from atlas.io import write_json, write_npy
from atlas.markers import clear_marker, is_fresh, read_marker, write_marker
from atlas.models.zoo import DEFAULT_LAYERS
from atlas.storage import require_local
from atlas.train.data import TrainingData
from atlas_pipelines.commands.run import run_atlas
from atlas_pipelines.commands.train import experiment_dir, run_training, variant_dir
from atlas_pipelines.engine.context import SameRows
from atlas_pipelines.engine.executor import Executor, LazyExecutor
from atlas_pipelines.engine.stage import fingerprint
from atlas_pipelines.engine.worker_state import model_view, use_threads
from atlas_pipelines.stages.layout import layout_estimator

FORMAT = "atlas-compare/1"


def run_compare(config: ExperimentConfig, log: Callable[[str], None] = print, executor: Callable[[], Executor] | None = None) -> Path:
    """Train, build and align every atlas of the experiment, then write ``compare.json`` and the page; with
    ``compare.models``, the models given instead of trained variants (:mod:`atlas_pipelines.commands.compare_models`)."""
    if config.compare.models is not None:
        from atlas_pipelines.commands.compare_models import run_model_comparison

        return run_model_comparison(config, log, executor)
    root = experiment_dir(config)
    root.mkdir(parents=True, exist_ok=True)
    layer = config.compare.layer or DEFAULT_LAYERS[config.train.architecture]
    names = list(config.train.activations)
    if config.compare.layers and (config.compare.layers_of or names[0]) not in names:
        raise AtlasError(f"compare.layers_of {config.compare.layers_of!r} is not a trained variant; choose one of {', '.join(names)}")
    with ExitStack() as stack:
        executor = executor or LazyExecutor(config.scheduler, stack, log, resolve_device(config.device))
        metrics, data = run_training(config, executor, log)
        variants = root / "variants"
        groups = [
            build_group(
                config, executor, log,
                title=f"{len(names)} activations at {layer}", kind="activations",
                bundles={name: _bundle_config(config, data, variant_dir(config, name), layer, variants, name) for name in names},
                folder=variants,
            )
        ]  # fmt: skip
        if config.compare.layers:
            of = config.compare.layers_of or names[0]
            layers = root / "layers"
            groups.append(
                build_group(
                    config, executor, log,
                    title=f"layers of the {of} variant", kind="layers",
                    bundles={slug(name): _bundle_config(config, data, variant_dir(config, of), name, layers, slug(name)) for name in config.compare.layers},
                    folder=layers,
                    match_rows=True,  # layers of different grids: the first one's input points, read at each
                )
            )  # fmt: skip
    cost = activation_cost(names, seed=config.seed)
    figures = _figures(root, names, metrics, groups)
    table = [metrics_row(name, metrics[name], groups[0]["panels"][k]) for k, name in enumerate(names)]
    claims = check_claims(metrics, cost, config.train.architecture, groups[0]["cka"])
    result = {
        "format": FORMAT,
        "name": config.name,
        "architecture": config.train.architecture,
        "dataset": config.train.dataset,
        "layer": layer,
        "activations": names,
        "metrics": table,
        "claims": claims,
        "activation_cost_s": {name: float(np.median(times)) for name, times in cost.items()},
        "figures": figures,
        "groups": [{k: v for k, v in g.items() if not k.startswith("_")} for g in groups],
        "config": config.model_dump(mode="json"),
    }
    write_json(root / "compare.json", result)
    write_page(root, result)
    log(f"atlas compare: {len(names)} variants -> {root}; view it with: atlas serve {root}")
    return root


def build_group(
    config: ExperimentConfig,
    executor: Callable[[], Executor],
    log: Callable[[str], None],
    title: str,
    kind: str,
    bundles: dict[str, AtlasConfig],
    folder: Path,
    match_rows: bool = False,
) -> dict[str, Any]:
    """Collect every member, align their layouts, finish their bundles; returns the group's panels and measures.

    ``match_rows``: members after the first read the first one's rows (its images and positions, each mapped to the
    position of their own grid over the same input point) instead of sampling: models of different architectures,
    or layers of different grids.
    The group's rows (``_rows``) stay with it for the measures across groups; they are not written to JSON.
    """
    keys, rows = {}, {}
    reference: SameRows | None = None
    for name, bundle in bundles.items():
        log(f"[compare] {kind}: {name} ({bundle.model.layer})")
        collected = Bundle(run_atlas(bundle, until="collect", log=log, executor=executor, same_rows=reference))
        keys[name] = (read_marker(collected.path(stage_marker("collect"))) or {})["key"]
        rows[name] = collected.rows()
        if match_rows and reference is None:
            reference = reference_rows(collected, bundle, keys[name])
    _check_same_rows(rows)
    coords = _aligned(config, folder, keys, {n: r.activation for n, r in rows.items()}, executor, log)
    if kind == "activations":
        bundles = _one_dictionary_shape(bundles, rows)
    panels = []
    for k, (name, bundle) in enumerate(bundles.items()):
        finished = bundle.model_copy(update={"layout": bundle.layout.model_copy(update={"coords": aligned_path(folder, name)})})
        run_dir = run_atlas(finished, log=log, executor=executor, same_rows=reference if k else None)
        manifest = Bundle(run_dir).manifest
        r = rows[name]
        panels.append({
            "name": name,
            "layer": bundle.model.layer,
            "bundle": str(require_local(run_dir, "output.dir").relative_to(experiment_dir(config))),
            "levels": [level.to_json() for level in manifest.levels],
            "channels": int(r.activation.shape[1]),
            "statistics": layer_statistics(r.activation),
            "trustworthiness": trustworthiness_of(r.activation, coords[name], config.compare.measure_sample, config.seed),
            "class_purity": {str(g): class_purity(coords[name], r.label, g, config.grid.min_count) for g in config.grid.sizes},
            "fidelity": {str(level.grid): level.document.get("fidelity") for level in manifest.levels},
            "dictionary": _dictionary_summary(manifest.get("dictionary")),
            "probe": linear_probe(r.activation, r.label, config.seed, config.compare.probe_test_fraction),
            "_histogram": activation_histogram(r.activation),
        })  # fmt: skip
    layouts = [coords[name] for name in bundles]
    names = list(bundles)
    first = rows[names[0]]
    return {
        "title": title,
        "kind": kind,
        "panels": panels,
        "alignment": {
            "method": config.compare.align,
            "mean_shift": alignment_error(layouts),
            "neighbour_agreement_k10": neighbour_agreement(layouts),
        },
        "rows": {
            "count": len(first),
            "images": len(np.unique(first.image_id)),
            "match": "nearest" if match_rows else "same",
            "rule": SAME_ROWS_RULE if match_rows else "every member samples the same images and positions of one grid",
            **({"reference": names[0]} if match_rows else {}),
        },
        "cka": cka_table(names, cka_matrix([rows[name].activation for name in names])),
        "_rows": rows,
        "_reference": reference,
    }


def reference_rows(collected: Bundle, bundle: AtlasConfig, key: str) -> SameRows:
    """The first member's rows as the others read them: its store, and its layer's grid to map positions from."""
    store = collected.store()
    grid = model_view(bundle.model, str(resolve_device(bundle.device))).grid
    return SameRows(store.path, grid, store.layout().rows_per_shard, key)


def _one_dictionary_shape(bundles: dict[str, AtlasConfig], rows: dict[str, Any]) -> dict[str, AtlasConfig]:
    """Every variant's dictionary gets the same width and k, set explicitly: ``auto`` resolved once from the rows
    and channels the variants share (the same layer of one architecture, the same images), so the comparison of
    variance explained, dead features and density is between dictionaries of one shape."""
    section = next(iter(bundles.values())).dictionary
    if section is None or (section.k != "auto" and section.features != "auto"):
        return bundles
    first = next(iter(rows.values()))
    channels, count = int(first.activation.shape[1]), len(first)
    k = default_k(channels) if section.k == "auto" else section.k
    features = default_features(channels, count, k) if section.features == "auto" else section.features
    shape = section.model_copy(update={"k": k, "features": features})
    return {name: bundle.model_copy(update={"dictionary": shape}) for name, bundle in bundles.items()}


def _dictionary_summary(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A variant's dictionary as the comparison reports it; mean feature density is the share of (row, feature)
    pairs that are active, which is mean L0 / features."""
    if entry is None:
        return None
    quality = entry["quality"]
    return {
        "features": entry["features"], "k": entry["k"], "variance_explained": quality["variance_explained"],
        "dead_fraction": quality["dead_fraction"], "mean_l0": quality["mean_l0"],
        "mean_density": quality["mean_l0"] / entry["features"],
    }  # fmt: skip


def _bundle_config(config: ExperimentConfig, data: TrainingData, model_dir: Path, layer: str, folder: Path, name: str) -> AtlasConfig:
    """The shared atlas settings, pointed at one trained variant, one layer, and the test images."""
    tree = config.model_dump(exclude={"train", "compare"})
    tree["model"] = {**tree["model"], "spec": str(model_dir), "layer": layer}
    if "source" not in config.images.model_fields_set:
        tree["images"] = {**tree["images"], "source": data.images_source, "root": config.train.root}
    tree["output"] = {"dir": folder, "name": name}
    return AtlasConfig.model_validate(tree)


def _check_same_rows(rows: dict[str, Any]) -> None:
    first_name, first = next(iter(rows.items()))
    for name, r in rows.items():
        if len(r) != len(first) or not np.array_equal(r.image_id, first.image_id):
            raise AtlasError(
                f"compare: {name} has {len(r)} rows but {first_name} has {len(first)} from other images; "
                "the variants must see the same readable images (same images.source and collect settings)"
            )


def _align_task(activations: list[np.ndarray], config: ExperimentConfig, threads: int) -> list[np.ndarray]:
    """Runs on a worker, where umap's JIT is paid once per process: aligned layouts, or one plain UMAP each (align: none)."""
    use_threads(threads)
    layout = layout_estimator(config.layout, config.seed)
    if config.compare.align == "none":
        return independent_layouts(activations, layout)
    return aligned_layouts(
        activations, layout, regularisation=config.compare.alignment_regularisation, window=config.compare.alignment_window
    )


def _aligned(
    config: ExperimentConfig,
    folder: Path,
    keys: dict[str, str],
    activations: dict[str, np.ndarray],
    executor: Callable[[], Executor],
    log: Callable[[str], None],
) -> dict[str, np.ndarray]:
    """Aligned coordinates per member, cached under ``folder/.aligned`` by a key over the rows and settings."""
    n_rows = len(next(iter(activations.values())))
    if n_rows > config.layout.fit_sample:
        raise AtlasError(
            f"compare: {n_rows} rows per variant but layout.fit_sample is {config.layout.fit_sample}; aligned layouts fit every row, "
            "so lower collect.n_images or raise layout.fit_sample"
        )
    marker = folder / ".aligned" / "key.json"
    align = config.compare.model_dump(mode="json", include={"align", "alignment_regularisation", "alignment_window"})
    # An ordered list: AlignedUMAP links neighbouring members, so their order is part of the result.
    key = fingerprint("aligned", list(keys.items()), config.layout.model_dump(mode="json", exclude={"coords"}), align, config.seed)
    paths = {name: aligned_path(folder, name) for name in activations}
    if is_fresh(marker, key, paths.values()):
        log(f"[compare] aligned layouts cached ({len(paths)} members)")
        return {name: np.load(path) for name, path in paths.items()}
    clear_marker(marker)  # from here until the new marker, the files on disk are not one fit
    log(f"[compare] aligning {len(activations)} layouts of {n_rows} rows ({config.compare.align})")
    ex = executor()
    layouts = ex.submit(_align_task, list(activations.values()), config, ex.threads_per_task).result()
    for name, coords in zip(activations, layouts):
        write_npy(paths[name], coords)
    write_marker(marker, key)
    return dict(zip(activations, layouts))


def aligned_path(folder: Path, name: str) -> Path:
    return folder / ".aligned" / f"{name}.npy"


def metrics_row(name: str, metrics: dict[str, Any], panel: dict[str, Any]) -> dict[str, Any]:
    """One row of the measurements table; ``metrics``: the variant's training record (empty for a model atlas did not
    train, whose accuracy, speed and dead units are then unknown)."""
    fid = [f for f in panel["fidelity"].values() if f]
    finest = max(panel["class_purity"], key=int)
    sae = panel["dictionary"]
    probe = panel.get("probe")
    return {
        "variant": name,
        "test_accuracy": metrics.get("test_accuracy"),
        "seconds_per_epoch": metrics.get("seconds_per_epoch"),
        "dead_fraction": metrics.get("units", {}).get("dead_fraction"),
        "probe_accuracy": probe["accuracy"] if probe else None,
        "inactive_fraction": panel["statistics"]["inactive_fraction"],
        "hoyer_sparsity": panel["statistics"]["hoyer_sparsity"],
        "activation_mean": panel["statistics"]["mean"],
        "activation_std": panel["statistics"]["std"],
        "trustworthiness": panel["trustworthiness"],
        "class_purity": panel["class_purity"][finest],
        "class_purity_grid": int(finest),
        "icon_cosine": float(np.mean([f["mean_cosine"] for f in fid])) if fid else None,
        "icon_top1": float(np.mean([f["top1"] for f in fid])) if fid else None,
        "sae_variance_explained": sae["variance_explained"] if sae else None,
        "sae_dead_fraction": sae["dead_fraction"] if sae else None,
        "sae_mean_density": sae["mean_density"] if sae else None,
    }


def _figures(root: Path, names: list[str], metrics: dict[str, dict[str, Any]], groups: list[dict[str, Any]]) -> dict[str, str]:
    group = groups[0]
    figures = {
        "functions": "figures/functions.png",
        "training": "figures/training.png",
        "gradients": "figures/gradients.png",
        "histograms": "figures/histograms.png",
    }
    plot_functions(names, root / figures["functions"])
    plot_training(metrics, root / figures["training"])
    plot_gradients(metrics, root / figures["gradients"])
    plot_histograms({p["name"]: p["_histogram"] for p in group["panels"]}, group["panels"][0]["layer"], root / figures["histograms"])
    figures.update(similarity_figures(root, groups))
    dictionaries = {p["name"]: p["dictionary"] for p in group["panels"] if p["dictionary"] is not None}
    if dictionaries:
        figures["dictionaries"] = "figures/dictionaries.png"
        plot_dictionaries(dictionaries, root / figures["dictionaries"])
    return figures


def similarity_figures(root: Path, groups: list[dict[str, Any]], depth: dict[str, Any] | None = None) -> dict[str, str]:
    """The CKA heatmaps: every group's members, then each model's layers across depth."""
    figures = {"cka": "figures/cka.png"}
    plot_cka({g["title"]: matrix_of(g["cka"]) for g in groups}, root / figures["cka"])
    if depth and depth.get("models"):
        figures["cka_depth"] = "figures/cka_depth.png"
        plot_cka({f"{name} across depth": matrix_of(d["cka"]) for name, d in depth["models"].items()}, root / figures["cka_depth"])
    return figures


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
