"""Render stage: one Dask task per batch of cells renders and saves their icons; then each icon's fidelity.

A batch is done when its marker (holding the stage key) exists, written after
its PNGs, so a re-run renders only the batches a kill interrupted. Before the
batches, settings left to ``auto`` are chosen by a probe render of a few cells
on the workers (atlas.featurevis.choice), icons are rendered no larger than the
model's input, and the centre position's receptive field is measured
(atlas.featurevis.receptive): when the icon is not exactly what the model was
fed (a crop to that field, or another size), the render is kept as its full view.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from atlas.bundle import Bundle, BundleWriter, Cell, Score, alpha_file, full_view_file, icon_batch_marker, patch_file
from atlas.config import ModelConfig, RenderConfig
from atlas.devices import key_part
from atlas.errors import AtlasError
from atlas.featurevis import (
    Direction,
    Log,
    Objective,
    Proximity,
    RenderResult,
    Retrieval,
    accentuate,
    derive_seed,
    estimate_spectrum,
    fourier,
    maco,
    render,
    score_images,
)
from atlas.featurevis.choice import RenderSettings, Trial, choose_settings, first_candidates, probe_cells
from atlas.featurevis.fidelity import Fidelity, centre_activations, direction_fidelity
from atlas.featurevis.receptive import ReceptiveField, measure_receptive_field
from atlas.images.preprocess import to_pixels
from atlas.lock import sweep_temporaries
from atlas.markers import is_fresh, write_marker
from atlas.models import ModelView
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall
from atlas_pipelines.engine.worker_state import model_view, use_threads


@dataclass(frozen=True)
class IconBatch:
    grid: int
    index: int
    icons: tuple[str, ...]  # bundle paths
    seeds: tuple[int, ...]
    rows: tuple[int, ...]  # positions in directions.npy
    starts: tuple[str | None, ...] = ()  # each cell's best example patch (accentuate's start), None without one

    @property
    def marker(self) -> str:
        return icon_batch_marker(self.grid, self.index)


def load_icons(bundle: Bundle, icons: list[str], channels: int, size: int) -> torch.Tensor:
    """Saved icons as [N, C, H, W] in [0, 1], exactly the pixels the PNGs hold."""
    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(bundle.image(name).convert(mode), dtype=np.float32) / 255.0 for name in icons]
    if not arrays:
        return torch.zeros(0, channels, size, size)
    stacked = np.stack(arrays)
    return torch.from_numpy(stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2).copy())


def objective_for(directions: np.ndarray, rows: Sequence[int], whitening: np.ndarray | None, settings: RenderSettings) -> Objective:
    """The objective of the cells at ``rows`` of a grid's ``directions`` under ``settings``.

    ``whiten``: full (whitened), dot (whitened growth, own cosine) or off. ``contrast`` adds the retrieval term over
    all of the grid's directions, balanced against the direction term as a sum of logs (a product of the two).
    """
    targets = directions[list(rows)]
    if settings.whiten == "off" or whitening is None:
        direction = Direction(targets, cossim_power=settings.cossim_power)
    else:
        cosine = "raw" if settings.whiten == "dot" else "whitened"
        direction = Direction.whitened(targets, whitening, cosine=cosine, cossim_power=settings.cossim_power)
    if not settings.contrast:
        return direction
    return Log(direction) + Retrieval(directions, list(rows))


@dataclass(frozen=True)
class ParamInputs:
    """What a parameterisation needs besides seeds: the run's spectrum (maco), the cells' start images (accentuate)."""

    spectrum: np.ndarray | None = None
    starts: np.ndarray | None = None  # [B, C, S, S] in [0, 1], one per cell in seed order


def render_cells(
    view: ModelView,
    directions: np.ndarray,
    rows: Sequence[int],
    whitening: np.ndarray | None,
    seeds: list[int],
    config: RenderConfig,
    settings: RenderSettings,
    inputs: ParamInputs = ParamInputs(),
    canvas: int | None = None,
) -> RenderResult:
    """Render the cells at ``rows`` of a grid's ``directions`` on a ``canvas`` px square (default the icon size):
    ``images`` is the whole render of each, as the model is fed it (before any crop to the receptive field or
    scaling to the icon size)."""
    prep = view.preprocessing
    size = canvas or config.icon_size
    objective = objective_for(directions, rows, whitening, settings)
    if config.param == "maco":
        if inputs.spectrum is None:
            raise ValueError("render.param maco needs the run's spectrum")
        param = maco(prep.channels, size, torch.from_numpy(inputs.spectrum))
    elif config.param == "accentuate":
        if inputs.starts is None:
            raise ValueError("render.param accentuate needs each cell's start image")
        starts = torch.from_numpy(inputs.starts)
        param = accentuate(prep.channels, size, starts)
        # The penalty follows each icon's own objective at its start, so one setting suits any layer's scale.
        at_start = score_images(view, objective, starts)
        objective = objective + Proximity(starts, weight=config.proximity * at_start.abs().clamp_min(1e-6).cpu())
    else:
        param = fourier(prep.channels, size)
    return render(
        view, objective, param,
        seeds=seeds,
        steps=config.steps, lr=settings.learning_rate, tries=settings.tries, precision=config.precision, alpha=config.alpha,
    )  # fmt: skip


def first_patch(cell: Cell) -> str | None:
    """The patch of a cell's best example (its first), where accentuate starts; None for a cell without examples."""
    if not cell.examples:
        return None
    first = cell.examples[0]
    return patch_file(first.image_id, first.y, first.x)


def start_images(bundle: Bundle, patches: tuple[str | None, ...] | list[str | None], channels: int, size: int) -> np.ndarray:
    """[N, C, size, size] in [0, 1]: the given patches, grey where there is none or it cannot be read."""
    mode = "L" if channels == 1 else "RGB"
    starts = np.full((len(patches), channels, size, size), 0.5, np.float32)
    for n, name in enumerate(patches):
        if name is None:
            continue
        try:
            patch = bundle.image(name).convert(mode).resize((size, size), Image.Resampling.BICUBIC)
        except (OSError, ValueError):
            continue
        pixels = np.asarray(patch, np.float32) / 255.0
        starts[n] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return starts


@dataclass(frozen=True)
class IconFrame:
    """Where an icon comes from: a ``canvas`` px render (never larger than the model's input), shown at ``icon`` px,
    as the receptive field's square of it when ``field`` crops. When what is shown is not what the model was fed,
    the render is kept as the icon's full view, which fidelity and the path check score."""

    canvas: int
    icon: int
    field: ReceptiveField | None = None

    @property
    def crops(self) -> bool:
        return self.field is not None and self.field.crops

    @property
    def keeps_views(self) -> bool:
        return self.crops or self.canvas != self.icon

    def shown(self, images: torch.Tensor) -> torch.Tensor:
        """The icons as saved: the field's square (when it crops), scaled to the icon size."""
        if self.field is not None and self.crops:
            top, left, side = self.field.top, self.field.left, self.field.size
            images = images[:, :, top : top + side, left : left + side]
        if images.shape[-1] == self.icon and images.shape[-2] == self.icon:
            return images
        return F.interpolate(images, size=(self.icon, self.icon), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"canvas": self.canvas, "icon": self.icon, "views": self.keeps_views}


def render_batch_task(
    bundle: BundleWriter,
    batch: IconBatch,
    directions: np.ndarray,
    whitening: np.ndarray | None,
    model_config: ModelConfig,
    config: RenderConfig,
    settings: RenderSettings,
    frame: IconFrame,
    spectrum: np.ndarray | None,
    key: str,
    threads: int,
    device: str = "cpu",
) -> int:
    """Runs on a worker: render one batch of cells on ``device`` and save their icons, then the batch marker.

    When the icon is not what the model was fed (a crop to the receptive field, or another size), the render is kept
    as the icon's full view.
    """
    use_threads(threads)
    view = model_view(model_config, device)
    starts = None
    if config.param == "accentuate":  # the patches named when the batch was planned: no grid.json read per task
        starts = start_images(bundle, batch.starts, view.preprocessing.channels, frame.canvas)
    inputs = ParamInputs(spectrum, starts)
    result = render_cells(view, directions, batch.rows, whitening, list(batch.seeds), config, settings, inputs, frame.canvas)
    images = result.images.cpu()
    icons = frame.shown(images) if frame.keeps_views else None
    for n, name in enumerate(batch.icons):
        if icons is not None:
            bundle.write_icon(full_view_file(name), images[n].numpy())
        if result.alpha is not None:
            bundle.write_icon(alpha_file(name), result.alpha[n].cpu().numpy())
        bundle.write_icon(name, (icons if icons is not None else images)[n].numpy())
    write_marker(bundle.path(batch.marker), key)
    return len(batch.icons)


def probe_task(
    directions: np.ndarray,
    rows: list[int],
    whitening: np.ndarray,
    seeds: list[int],
    starts: np.ndarray | None,
    spectrum: np.ndarray | None,
    model_config: ModelConfig,
    config: RenderConfig,
    settings: RenderSettings,
    canvas: int,
    threads: int,
    device: str = "cpu",
) -> np.ndarray:
    """Runs on a worker: render probe cells under one candidate; the renders as the saved 8-bit PNGs would hold them."""
    use_threads(threads)
    view = model_view(model_config, device)
    inputs = ParamInputs(spectrum, starts)
    result = render_cells(view, directions, rows, whitening, seeds, config, settings, inputs, canvas)
    return (torch.round(result.images.float().cpu() * 255.0) / 255.0).numpy()


def plan_batches(bundle: Bundle, sizes: tuple[int, ...], batch_size: int, seed: int) -> list[IconBatch]:
    batches = []
    for size in sizes:
        cells = bundle.grid_cells(size)
        for index, start in enumerate(range(0, len(cells), batch_size)):
            chunk = cells[start : start + batch_size]
            batches.append(
                IconBatch(
                    size, index,
                    tuple(c.icon for c in chunk),
                    tuple(derive_seed(seed, size, c.i, c.j) for c in chunk),
                    tuple(range(start, start + len(chunk))),
                    tuple(first_patch(c) for c in chunk),
                )
            )  # fmt: skip
    return batches


def render_icons(call: StageCall) -> Report:
    run, key = call.run, call.key
    config, bundle, sizes = run.config.render, run.bundle, run.config.grid.sizes
    batches = plan_batches(bundle, sizes, config.batch_size_on(run.device.type), run.config.seed)
    frame = icon_frame(run)
    spectrum = run_spectrum(run, frame.canvas) if config.param == "maco" else None
    settings, trials = chosen_settings(run, key, frame.canvas, spectrum)
    todo = [b for b in batches if not is_fresh(bundle.path(b.marker), key, [bundle.path(name) for name in b.icons])]
    swept = sum(sweep_temporaries(folder) for folder in {bundle.path(b.marker).parent for b in todo})
    run.log(
        f"[render] rendering {len(todo)} of {len(batches)} icon batches ({len(batches) - len(todo)} already done"
        + (f"; removed {swept} temporary file(s) of an interrupted run)" if swept else ")")
    )
    if todo:
        ex = run.executor()
        whitening_ref = ex.scatter(bundle.whitening() if settings.whiten != "off" else None)
        spectrum_ref = ex.scatter(spectrum)
        direction_refs = {size: ex.scatter(bundle.directions(size)) for size in {b.grid for b in todo}}
        futures = [
            ex.submit(
                render_batch_task, bundle, b, direction_refs[b.grid], whitening_ref, run.config.model, config, settings, frame,
                spectrum_ref, key, ex.threads_per_task, str(run.device),
            )
            for b in todo
        ]  # fmt: skip
        total = sum(len(b.icons) for b in batches)
        with tqdm(total=total, initial=total - sum(len(b.icons) for b in todo), desc="render", unit="icon") as bar:
            for future in ex.as_completed(futures):
                bar.update(future.result())
    levels = []
    for size in sizes:
        fidelity = measure_fidelity(bundle, size, run.view, frame.canvas, frame.keeps_views)
        summary = None
        if len(fidelity.rank):
            summary = {"mean_cosine": round(fidelity.mean_cosine, 4), "top1": round(fidelity.top1, 4)}
            run.log(f"[render] grid {size}: top-1 {fidelity.top1:.2f}, mean cosine {fidelity.mean_cosine:.2f}")
            if fidelity.nonfinite:
                summary["nonfinite"] = fidelity.nonfinite
                run.log(f"[render] grid {size}: {fidelity.nonfinite} icon(s) give NaN or infinity at the layer; scored cosine 0, last rank")
        else:
            run.log(f"[render] grid {size}: no cells, no icons")
        levels.append({"grid": size, "icon_size": config.icon_size, "fidelity": summary})
    report: dict[str, Any] = {
        "steps": config.steps, "icon_size": config.icon_size, "param": config.param, **asdict(settings),
        "chosen_by": "probe" if trials else ("default" if config.probes() else "config"), "probe": [t.to_json() for t in trials],
        "receptive_field": None if frame.field is None else frame.field.to_json(), "frame": frame.to_json(), "alpha": config.alpha,
    }  # fmt: skip
    return {"render": report, "levels": levels}


PROBE_MIN_RATIO = 4  # a probe of more than a quarter of the atlas's cells would cost more than it could save


SPECTRUM_IMAGES = 256  # of the run's own images, for maco's magnitude spectrum


def run_spectrum(run: RunInputs, canvas: int) -> np.ndarray:
    """maco's fixed magnitude: the mean Fourier magnitude of up to 256 of the run's images, as the model sees them
    (its input frame, in [0, 1]), at the canvas size; estimated once and kept in the bundle."""
    size, channels = canvas, run.model.preprocessing.channels
    saved = run.bundle.render_spectrum()
    if saved is not None and saved.shape == (channels, size, size // 2 + 1):
        return saved
    pixels: list[torch.Tensor] = []
    for shard in run.shards:
        for record in run.source.read(shard):
            if record.image is not None:
                with contextlib.suppress(OSError, ValueError):
                    pixels.append(to_pixels(record.image, run.model.preprocessing))
            if len(pixels) >= SPECTRUM_IMAGES:
                break
        if len(pixels) >= SPECTRUM_IMAGES:
            break
    if not pixels:
        raise AtlasError("render.param maco: no readable image to estimate the spectrum from; use render.param fourier")
    spectrum = estimate_spectrum(torch.stack(pixels), size).numpy()
    run.bundle.write_render_spectrum(spectrum)
    run.log(f"[render] maco: magnitude spectrum from {len(pixels)} of the run's images at {size} px")
    return spectrum


def chosen_settings(run: RunInputs, key: str, canvas: int, spectrum: np.ndarray | None = None) -> tuple[RenderSettings, list[Trial]]:
    """The settings every icon of this run is rendered with: the config's, or for ``auto`` the probe's choice.

    The probe renders a fixed sample of cells with the real seeds on the workers and scores them like fidelity does;
    its choice is kept under the stage key, so a resumed run renders its remaining batches the same way.
    """
    config, bundle = run.config.render, run.bundle
    if not config.probes():
        return first_candidates(config.whiten, config.cossim_power, config.learning_rate, config.contrast, config.tries), []
    sizes = run.config.grid.sizes
    cells = {size: bundle.grid_cells(size) for size in sizes}
    total = sum(len(c) for c in cells.values())
    if config.probe_cells == 0 or total < PROBE_MIN_RATIO * config.probe_cells:
        settings = first_candidates(config.whiten, config.cossim_power, config.learning_rate, config.contrast, config.tries)
        run.log(f"[render] {total} cells: too few to probe render.probe_cells={config.probe_cells} of them; 'auto' takes {settings}")
        return settings, []
    saved = bundle.render_probe()
    if saved is not None and saved.get("key") == key:
        return RenderSettings(**saved["chosen"]), [Trial.from_json(t) for t in saved["trials"]]
    directions = {size: bundle.directions(size) for size in sizes}
    per_grid = max(1, config.probe_cells // (1 if len(sizes) == 1 else 2))
    sample = probe_cells([len(cells[size]) for size in sizes], per_grid, run.config.seed)
    prep = run.model.preprocessing
    ex = run.executor()
    whitening_ref = ex.scatter(bundle.whitening())
    spectrum_ref = ex.scatter(spectrum)
    work = []  # per sampled grid: its rows, all its directions (the retrieval term needs them), seeds, start images
    for level, rows in sample:
        size = sizes[level]
        seeds = [derive_seed(run.config.seed, size, cells[size][r].i, cells[size][r].j) for r in rows]
        starts = (
            start_images(bundle, [first_patch(cells[size][r]) for r in rows], prep.channels, canvas)
            if config.param == "accentuate"
            else None
        )
        work.append((size, rows, ex.scatter(directions[size]), seeds, starts))

    def evaluate(candidates: list[RenderSettings]) -> list[tuple[float, float]]:
        """Every candidate's probe cells render side by side as worker tasks (with the workers' own model); the
        driver feeds the results back and ranks them against all of their grid's directions."""
        futures = [
            [
                ex.submit(
                    probe_task, grid_directions, rows, whitening_ref, seeds, starts, spectrum_ref, run.config.model, config,
                    settings, canvas, ex.threads_per_task, str(run.device),
                )
                for _, rows, grid_directions, seeds, starts in work
            ]
            for settings in candidates
        ]  # fmt: skip
        scores = []
        for settings, parts in zip(candidates, futures, strict=True):
            cosines, ranks = [], []
            for (size, rows, _, _, _), future in zip(work, parts, strict=True):
                activations = centre_activations(run.view, torch.from_numpy(future.result()))
                fidelity = direction_fidelity(activations, directions[size], own=np.asarray(rows))
                cosines.append(fidelity.cosine)
                ranks.append(fidelity.rank)
            rank, cosine = np.concatenate(ranks), np.concatenate(cosines)
            run.log(f"[render] probe {settings}: top-1 {np.mean(rank == 0):.2f}, mean cosine {cosine.mean():.2f}")
            scores.append((float(np.mean(rank == 0)), float(cosine.mean())))
        return scores

    count = sum(len(rows) for _, rows in sample)
    run.log(f"[render] choosing render settings ({', '.join(config.probed())}) with a probe of {count} cells")
    settings, trials = choose_settings(config.whiten, config.cossim_power, config.learning_rate, evaluate, config.contrast, config.tries)
    run.log(f"[render] chose {settings}")
    bundle.write_render_probe({"key": key, "chosen": asdict(settings), "trials": [t.to_json() for t in trials], "cells": count})
    return settings, trials


def icon_frame(run: RunInputs) -> IconFrame:
    """Where this run's icons come from: rendered at the icon size but never larger than the model's input (a 28 px
    model's icons are rendered at 28 px and scaled up), and the centre position's receptive field on that canvas,
    measured once from the model, when ``render.crop_to_field``."""
    prep, config = run.model.preprocessing, run.config.render
    canvas = min(config.icon_size, prep.input_size)
    if canvas != config.icon_size:
        run.log(f"[render] icons are rendered at the model's input size, {canvas} px, and shown at {config.icon_size} px")
    if not config.crop_to_field:
        return IconFrame(canvas, config.icon_size)
    field = measure_receptive_field(run.view, canvas, seed=run.config.seed)
    what = f"icons show that {field.size} px square (the whole render in views/)" if field.crops else "it covers the icon: no crop"
    run.log(f"[render] the centre position sees {field.size} of {field.image_size} px ({field.fraction:.0%}); {what}")
    return IconFrame(canvas, config.icon_size, field)


FIDELITY_BATCH = 256  # icons read and fed back at a time


def measure_fidelity(bundle: BundleWriter, size: int, view: ModelView, icon_size: int, views: bool = False) -> Fidelity:
    """Feed the saved PNGs back through the model (the full views when icons are cropped: what was optimised);
    each cell's cosine and rank go to the level's fidelity file."""
    cells = bundle.grid_cells(size)
    fed = [full_view_file(c.icon) if views else c.icon for c in cells]
    prep = view.preprocessing
    if len(cells):
        # A batch of icons at a time: a 320 grid of 80 px RGB icons would be 4 GB as one float tensor.
        activations = np.concatenate(
            [
                centre_activations(view, load_icons(bundle, fed[start : start + FIDELITY_BATCH], prep.channels, icon_size))
                for start in range(0, len(cells), FIDELITY_BATCH)
            ]
        )
        fidelity = direction_fidelity(activations, bundle.directions(size))
    else:
        fidelity = Fidelity(np.zeros(0, np.float32), np.zeros(0, np.int64))
    bundle.write_fidelity(size, [Score(round(float(c), 4), int(r)) for c, r in zip(fidelity.cosine, fidelity.rank)])
    return fidelity


def render_settings(run: RunInputs) -> list[Any]:
    """The render section as it keys the stage, so that a run that renders as before keeps its key: ``batch_size`` as
    resolved ('auto' is 64 on CPU, the old default), ``precision``, ``param``, ``alpha``, ``crop_to_field`` and
    ``contrast`` only away from the values that render as before, and the device only off the CPU (GPU icons differ from CPU icons in
    the last bits; bf16 ones more). The defaults of issue 14 (settings chosen by a probe, icons cropped to the
    receptive field) render differently, so a default run re-renders an older default bundle."""
    config = run.config.render
    section = {**config.model_dump(mode="json"), "batch_size": config.batch_size_on(run.device.type)}
    # Settings added later leave the key alone at the value that renders as before, so older bundles stay cached.
    for name, before in (("precision", "fp32"), ("param", "fourier"), ("alpha", False), ("crop_to_field", False), ("contrast", False)):
        if section[name] == before:
            del section[name]
    if config.param != "accentuate":
        del section["proximity"]
    if not config.probes():
        del section["probe_cells"]  # without an 'auto' setting there is no probe
    section["whiten"] = {"full": True, "off": False}.get(config.whiten, config.whiten)  # the key's old true/false
    return [section, run.config.seed, *key_part(run.device)]


RENDER = Stage("render", reads=("grid",), settings=render_settings, work=render_icons)
