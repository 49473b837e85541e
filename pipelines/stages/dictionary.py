"""Dictionary stage (opt-in: the config's ``dictionary:`` section): a TopK sparse autoencoder of the layer.

One worker task streams the store twice: it trains the dictionary (atlas.dictionary.training), then measures it
and every feature with the saved arrays and the documented forward (atlas.dictionary.features). The driver writes
the arrays, the training curve, the attribution and one record per feature, whose top example rows get their
patches cut exactly as the examples stage cuts a cell's (it reads examples, so a re-run of examples, which removes
the patches no cell shows, re-runs this stage too), and whose icon is rendered towards its decoder direction by the
render stage's own batch task, settings and frame, then fed back through the model (fidelity).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.bundle import (
    DICTIONARY,
    DICTIONARY_ARRAYS,
    DICTIONARY_ATTRIBUTION,
    DICTIONARY_CURVE,
    DICTIONARY_FEATURES,
    Bundle,
    dictionary_array,
    dictionary_icon,
    patch_file,
)
from atlas.config import DictionaryConfig
from atlas.devices import key_part
from atlas.dictionary import (
    FORWARD,
    DictionaryWeights,
    FeatureStats,
    TrainingCurve,
    default_features,
    default_k,
    measure_features,
    own_feature_ranks,
    train_dictionary,
)
from atlas.dictionary.features import FEATURE_FIELDS
from atlas.errors import AtlasError
from atlas.featurevis.choice import RenderSettings
from atlas.featurevis.fidelity import FIDELITY_BATCH, centre_activations, direction_fidelity
from atlas.featurevis.icon_files import load_icons
from atlas.featurevis.icons import CellBatch
from atlas.featurevis.pathcheck import path_check, path_layouts
from atlas.featurevis.seeding import derive_seed
from atlas.grid.grid import ranked_classes
from atlas.models import resolve_layer
from atlas.models.input_sizes import only_input_size
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall
from atlas_pipelines.engine.worker_state import use_threads
from atlas_pipelines.stages.dictionary_links import write_links
from atlas_pipelines.stages.dictionary_map import write_feature_map
from atlas_pipelines.stages.examples import cut_patches
from atlas_pipelines.stages.path import EarlyLayers, path_layers, vectors_of
from atlas_pipelines.stages.render import (
    IconBatch,
    default_settings,
    icon_frame,
    icon_recipe,
    run_spectrum,
    save_batch,
    task_setup,
)

SCALE_RULE = "sqrt(mean over all rows of |x|^2): the scaled rows x / scale have unit mean squared norm"
ICON_MEASURE = (
    "each icon fed back through the model, its centre activation a: cosine = cos(a, decoder[f]), rank = how many"
    " features' decoder directions are nearer to a than its own (top1: share of rank 0); feature_rank = how many"
    " features' encoder activations relu(((a / scale) - decoder_bias) @ encoder + encoder_bias) exceed its own"
    " (most_active: share of feature_rank 0)"
)


@dataclass(frozen=True)
class DictionaryPlan:
    """What the training task needs, in plain values: the section with ``features`` and ``k`` resolved."""

    features: int
    k: int
    steps: int
    learning_rate: float
    batch_size: int
    buffer_shards: int
    examples: int
    seed: int
    n_classes: int
    device: str
    threads: int


@dataclass(frozen=True)
class Trained:
    weights: DictionaryWeights
    curve: TrainingCurve
    stats: FeatureStats
    measure_seconds: float


def plan_dictionary(config: DictionaryConfig, channels: int, rows: int, n_classes: int, device: str, threads: int) -> DictionaryPlan:
    """``auto`` resolved: k = channels / 8, features = 8 x channels capped at rows x k / 32 (atlas.dictionary.training)."""
    k = default_k(channels) if config.k == "auto" else config.k
    features = default_features(channels, rows, k) if config.features == "auto" else config.features
    if k > features:
        raise AtlasError(f"dictionary.k = {k} is more than dictionary.features = {features}; lower k or widen the dictionary")
    return DictionaryPlan(
        features, k, config.steps, config.learning_rate, config.batch_size, config.buffer_shards, config.examples, config.seed,
        n_classes, device, threads,
    )  # fmt: skip


def train_task(bundle: Bundle, plan: DictionaryPlan) -> Trained:
    """On a worker: train on the store's rows, streamed a few shards at a time, then measure in a second pass."""
    use_threads(plan.threads)
    store = bundle.store()
    layout = store.layout()

    def read(order: Any) -> Any:
        return (chunk.arrays["activation"] for chunk in store.chunks(["activation"], list(order)))

    weights, curve = train_dictionary(
        read, layout.n_shards, layout.channels, plan.features, plan.k, plan.steps, plan.learning_rate, plan.batch_size, plan.seed,
        plan.device, plan.buffer_shards,
    )  # fmt: skip
    started = time.perf_counter()
    names = FEATURE_FIELDS if plan.n_classes else tuple(name for name in FEATURE_FIELDS if name != "attribution")
    stats = measure_features(weights, store.chunks(names), plan.n_classes, plan.examples)
    return Trained(weights, curve, stats, round(time.perf_counter() - started, 3))


def dictionary(call: StageCall) -> Report:
    run = call.run
    config = run.config.dictionary
    if config is None:
        raise ValueError("the dictionary stage runs only with a dictionary section")  # run.py leaves it out otherwise
    bundle, store = run.bundle, run.bundle.store()
    ex = run.executor()
    plan = plan_dictionary(config, store.layout().channels, store.count(), run.n_classes, str(run.device), ex.threads_per_task)
    run.log(f"[dictionary] {plan.features} features, k = {plan.k}, {plan.steps} steps of {plan.batch_size} rows")
    trained: Trained = ex.submit(train_task, bundle, plan).result()
    weights, stats = trained.weights, trained.stats
    bundle.write_dictionary_arrays({name: getattr(weights, name) for name in DICTIONARY_ARRAYS})
    bundle.write_dictionary_curve(trained.curve.to_json())
    if plan.n_classes:
        bundle.write_dictionary_attribution(stats.attribution)
    records = feature_records(run, stats)
    icons = feature_icons(run, weights, records) if config.icons else None
    bundle.write_dictionary_features(records)
    links, levels = write_links(run, weights)
    feature_map = write_feature_map(run, weights.decoder, records)
    quality = {
        "rows": stats.rows, "variance_explained": round(stats.variance_explained, 5), "mean_l0": round(stats.mean_l0, 4),
        "dead_features": stats.dead, "dead_fraction": round(stats.dead / weights.features, 5),
    }  # fmt: skip
    run.log(
        f"[dictionary] variance explained {stats.variance_explained:.3f}, mean L0 {stats.mean_l0:.1f}, "
        f"{stats.dead} of {weights.features} features dead ({trained.curve.seconds:.1f} s training)"
    )
    entry: dict[str, Any] = {
        "folder": f"{DICTIONARY}/", "arrays": {name: dictionary_array(name) for name in DICTIONARY_ARRAYS},
        "features_file": DICTIONARY_FEATURES, "curve": DICTIONARY_CURVE,
        "attribution": DICTIONARY_ATTRIBUTION if plan.n_classes else None,
        "features": weights.features, "k": weights.k, "scale": weights.scale, "scale_rule": SCALE_RULE, "forward": FORWARD,
        "steps": plan.steps, "learning_rate": plan.learning_rate, "batch_size": plan.batch_size, "seed": plan.seed,
        "quality": quality, "icons": icons, "seconds": {"train": trained.curve.seconds, "measure": trained.measure_seconds},
        "implementation": "plain torch TopK SAE with Gao et al.'s auxiliary loss for dead features (atlas.dictionary)",
        "links": links, "map": feature_map,
    }  # fmt: skip
    return {"dictionary": entry, "levels": levels}


def feature_records(run: RunInputs, stats: FeatureStats) -> list[dict[str, Any]]:
    """One JSON record per feature: density, activations, top examples with their patches, top classes."""
    bundle = run.bundle
    used = np.unique(stats.top_rows[stats.top_rows >= 0])
    where = bundle.store().take(used, ["image_id", "y", "x"]) if len(used) else {"image_id": [], "y": [], "x": []}
    position = {int(row): (int(i), int(y), int(x)) for row, i, y, x in zip(used, where["image_id"], where["y"], where["x"], strict=True)}
    wanted: dict[int, set[tuple[int, int]]] = {}
    for image_id, y, x in position.values():
        wanted.setdefault(image_id, set()).add((y, x))
    cut = cut_patches(run, wanted, "dictionary examples")
    top = run.config.grid.top_classes
    records = []
    for feature in range(len(stats.density)):
        examples = []
        for row, value in zip(stats.top_rows[feature], stats.top_values[feature], strict=True):
            if row < 0:
                continue
            image_id, y, x = position[int(row)]
            patch = patch_file(image_id, y, x)
            examples.append({"row": int(row), "image_id": image_id, "y": y, "x": x, "activation": round(float(value), 5),
                             "patch": patch if patch in cut else None})  # fmt: skip
        record: dict[str, Any] = {
            "index": feature, "density": round(float(stats.density[feature]), 6),
            "mean_activation": round(float(stats.mean_activation[feature]), 5), "max_activation": round(float(stats.max_activation[feature]), 5),
            "examples": examples,
        }  # fmt: skip
        if run.n_classes:
            record["top_classes"] = ranked_classes(stats.attribution[feature], run.labels, top)
        records.append(record)
    return records


def feature_icons(run: RunInputs, weights: DictionaryWeights, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each feature's icon towards its decoder direction, by the render stage's own tasks, settings and frame (the
    probe's choice where it ran), then fed back through the model: cosine and rank among all features' directions,
    and whether the dictionary itself finds the icon's own feature the most active one (ICON_MEASURE)."""
    bundle, config = run.bundle, run.config.render
    saved = bundle.render_probe()
    settings = default_settings(config)
    if saved is not None and "chosen" in saved:
        settings = RenderSettings(**saved["chosen"], param=str(saved.get("param", "fourier")))
    frame = icon_frame(run)
    spectrum = run_spectrum(run, frame.canvas) if settings.param == "maco" else None
    ex = run.executor()
    setup = task_setup(run, ex.threads_per_task, settings, frame, icon_recipe(run, frame, features=True))
    whitening = ex.scatter(bundle.whitening() if settings.whiten != "off" else None)
    directions, spectrum_ref = ex.scatter(weights.decoder), ex.scatter(spectrum)
    size = config.batch_size_on(run.device.type)
    batches = []
    for start in range(0, len(records), size):
        features = range(start, min(start + size, len(records)))
        firsts = tuple(next((e["patch"] for e in records[f]["examples"] if e["patch"]), None) for f in features)
        cells = CellBatch(0, tuple(features), tuple(derive_seed(run.config.seed, DICTIONARY, f) for f in features), firsts)
        icons = tuple(dictionary_icon(f) for f in features)
        batches.append(IconBatch(cells, start // size, icons))
    futures = [ex.submit(save_batch, bundle, b, directions, whitening, spectrum_ref, setup) for b in batches]
    for future in ex.as_completed(futures):
        future.result()
    icons = [dictionary_icon(f) for f in range(len(records))]
    fed = [bundle.fed_image(icon) for icon in icons]
    channels = run.view.preprocessing.channels
    activations = np.concatenate(
        [
            centre_activations(run.view, load_icons(bundle, fed[i : i + FIDELITY_BATCH], channels, frame.canvas))
            for i in range(0, len(fed), FIDELITY_BATCH)
        ]
    )
    fidelity = direction_fidelity(activations, weights.decoder)
    finite = np.isfinite(activations).all(axis=1)
    feature_rank = np.where(
        finite, own_feature_ranks(weights, np.where(finite[:, None], activations, 0.0), np.arange(len(records))), len(records) - 1
    )
    for record, icon, cosine, rank, own in zip(records, icons, fidelity.cosine, fidelity.rank, feature_rank, strict=True):
        record["icon"] = icon
        record["fidelity"] = {"cosine": round(float(cosine), 4), "rank": int(rank), "feature_rank": int(own)}
    most_active = float((feature_rank == 0).mean()) if len(feature_rank) else 0.0
    path = feature_path_check(run, records, fed)
    run.log(
        f"[dictionary] feature icons: top-1 {fidelity.top1:.2f}, mean cosine {fidelity.mean_cosine:.2f}; "
        f"own feature the most active for {most_active:.2f}"
    )
    return {
        "top1": round(fidelity.top1, 4), "mean_cosine": round(fidelity.mean_cosine, 4), "most_active": round(most_active, 4),
        "param": settings.param, "steps": setup.recipe.steps, "coarse_steps": setup.recipe.coarse_steps, "icon_size": config.icon_size, "measure": ICON_MEASURE,
        "path_check": path,
    }  # fmt: skip


def feature_path_check(run: RunInputs, records: list[dict[str, Any]], fed: list[str]) -> dict[str, Any] | None:
    """Each feature's icon against its own top example patches at earlier layers, as the path stage checks a cell's
    icon against its examples (atlas.featurevis.pathcheck); each record gets ``path_check`` ({cosine, rank} or None
    where no example patch was cut), the summary goes to the manifest (None: no feature had a patch)."""
    bundle, view = run.bundle, run.view
    names = path_layers(run)
    early = EarlyLayers([resolve_layer(view.model, name) for name in names], path_layouts(view, names), only_input_size(view))
    patches = [[example["patch"] for example in record["examples"] if example["patch"]] for record in records]
    unique = sorted({name for own in patches for name in own})
    patch_vectors = dict(zip(unique, vectors_of(bundle, unique, view, early, strict=False), strict=True))
    icons = np.stack([vector for vector in vectors_of(bundle, fed, view, early, strict=True) if vector is not None])
    examples = []
    for own in patches:
        rows = [vector for vector in (patch_vectors[name] for name in own) if vector is not None]
        examples.append(np.stack(rows) if rows else np.zeros((0, icons.shape[1]), np.float32))
    result = path_check(icons, examples)
    for record, score in zip(records, result.records(), strict=True):
        record["path_check"] = score
    if not result.cells:
        return None
    run.log(f"[dictionary] feature icons' path check: top-1 {result.top1:.2f}, mean cosine {result.mean_cosine:.2f} over {result.cells}")
    return {"top1": round(result.top1, 4), "mean_cosine": round(result.mean_cosine, 4), "features": result.cells, "layers": names}


def dictionary_settings(run: RunInputs) -> Any:
    config = run.config.dictionary
    section = None if config is None else config.model_dump(mode="json")
    icons = section is not None and section["icons"]
    return [section, run.config.grid.top_classes, run.labels, run.config.seed, path_layers(run) if icons else None, *key_part(run.device)]


STAGE = Stage(
    "dictionary", reads=("collect", "grid", "examples", "render"), settings=dictionary_settings, work=dictionary, version=2
)  # 2: the links between features and cells, and the feature map
