"""Render stage: one Dask task per batch of cells renders and saves their icons; then each icon's fidelity.

A batch is done when its marker (holding the stage key) exists, written after its PNGs, so a re-run renders only
the batches a kill interrupted. Before the batches, settings left to ``auto`` are chosen by a probe render of a
few cells on the workers (atlas.featurevis.probe), and the icons' frame is set (atlas.featurevis.framing). What
an icon is rendered towards and how lives in atlas.featurevis.icons; this stage plans, submits and reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas.bundle import Bundle, BundleWriter, icon_batch_marker
from atlas.config import ModelConfig, RenderConfig
from atlas.devices import key_part
from atlas.errors import AtlasError
from atlas.featurevis import RenderResult
from atlas.featurevis.choice import ProbeScores, RenderSettings, Trial, candidate_steps, choose_settings, first_candidates
from atlas.featurevis.fidelity import measure_fidelity
from atlas.featurevis.framing import IconFrame, frame_icons
from atlas.featurevis.icon_files import save_icons, start_images
from atlas.featurevis.icons import CellBatch, GridCells, IconRecipe, ParamInputs, cell_batch, render_cells
from atlas.featurevis.pathcheck import early_vectors, path_check, path_layouts
from atlas.featurevis.probe import as_saved, probe_fidelity, sample_cells, worth_probing
from atlas.featurevis.spectrum import spectrum_of_images
from atlas.lock import sweep_temporaries
from atlas.markers import is_fresh, write_marker
from atlas.models import ModelView, resolve_layer
from atlas.models.input_sizes import only_input_size
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall
from atlas_pipelines.engine.worker_state import folded_view, use_threads
from atlas_pipelines.stages.path import EarlyLayers, cell_patches, path_layers, vectors_of


@dataclass(frozen=True)
class IconBatch:
    """One render task's cells, the bundle paths of their icons, and its place among its grid's batches."""

    cells: CellBatch
    index: int
    icons: tuple[str, ...]

    @property
    def marker(self) -> str:
        return icon_batch_marker(self.cells.grid, self.index)


@dataclass(frozen=True)
class TaskSetup:
    """What every render task of a run shares: the model its worker loads, where and on how many threads it
    runs, and how its icons are rendered and framed."""

    model: ModelConfig
    device: str
    threads: int
    recipe: IconRecipe
    settings: RenderSettings
    frame: IconFrame


def render_batch(
    bundle: Bundle, cells: CellBatch, directions: np.ndarray, whitening: np.ndarray | None, spectrum: np.ndarray | None, setup: TaskSetup
) -> RenderResult:
    """On a worker: the cells rendered on the frame's canvas with the worker's own model, its norms folded."""
    use_threads(setup.threads)
    view = folded_view(setup.model, setup.device)
    starts = None
    if setup.settings.param == "accentuate":  # the patches named when the batch was planned: no grid.json read per task
        starts = start_images(bundle, cells.starts, view.preprocessing.channels, setup.frame.canvas)
    targets = GridCells(directions, cells.rows, cells.seeds, whitening)
    return render_cells(view, targets, setup.recipe, setup.settings, setup.frame.canvas, ParamInputs(spectrum, starts))


def render_batch_task(
    bundle: BundleWriter,
    batch: IconBatch,
    directions: np.ndarray,
    whitening: np.ndarray | None,
    spectrum: np.ndarray | None,
    setup: TaskSetup,
    key: str,
) -> int:
    """Runs on a worker: render one batch of cells and save their icons (and full views), then the batch marker."""
    count = save_batch(bundle, batch, directions, whitening, spectrum, setup)
    write_marker(bundle.path(batch.marker), key)
    return count


def save_batch(
    bundle: BundleWriter,
    batch: IconBatch,
    directions: np.ndarray,
    whitening: np.ndarray | None,
    spectrum: np.ndarray | None,
    setup: TaskSetup,
) -> int:
    """Runs on a worker: render one batch (of cells, or of dictionary features) and save their icons and full views."""
    save_icons(bundle, batch.icons, render_batch(bundle, batch.cells, directions, whitening, spectrum, setup), setup.frame)
    return len(batch.icons)


def probe_task(
    bundle: Bundle, cells: CellBatch, directions: np.ndarray, whitening: np.ndarray | None, spectrum: np.ndarray | None, setup: TaskSetup
) -> np.ndarray:
    """Runs on a worker: render probe cells under one candidate; the renders as the saved 8-bit PNGs would hold them."""
    return as_saved(render_batch(bundle, cells, directions, whitening, spectrum, setup).images)


def plan_batches(bundle: Bundle, sizes: tuple[int, ...], batch_size: int, seed: int) -> list[IconBatch]:
    batches = []
    for size in sizes:
        cells = bundle.grid_cells(size)
        for index, start in enumerate(range(0, len(cells), batch_size)):
            rows = range(start, min(start + batch_size, len(cells)))
            batches.append(IconBatch(cell_batch(cells, size, rows, seed), index, tuple(cells[row].icon for row in rows)))
    return batches


def render_icons(call: StageCall) -> Report:
    run, key = call.run, call.key
    config, bundle, sizes = run.config.render, run.bundle, run.config.grid.sizes
    batches = plan_batches(bundle, sizes, config.batch_size_on(run.device.type), run.config.seed)
    frame = icon_frame(run)
    bundle.write_render_frame(frame.to_json())  # the one record of whether icons have full views: every reader asks the bundle
    recipe = icon_recipe(run, frame)
    settings, trials = chosen_settings(run, key, frame, recipe)
    spectrum = run_spectrum(run, frame.canvas) if settings.param == "maco" else None
    todo = [b for b in batches if not is_fresh(bundle.path(b.marker), key, [bundle.path(name) for name in b.icons])]
    swept = sum(sweep_temporaries(folder) for folder in {bundle.path(b.marker).parent for b in todo})
    run.log(
        f"[render] rendering {len(todo)} of {len(batches)} icon batches ({len(batches) - len(todo)} already done"
        + (f"; removed {swept} temporary file(s) of an interrupted run)" if swept else ")")
    )
    if todo:
        ex = run.executor()
        setup = task_setup(run, ex.threads_per_task, settings, frame, recipe)
        whitening_ref = ex.scatter(bundle.whitening() if settings.whiten != "off" else None)
        spectrum_ref = ex.scatter(spectrum)
        direction_refs = {size: ex.scatter(bundle.directions(size)) for size in {b.cells.grid for b in todo}}
        futures = [
            ex.submit(render_batch_task, bundle, b, direction_refs[b.cells.grid], whitening_ref, spectrum_ref, setup, key) for b in todo
        ]
        total = sum(len(b.icons) for b in batches)
        with tqdm(total=total, initial=total - sum(len(b.icons) for b in todo), desc="render", unit="icon") as bar:
            for future in ex.as_completed(futures):
                bar.update(future.result())
    levels = [{"grid": size, "icon_size": config.icon_size, "fidelity": grid_fidelity(run, size, frame)} for size in sizes]
    report: dict[str, Any] = {
        "steps": recipe.steps, "coarse_steps": recipe.coarse_steps, "icon_size": config.icon_size, **asdict(settings),
        "chosen_by": "probe" if trials else ("default" if config.probes() else "config"), "probe": [t.to_json() for t in trials],
        "receptive_field": None if frame.field is None else frame.field.to_json(), "frame": frame.to_json(), "alpha": config.alpha,
    }  # fmt: skip
    return {"render": report, "levels": levels}


def grid_fidelity(run: RunInputs, size: int, frame: IconFrame) -> dict[str, Any] | None:
    """A grid's icons fed back through the model, logged and summed up for the manifest (None: no cells)."""
    fidelity = measure_fidelity(run.bundle, size, run.view, frame.canvas)
    if not len(fidelity.rank):
        run.log(f"[render] grid {size}: no cells, no icons")
        return None
    summary: dict[str, Any] = {"mean_cosine": round(fidelity.mean_cosine, 4), "top1": round(fidelity.top1, 4)}
    run.log(f"[render] grid {size}: top-1 {fidelity.top1:.2f}, mean cosine {fidelity.mean_cosine:.2f}")
    if fidelity.nonfinite:
        summary["nonfinite"] = fidelity.nonfinite
        run.log(f"[render] grid {size}: {fidelity.nonfinite} icon(s) give NaN or infinity at the layer; scored cosine 0, last rank")
    return summary


def icon_recipe(run: RunInputs, frame: IconFrame, features: bool = False) -> IconRecipe:
    """How every icon of the stage renders, decided once on the driver: the steps for the canvas (a dictionary's
    ``features`` keep more), and no half-size steps for a model of one input size (one dummy forward at twice it)."""
    config = run.config.render
    coarse = config.coarse_steps_on(frame.canvas, features) if only_input_size(run.view) is None else 0
    return IconRecipe(config.steps_on(frame.canvas, features), config.proximity, config.precision, config.alpha, coarse)


def task_setup(run: RunInputs, threads: int, settings: RenderSettings, frame: IconFrame, recipe: IconRecipe) -> TaskSetup:
    return TaskSetup(run.config.model, str(run.device), threads, recipe, settings, frame)


def default_settings(config: RenderConfig) -> RenderSettings:
    """The config's settings, with the probe's first candidate wherever it says ``auto``."""
    return first_candidates(
        candidate_steps(config.whiten, config.cossim_power, config.learning_rate, config.contrast, config.tries, config.param)
    )


def run_spectrum(run: RunInputs, canvas: int) -> np.ndarray:
    """maco's fixed magnitude from the run's own images at the canvas size; estimated once and kept in the bundle."""
    saved = run.bundle.render_spectrum()
    if saved is not None and saved.shape == (run.view.preprocessing.channels, canvas, canvas // 2 + 1):
        return saved
    images = (record.image for shard in run.shards for record in run.source.read(shard))
    spectrum, count = spectrum_of_images(images, run.view.preprocessing, canvas)
    if spectrum is None:
        raise AtlasError("render.param maco: no readable image to estimate the spectrum from; use render.param fourier")
    run.bundle.write_render_spectrum(spectrum)
    run.log(f"[render] maco: magnitude spectrum from {count} of the run's images at {canvas} px")
    return spectrum


def chosen_settings(run: RunInputs, key: str, frame: IconFrame, recipe: IconRecipe) -> tuple[RenderSettings, list[Trial]]:
    """The settings every icon of this run is rendered with: the config's, or for ``auto`` the probe's choice.

    The probe renders a fixed sample of cells with the real seeds on the workers and scores them like fidelity does;
    its choice is kept under the stage key, so a resumed run renders its remaining batches the same way. maco's
    spectrum is estimated only once a maco candidate is tried (accentuate's starts are the cells' own patches,
    named in each task's cells and read on the worker).
    """
    config, bundle = run.config.render, run.bundle
    settings = default_settings(config)
    if not config.probes():
        return settings, []
    grids = {size: bundle.grid_cells(size) for size in run.config.grid.sizes}
    total = sum(len(cells) for cells in grids.values())
    if not worth_probing(total, config.probe_cells):
        run.log(f"[render] {total} cells: too few to probe render.probe_cells={config.probe_cells} of them; 'auto' takes {settings}")
        return settings, []
    saved = bundle.render_probe()
    if saved is not None and saved.get("key") == key:
        chosen = RenderSettings(**saved["chosen"], param=str(saved.get("param", "fourier")))
        return chosen, [Trial.from_json(t) for t in saved["trials"]]
    directions = {size: bundle.directions(size) for size in grids}
    sample = sample_cells(grids, config.probe_cells, run.config.seed)
    ex = run.executor()
    setup = task_setup(run, ex.threads_per_task, settings, frame, recipe)
    whitening_ref = ex.scatter(bundle.whitening())
    direction_refs = {cells.grid: ex.scatter(directions[cells.grid]) for cells in sample}  # the retrieval term needs all
    spectrum_refs: dict[str, Any] = {}

    def spectrum_for(candidate: RenderSettings) -> Any:
        """maco's spectrum, estimated (and shipped to the workers) when the first maco candidate needs it."""
        if candidate.param != "maco":
            return None
        if "maco" not in spectrum_refs:
            spectrum_refs["maco"] = ex.scatter(run_spectrum(run, frame.canvas))
        return spectrum_refs["maco"]

    held_out = held_out_examples(run, sample)

    def evaluate(candidates: list[RenderSettings]) -> list[ProbeScores]:
        """Every candidate's probe cells render side by side as worker tasks; the driver ranks the results."""
        futures = [
            [
                ex.submit(
                    probe_task,
                    bundle,
                    cells,
                    direction_refs[cells.grid],
                    whitening_ref,
                    spectrum_for(candidate),
                    replace(setup, settings=candidate),
                )
                for cells in sample
            ]
            for candidate in candidates
        ]
        scores = []
        for candidate, parts in zip(candidates, futures, strict=True):
            renders = [future.result() for future in parts]
            fidelity = probe_fidelity(run.view, sample, renders, directions)
            path = held_out.path_cosines(renders)
            said = "" if path is None else f", path check {np.nanmean(path):.2f}"
            run.log(f"[render] probe {candidate}: top-1 {fidelity.top1:.2f}, mean cosine {fidelity.mean_cosine:.2f}{said}")
            scores.append(ProbeScores(fidelity, path))
        return scores

    count = sum(len(cells.rows) for cells in sample)
    run.log(f"[render] choosing render settings ({', '.join(config.probed())}) with a probe of {count} cells")
    settings, trials = choose_settings(
        config.whiten, config.cossim_power, config.learning_rate, evaluate, config.contrast, config.tries, config.param
    )
    run.log(f"[render] chose {settings}")
    chosen = asdict(settings)
    param = chosen.pop("param")  # beside "chosen", which keeps the keys it has always had
    bundle.write_render_probe({"key": key, "chosen": chosen, "param": param, "trials": [t.to_json() for t in trials], "cells": count})
    return settings, trials


@dataclass(frozen=True)
class HeldOutExamples:
    """The probe cells' example patches other than the first (accentuate's start) at the path check's layers, so a
    candidate's icons are scored by how the model processes them against real images none of them started from."""

    view: ModelView
    early: EarlyLayers | None
    examples: list[np.ndarray]  # per probe cell, in sample order: [n, D] early vectors (n may be 0)

    def path_cosines(self, renders: list[np.ndarray]) -> np.ndarray | None:
        """Per probe cell, its render's path-check cosine (NaN without a held-out example); None: not measured."""
        if self.early is None:
            return None
        images = [torch.from_numpy(image) for batch in renders for image in batch]
        vectors = early_vectors(self.view, self.early.modules, images, layouts=self.early.layouts, fixed_size=self.early.fixed_size)
        return path_check(vectors, self.examples).cosine


def held_out_examples(run: RunInputs, sample: list[CellBatch]) -> HeldOutExamples:
    """What the probe's path term compares against; not measured (early None) where no probe cell has two patches."""
    bundle, view = run.bundle, run.view
    written, per_cell = bundle.patches(), run.config.tiles.examples_per_cell
    grids = {cells.grid: bundle.grid_cells(cells.grid) for cells in sample}
    names = [cell_patches(grids[cells.grid][row], per_cell, written)[1:] for cells in sample for row in cells.rows]
    if not any(names):
        return HeldOutExamples(view, None, [])
    layers = path_layers(run)
    early = EarlyLayers([resolve_layer(view.model, name) for name in layers], path_layouts(view, layers), only_input_size(view))
    unique = sorted({name for own in names for name in own})
    found = dict(zip(unique, vectors_of(bundle, unique, view, early, strict=False), strict=True))
    examples = []
    for own in names:
        rows = [found[name] for name in own if found[name] is not None]
        examples.append(np.stack(rows) if rows else np.zeros((0, 0), np.float32))
    return HeldOutExamples(view, early, examples)


def icon_frame(run: RunInputs) -> IconFrame:
    """This run's icon frame (atlas.featurevis.framing), with what it means for the icons logged."""
    config = run.config.render
    frame = frame_icons(run.view, config.icon_size, config.crop_to_field, run.config.seed)
    if frame.canvas != config.icon_size:
        run.log(f"[render] icons are rendered at the model's input size, {frame.canvas} px, and shown at {config.icon_size} px")
    if frame.field is not None:
        field = frame.field
        what = f"icons show that {field.size} px square (the whole render in views/)" if field.crops else "it covers the icon: no crop"
        run.log(f"[render] the centre position sees {field.size} of {field.image_size} px ({field.fraction:.0%}); {what}")
    return frame


def render_settings(run: RunInputs) -> list[Any]:
    """The render section as it keys the stage: every setting, with ``batch_size`` as resolved for the device (a
    batch's cells share a retrieval term), and the device off the CPU (GPU icons differ from CPU icons in the last
    bits). ``proximity`` counts only for accentuate and ``probe_cells`` only when a probe runs: they change nothing
    otherwise, and a key must not change without the icons."""
    config = run.config.render
    section = {**config.model_dump(mode="json"), "batch_size": config.batch_size_on(run.device.type)}
    if not config.may_accentuate():
        del section["proximity"]
    if not config.probes():
        del section["probe_cells"]
        return [section, run.config.seed, *key_part(run.device)]
    path_check = run.config.path_check.model_dump(mode="json")  # the probe's path term (its auto layers follow the model)
    probe_path = {"path_check": path_check, "examples_per_cell": run.config.tiles.examples_per_cell}
    return [section, run.config.seed, probe_path, *key_part(run.device)]


# version 2: the key holds every setting as it is (version 1 dropped settings at the values older runs used)
# version 3: the probe keeps a candidate only past its own noise, and scores the path check too
STAGE = Stage("render", reads=("grid",), settings=render_settings, work=render_icons, version=3)
