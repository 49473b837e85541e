"""`atlas classes`: class atlases, two-class comparisons and the patch experiment, on top of a finished bundle.

Each class atlas (``classes/<class>/``) and each comparison (``pairs/<A>__<B>/``)
is an ordinary bundle of the same contract, made by the same stage loop with
two stages of its own in front: ``collect`` copies the chosen rows out of the
parent's store, and ``layout`` places them (UMAP with the article's class-atlas
settings, or for a pair: attribution difference across, a 1-D layout down) and
takes the parent's whitening, which describes the whole layer. Grid, render,
examples and tiles are the ordinary stages. A pair adds a ``patch`` stage.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas.bundle import (
    COORDS,
    IMAGE_INDEX,
    PARENT_ROWS,
    PATCH_RESULTS,
    ROWS,
    WHITENING,
    Bundle,
    BundleWriter,
    Cell,
    class_folder,
    pair_folder,
    pair_results,
    stage_marker,
    sub_manifest,
)
from atlas.classes import ClassRef, class_counts, difference_axis, line_layout, pair_rows, resolve_class, select_rows
from atlas.classes.patches import run_patch_experiment
from atlas.collect import StoreLayout
from atlas.collect.store import Rows
from atlas.config import AtlasConfig, ClassesConfig, RenderConfig, validate_tree
from atlas.devices import resolve_device
from atlas.errors import AtlasError
from atlas.featurevis.icon_files import load_icons
from atlas.images import open_source
from atlas.images.folder import FolderSource
from atlas.images.preprocess import to_pixels
from atlas.images.source import ImageSource
from atlas.lock import bundle_lock
from atlas.markers import read_marker
from atlas.storage import Location
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.executor import Executor, LazyExecutor
from atlas_pipelines.engine.stage import Report, Stage, StageCall, run_stages
from atlas_pipelines.engine.worker_state import model_view
from atlas_pipelines.stages import examples, grid, path, render, tiles
from atlas_pipelines.stages.assemble import assemble
from atlas_pipelines.stages.layout import compute_layout

ROWS_PER_SHARD = 4096  # rows per chunk of a sub-bundle's store
HELD_OUT_SHARD = 256
RANDOM_ICON_POOL = (
    256  # parent icons the random-icon baseline draws from  # images per read when scanning for the patch experiment's images
)


@dataclass(frozen=True)
class Subset:
    """One class atlas (one class) or one comparison (classes a, b: x > 0 favours a)."""

    kind: Literal["class", "pair"]
    classes: tuple[ClassRef, ...]

    @property
    def folder(self) -> str:
        if self.kind == "class":
            return class_folder(self.classes[0].folder)
        return pair_folder(self.classes[0].folder, self.classes[1].folder)

    @property
    def title(self) -> str:
        return self.classes[0].name if self.kind == "class" else f"{self.classes[0].name} vs {self.classes[1].name}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": [{"index": c.index, "name": c.name} for c in self.classes], "parent": "../.."}


@dataclass(frozen=True)
class SubsetInputs(RunInputs):
    """A sub-bundle's run: the ordinary inputs, plus the parent bundle and which of its rows."""

    parent: Bundle | None = None
    subset: Subset | None = None

    @property
    def parts(self) -> tuple[Bundle, Subset]:
        assert self.parent is not None and self.subset is not None
        return self.parent, self.subset


def _inputs(call: StageCall) -> SubsetInputs:
    assert isinstance(call.run, SubsetInputs)
    return call.run


def parent_key(parent: Bundle, stage: str) -> str | None:
    """The key the parent's stage ran with: a sub-bundle is stale when the parent's rows or whitening change."""
    marker = read_marker(parent.path(stage_marker(stage)))
    return None if marker is None else marker.get("key")


# --- collect: the chosen rows, copied out of the parent's store ----------------------------------------


def chosen_rows(parent: Bundle, subset: Subset, config: ClassesConfig) -> np.ndarray:
    store = parent.store()
    if subset.kind == "pair":
        rows = pair_rows(store, *subset.classes)
    else:
        rows = select_rows(store, subset.classes[0], config.select, config.top_k)
    if len(rows) < config.min_rows:
        rule = "with it as their top attribution" if config.select == "top" or subset.kind == "pair" else "selected"
        raise AtlasError(
            f"{subset.kind} {subset.title!r} has {len(rows)} rows {rule}, and needs classes.min_rows = {config.min_rows};"
            " collect more images, lower classes.min_rows, or use classes.select=top_k"
        )
    return rows


def select_settings(run: RunInputs) -> Any:
    parent, subset = _as_subset(run).parts
    config = run.config.classes
    selection = config.model_dump(mode="json", include={"select", "top_k", "min_rows"})
    return [parent_key(parent, "collect"), subset.describe(), selection]


def select(call: StageCall) -> Report:
    run = _inputs(call)
    parent, subset = run.parts
    rows = chosen_rows(parent, subset, run.config.classes)
    source, target = parent.store(), run.bundle.store()
    shape = source.layout()
    per_shard = min(ROWS_PER_SHARD, len(rows))
    layout = StoreLayout(math.ceil(len(rows) / per_shard), per_shard, shape.channels, shape.n_classes)
    target.create(layout, call.key)
    run.bundle.write_parent_rows(rows)
    images: set[int] = set()
    for shard in range(layout.n_shards):
        taken = source.take(rows[shard * per_shard : (shard + 1) * per_shard])
        images.update(np.unique(taken["image_id"]).tolist())
        report = {"shard": shard, "n_images": int(len(np.unique(taken["image_id"]))), "n_rows": len(taken["image_id"]), "skipped": []}
        target.write_shard(shard, Rows(**taken), report)
    run.log(f"[collect] {len(rows)} rows of {subset.title!r} from the parent's store")
    return {
        "n_images": len(images),
        "n_activations": int(len(rows)),
        "activations": ROWS,
        "image_index": None,
        "subset": {
            **subset.describe(),
            "selection": run.config.classes.select if subset.kind == "class" else "top",
            "parent_rows": PARENT_ROWS,
        },
    }


# --- layout: class-atlas UMAP, or the comparison's two axes ---------------------------------------------


def sublayout_settings(run: RunInputs) -> Any:
    parent, _ = _as_subset(run).parts
    config = run.config.classes
    placed = config.model_dump(mode="json", include={"n_neighbors", "min_dist", "metric", "pair_layout"})
    return [placed, run.config.layout.model_dump(mode="json"), run.config.seed, parent_key(parent, "layout")]


def sublayout(call: StageCall) -> Report:
    run = _inputs(call)
    parent, subset = run.parts
    store = run.bundle.store()
    report: Report = {"coords": COORDS, "whitening": WHITENING}
    if subset.kind == "class":
        coords, _ = compute_layout(run.executor, store, run.config.layout, run.config.seed)
        assert coords is not None
    else:
        a, b = subset.classes
        rows = store.read()
        x, scale = difference_axis(rows.attribution[:, a.index], rows.attribution[:, b.index])
        config = run.config.classes
        y = line_layout(rows.activation, config.pair_layout, run.config.seed, config.n_neighbors, config.min_dist, config.metric)
        coords = np.stack([(x + 1.0) / 2.0, y], axis=1).astype(np.float32)
        report["pair"] = {
            "a": {"index": a.index, "name": a.name},
            "b": {"index": b.index, "name": b.name},
            "x_axis": "(attribution to a - attribution to b) / its 99th percentile |value|, clipped to [-1, 1]; right favours a",
            "y_axis": f"1-D {config.pair_layout} of the activations",
            "scale": scale,
            "favours_a": int(np.count_nonzero(x > 0)),
            "favours_b": int(np.count_nonzero(x < 0)),
        }
    run.bundle.write_coords(coords)
    run.bundle.write_whitening(parent.whitening())  # the whole layer's statistics, as the article whitens
    return report


# --- patch: the experiment of a comparison --------------------------------------------------------------


def patch_settings(run: RunInputs) -> Any:
    parent, _ = _as_subset(run).parts
    return [run.config.classes.patch.model_dump(mode="json"), run.config.seed, parent_key(parent, "render")]


def favouring_cells(cells: list[Cell], size: int, n_icons: int) -> list[Cell]:
    """The ``n_icons`` cells furthest towards b: left half, leftmost first, fuller first."""
    left = sorted((c for c in cells if (c.i + 0.5) / size < 0.5), key=lambda c: (c.i, -c.count, c.j))
    return left[:n_icons]


def random_icons(parent: Bundle, n: int, seed: int) -> list[str]:
    """Up to ``n`` icons of the parent atlas's finest grid, drawn with ``seed``: the random-icon baseline's pool.

    From the parent, not from the comparison, whose other cells include more of b's side.
    """
    grids = parent.grids
    if not grids:
        return []
    icons = [cell.icon for cell in parent.level(grids[-1]).cells if parent.path(cell.icon).is_file()]
    picked = np.random.default_rng(seed).permutation(len(icons))[:n]
    return [icons[k] for k in sorted(picked)]


def held_out_images(run: RunInputs, parent: Bundle) -> tuple[ImageSource, int, bool]:
    """The source of the experiment's images, the first id to use, and whether they are held out from the atlas.

    By default the run's own source past the images the atlas collected (ids are listing positions, and a run
    with ``collect.n_images`` collects a prefix); ``classes.patch.images`` names another source.
    """
    config = run.config.classes.patch
    if config.images is not None:
        return open_source(config.images, run.config.images.root, run.config.images.max_pixels), 0, True
    collected = max((int(chunk.arrays["image_id"].max()) + 1 for chunk in parent.store().chunks(("image_id",))), default=0)
    return run.source, collected, True


def _pixels(source: ImageSource, first: int, end: int | None, run: RunInputs) -> Iterator[torch.Tensor]:
    """Input-frame pixels of the readable images with ids in [first, end), a batch per listing shard."""
    prep = run.model.preprocessing
    source = copy.copy(source)  # planning re-points a folder source at the scratch listing; the run's keeps the parent's
    with tempfile.TemporaryDirectory(prefix="atlas-heldout-") as scratch:
        for shard in source.plan(Path(scratch), end, HELD_OUT_SHARD):
            if shard.start + shard.count <= first:
                continue
            batch = [to_pixels(r.image, prep) for r in source.read(shard) if r.image is not None and r.image_id >= first]
            if batch:
                yield torch.stack(batch)


def images_classified_as(
    run: RunInputs, source: ImageSource, first: int, target: int, limit: int, end: int | None = None
) -> tuple[torch.Tensor, int]:
    """Up to ``limit`` images (input-frame pixels, ids in [first, end)) the model puts in ``target``; and how many seen."""
    kept: list[torch.Tensor] = []
    seen = held = 0
    for pixels in tqdm(_pixels(source, first, end, run), desc="patch images", unit="batch"):
        top = classify(run, pixels).argmax(dim=1).cpu()
        seen += len(pixels)
        chosen = pixels[top == target]
        kept.append(chosen)
        held += len(chosen)
        if held >= limit:
            break
    channels, side = run.model.preprocessing.channels, run.model.preprocessing.input_size
    images = torch.cat(kept)[:limit] if kept else torch.zeros(0, channels, side, side)
    return images, seen


def classify(run: RunInputs, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return run.view.module(run.view.normalise(pixels.to(run.device)))


def patch(call: StageCall) -> Report:
    run = _inputs(call)
    parent, subset = run.parts
    a, b = subset.classes
    config = run.config.classes.patch
    size = run.config.grid.sizes[-1]
    cells = run.bundle.grid_cells(size)
    chosen = favouring_cells(cells, size, config.icons)
    others = random_icons(parent, RANDOM_ICON_POOL, run.config.seed)
    prep = run.model.preprocessing
    sizes = sorted({max(1, round(f * prep.input_size)) for f in config.sizes})
    result: dict[str, Any] = {
        "pair": {"a": {"index": a.index, "name": a.name}, "b": {"index": b.index, "name": b.name}},
        "question": f"pasting a patch onto images classified as {a.name!r}: how often does the top-1 become {b.name!r}?",
        "sizes": sizes,
        "size_fractions": list(config.sizes),
        "corner": config.corner,
        "seed": run.config.seed,
        "icons": [c.icon for c in chosen],
        "random_icons": f"{len(others)} icons of the parent atlas's finest grid, one drawn per image",
    }
    if not chosen or not others:
        result.update({"n_images": 0, "note": "the comparison has no cell on the b side (or the parent atlas no icon): nothing to paste"})
    else:
        source, first, held_out = held_out_images(run, parent)
        images, seen = images_classified_as(run, source, first, a.index, config.n_images)
        if not len(images) and first > 0 and config.images is None:
            run.log("[patch] the source has no image past those the atlas collected: using the collected ones (not held out)")
            images, more = images_classified_as(run, source, 0, a.index, config.n_images, end=first)  # only those not seen yet
            first, held_out, seen = 0, False, seen + more
        icons = load_icons(run.bundle, [c.icon for c in chosen], prep.channels, run.config.render.icon_size)
        other_icons = load_icons(parent, others, prep.channels, run.config.render.icon_size)
        counts = run_patch_experiment(
            lambda pixels: classify(run, pixels), images, list(icons), list(other_icons), b.index, sizes, config.corner,
            run.config.seed, config.batch_size,
        )  # fmt: skip
        result.update({"n_images": len(images), "images_scanned": seen, "held_out": held_out, "first_image_id": first, **counts.to_json()})
        if not len(images):
            result["note"] = f"no held-out image was classified as {a.name!r}; give classes.patch.images another source"
    run.bundle.write_patch_results(result)
    summary = {kind: result[kind]["sizes"][-1]["corner"]["rate"] for kind in ("icon", "noise", "random_icon") if kind in result}
    run.log(f"[patch] {subset.title}: {result['n_images']} images; flip rate at the largest patch {summary}")
    return {"patch": {"file": PATCH_RESULTS, "n_images": result["n_images"], "largest_patch_rates": summary}}


def _as_subset(run: RunInputs) -> SubsetInputs:
    assert isinstance(run, SubsetInputs)
    return run


SELECT = Stage("collect", reads=(), settings=select_settings, work=select)
SUBLAYOUT = Stage("layout", reads=("collect",), settings=sublayout_settings, work=sublayout)
PATCH = Stage("patch", reads=("grid", "render"), settings=patch_settings, work=patch, version=2)
CLASS_STAGES: tuple[Stage, ...] = (SELECT, SUBLAYOUT, grid.STAGE, examples.STAGE, render.STAGE, path.STAGE, tiles.STAGE)
PAIR_STAGES: tuple[Stage, ...] = (*CLASS_STAGES, PATCH)


# --- the command ------------------------------------------------------------------------------------------


def parent_config(parent: Bundle, assignments: list[tuple[str, Any]]) -> AtlasConfig:
    """The config the parent ran with, with ``--set`` and command-line values applied on top."""
    from atlas.config import apply_assignment

    tree = json.loads(json.dumps(parent.manifest.config))
    for key, value in assignments:
        apply_assignment(tree, key, value)
    config: AtlasConfig = validate_tree(tree, AtlasConfig)
    return config


def subset_config(config: AtlasConfig, parent: Bundle, subset: Subset) -> AtlasConfig:
    """The sub-bundle's own config: the parent's, with the class-atlas layout and grid."""
    classes = config.classes
    folder = subset.folder.split("/")
    layout = config.layout.model_copy(
        update={"n_neighbors": classes.n_neighbors, "min_dist": classes.min_dist, "metric": classes.metric, "coords": None}
    )
    size = classes.grid if subset.kind == "class" else classes.pair_grid
    grid = config.grid.model_copy(update={"sizes": (size,), "min_count": classes.min_count})
    output = config.output.model_copy(update={"dir": str(parent.root / folder[0]), "name": folder[1]})
    return config.model_copy(update={"layout": layout, "grid": grid, "output": output, "render": inherited_render(config, parent)})


def inherited_render(config: AtlasConfig, parent: Bundle) -> RenderConfig:
    """Settings left to a probe ('auto') take what the parent's probe chose: same layer, same directions' kind, and
    no probe per class atlas (it would cost more than a small atlas's own icons)."""
    # A parent written before render recorded contrast and tries rendered with neither (contrast off, one try): that is
    # what it chose, and without it those two would stay 'auto' and each class atlas would run a probe of its own.
    chosen = {"contrast": False, "tries": 1, **(parent.manifest.render or {})}
    settings = config.render.model_dump()
    for name in ("whiten", "contrast", "cossim_power", "learning_rate", "tries"):
        if settings[name] == "auto" and chosen.get(name) is not None:
            settings[name] = chosen[name]
    return RenderConfig.model_validate(settings)


def wanted_subsets(config: ClassesConfig, labels: list[str] | None, counts: np.ndarray) -> list[Subset]:
    n_classes = len(counts)
    if config.classes == "all":
        refs = [resolve_class(k, labels, n_classes) for k in range(n_classes)]
        classes = [r for r in refs if config.select == "top_k" or counts[r.index] >= config.min_rows]
    else:
        classes = [resolve_class(name, labels, n_classes) for name in config.classes]
    subsets = [Subset("class", (c,)) for c in dict.fromkeys(classes)]
    for a, b in config.pairs:
        first, second = resolve_class(a, labels, n_classes), resolve_class(b, labels, n_classes)
        if first == second:
            raise AtlasError(f"classes.pairs [{a}, {b}]: a comparison needs two different classes")
        subsets.append(Subset("pair", (first, second)))
    return subsets


def build_classes(
    parent_dir: Location | str,
    assignments: Sequence[tuple[str, Any]] = (),
    log: Callable[[str], None] = print,
    executor: Callable[[], Executor] | None = None,
) -> dict[str, Any]:
    """Build every class atlas and comparison the config asks for under ``parent_dir``; returns classes/index.json."""
    parent = BundleWriter(parent_dir)
    parent.manifest  # noqa: B018 -- a folder that is not a bundle fails here, before it is locked
    with bundle_lock(parent.root, log):  # the same lock as atlas run: one writer per bundle
        return _build_classes(parent, assignments, log, executor)


def _build_classes(
    parent: BundleWriter, assignments: Sequence[tuple[str, Any]], log: Callable[[str], None], executor: Callable[[], Executor] | None
) -> dict[str, Any]:
    manifest = parent.manifest
    config = parent_config(parent, list(assignments))
    store = parent.store()
    n_classes = store.layout().n_classes
    if n_classes == 0:
        raise AtlasError(f"{parent.root}: this bundle has no attribution (collect.attribution was false); re-run atlas run with it on")
    labels = None if manifest.labels is None else list(manifest.labels)
    counts = class_counts(store, n_classes)
    subsets = wanted_subsets(config.classes, labels, counts)
    if not subsets:
        raise AtlasError("nothing to build: give --class NAME (repeatable, or 'all') or --compare A B, or classes.classes / classes.pairs")
    device = resolve_device(config.device)
    view = model_view(config.model, str(device))  # shared with this process's tasks (--scheduler sync)
    source = open_source(config.images.source, config.images.root, config.images.max_pixels)
    if isinstance(source, FolderSource):
        source.index_path = parent.path(IMAGE_INDEX)  # the parent's listing: image ids are its line numbers
    with ExitStack() as stack:
        executor = executor or LazyExecutor(config.scheduler, stack, log, device)
        for subset in subsets:
            log(f"atlas classes: {subset.kind} {subset.title!r} -> {subset.folder}")
            sub_config = subset_config(config, parent, subset)
            bundle = BundleWriter(parent.path(subset.folder))
            bundle.root.mkdir(parents=True, exist_ok=True)
            run = SubsetInputs(sub_config, bundle, view, n_classes, labels, source, [], executor, log, device, parent=parent, subset=subset)
            records = run_stages(PAIR_STAGES if subset.kind == "pair" else CLASS_STAGES, run)
            assemble(run, records)
    index = class_index(parent, labels, counts, config.classes)
    parent.write_class_index(index)
    return index


def class_index(parent: Bundle, labels: list[str] | None, counts: np.ndarray, config: ClassesConfig) -> dict[str, Any]:
    """Every class with its row count and atlas (if built), and every comparison built so far: the viewer's picker."""
    classes = []
    for k, count in enumerate(counts):
        ref = resolve_class(k, labels, len(counts))
        folder = class_folder(ref.folder)
        built = parent.path(sub_manifest(folder)).is_file()
        classes.append({"index": k, "name": ref.name, "rows": int(count), "folder": folder if built else None})
    pairs = []
    for folder in parent.pair_bundles():
        pair = Bundle(parent.path(folder)).manifest.get("pair") or {}
        patch = pair_results(folder)
        pairs.append({"a": pair.get("a"), "b": pair.get("b"), "folder": folder, "patch": patch if parent.path(patch).is_file() else None})
    return {
        "selection": "rows whose top attribution is the class",
        "min_rows": config.min_rows,
        "build": "atlas classes RUN_DIR --class NAME  (or --compare A B)",
        "classes": classes,
        "pairs": pairs,
    }
