"""`atlas run`: images -> collect -> layout -> grid -> examples -> render -> path -> tiles, then assemble, into one resumable bundle.

The stages are declared in their own modules (:class:`atlas_pipelines.engine.stage.Stage`);
this module lists them in order, prepares what they read (:class:`RunInputs`)
and hands them to the one stage loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch

from atlas.bundle import IMAGES, BundleWriter, stage_marker
from atlas.config import AtlasConfig
from atlas.devices import resolve_device
from atlas.errors import AtlasError
from atlas.featurevis.pathcheck import choose_layers, path_layouts, reads_own_layouts
from atlas.images import open_source
from atlas.images.source import ImageSource
from atlas.io import out_of_space_as_error
from atlas.lock import bundle_lock
from atlas.models import ModelView
from atlas.models.capture import zeros_input
from atlas.runtime import tune_allocator
from atlas.storage import Location, location
from atlas_pipelines.commands.layers import build_layers, layer_views, layers_report
from atlas_pipelines.engine.context import RunInputs, SameRows
from atlas_pipelines.engine.data_choices import choose_from_data, describe_choices
from atlas_pipelines.engine.executor import Executor, LazyExecutor
from atlas_pipelines.engine.stage import Stage, check_order, run_stages
from atlas_pipelines.engine.worker_state import model_view, warm_worker
from atlas_pipelines.stages import collect, dictionary, examples, grid, layout, path, render, tiles
from atlas_pipelines.stages.assemble import assemble

STAGES: tuple[Stage, ...] = (collect.STAGE, layout.STAGE, grid.STAGE, examples.STAGE, render.STAGE, path.STAGE, tiles.STAGE)
OPTIONAL_STAGES: tuple[Stage, ...] = (dictionary.STAGE,)  # each runs only when the config has its section
STAGE_NAMES = tuple(stage.name for stage in STAGES)  # the stages every run has
check_order((*STAGES, *OPTIONAL_STAGES))


def stages_for(config: AtlasConfig) -> tuple[Stage, ...]:
    """Every stage, with the optional ones whose config section is present (``dictionary:``)."""
    return (*STAGES, *(stage for stage in OPTIONAL_STAGES if getattr(config, stage.name) is not None))


def run_atlas(
    config: AtlasConfig,
    until: str | None = None,
    log: Callable[[str], None] = print,
    executor: Callable[[], Executor] | None = None,
    labels: Sequence[str] | None = None,
    same_rows: SameRows | None = None,
) -> Location:
    """Run every stage (or up to ``until``), then assemble cells and manifest; returns the bundle folder.

    ``executor``: a cluster already open (``atlas compare`` runs many bundles on one); default, one started on demand.
    ``labels``: the model's class names, given in Python (``atlas.run(classes=...)``), over the model's and the images'.
    ``same_rows``: read another bundle's rows (its images and positions, mapped to this layer's grid) instead of
    sampling: ``atlas compare``'s models of other architectures.
    """
    if until is not None and until not in {stage.name for stage in stages_for(config)}:
        raise AtlasError(f"--until {until!r}: expected one of {', '.join(STAGE_NAMES)}")
    tune_allocator()  # before the first Dask thread allocates (atlas.runtime)
    device = resolve_device(config.device)  # a GPU asked for where there is none fails here, before any work
    bundle = BundleWriter(location(config.output.dir) / config.name)
    with out_of_space_as_error("output", bundle.root):
        bundle.root.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(config, device)  # a wrong model, layer(s) or image source fails here, before the lock writes to the bundle
    # A full disk outside a stage (the lock's record, the image listing, assembly) is one line too, like one inside.
    with out_of_space_as_error("run", bundle.root), bundle_lock(bundle.root, log):  # one writer per bundle: a second run refuses here
        return _run_locked(config, bundle, device, until, log, executor, prepared, labels, same_rows)


def _run_locked(
    config: AtlasConfig,
    bundle: BundleWriter,
    device: torch.device,
    until: str | None,
    log: Callable[[str], None],
    executor: Callable[[], Executor] | None,
    prepared: tuple[dict[str, ModelView], int, ImageSource],
    labels: Sequence[str] | None,
    same_rows: SameRows | None = None,
) -> Location:
    views, n_classes, source = prepared
    view = views[config.model.layer]
    with ExitStack() as stack:
        executor = executor or LazyExecutor(config.scheduler, stack, log, device)
        if not bundle.path(stage_marker(collect.STAGE.name)).exists():
            # A first run will collect: start the workers loading the model while this process lists the images.
            started_executor = executor()
            started_executor.warm(warm_worker, config.model, started_executor.threads_per_task, str(device))
        started = time.perf_counter()
        with out_of_space_as_error("images", bundle.root):
            shards = source.plan(bundle.path(IMAGES), config.collect.n_images, config.collect.shard_size)
        if not shards:
            raise AtlasError(f"images.source {config.images.source!r}: no images found; point it at a folder of images")
        n_images = sum(s.count for s in shards)
        log(f"[images] {n_images} images in {len(shards)} shards ({time.perf_counter() - started:.1f} s to list)")
        chosen, choices = choose_from_data(config, n_images, view.grid)
        for line in describe_choices(choices):
            log(line)
        run = RunInputs(
            chosen, bundle, view, n_classes, _class_names(view, source, n_classes, labels), source, shards, executor, log, device,
            given=config, choices=choices, same_rows=same_rows,
        )  # fmt: skip
        records = run_stages(stages_for(chosen), run, until)
        more = None
        if config.model.layers is not None:
            build_layers(run, views, STAGES, until)
            more = layers_report(config, views, config.model.layer, same_rows=True)
    with out_of_space_as_error("assemble", bundle.root):
        manifest = assemble(run, records, more)
    for level in manifest["levels"]:
        if level.get("note"):
            log(f"atlas: grid {level['grid']}: {level['note']}")
    log(f"atlas: {manifest['n_activations']} activations from {manifest['n_images']} images -> {bundle.root}")
    return bundle.root


def _prepare(config: AtlasConfig, device: torch.device) -> tuple[dict[str, ModelView], int, ImageSource]:
    """The model's view of each layer (the main one's shape measured), the class count and the image source: everything
    a config can get wrong. The model comes from this process's cache, which the workers' tasks share under
    ``--scheduler sync``."""
    view = model_view(config.model, str(device))  # a wrong spec or layer fails here, before any work
    views = layer_views(view, config, str(device))  # and a wrong name in model.layers
    for layer, seen in views.items():
        names = choose_layers(seen.model, layer, config.path_check.layers, reads_own_layouts(seen))
        path_layouts(seen, names)  # and a wrong path_check.layers
        seen.layer_shape  # noqa: B018  (measured now: a layer that does not run fails here)
    n_classes = 0
    if config.collect.attribution:
        n_classes = view.model.num_classes or _output_width(view)

    source = open_source(config.images.source, config.images.root, config.images.max_pixels)
    if hasattr(source, "size_hint"):
        source.size_hint = view.preprocessing.input_size
    return views, n_classes, source


def _class_names(view: ModelView, source: ImageSource, n_classes: int, given: Sequence[str] | None) -> list[str] | None:
    """The class names given, else the model's own, else the dataset's when they match the model's outputs."""
    if given is not None:
        if n_classes and len(given) != n_classes:
            raise AtlasError(f"classes: {len(given)} names but the model outputs {n_classes} classes; give one name per output")
        return [str(name) for name in given]
    if view.model.labels is not None:
        return view.model.labels
    dataset_labels = source.labels
    return list(dataset_labels) if dataset_labels is not None and len(dataset_labels) == n_classes else None


def _output_width(view: ModelView) -> int:
    prep = view.preprocessing
    with torch.no_grad():
        return int(view.module(zeros_input(view.module, prep.channels, prep.input_size)).shape[-1])
