"""Render stage: one Dask task per batch of cells renders and saves their icons; then each icon's fidelity.

A batch is done when its marker (holding the stage key) exists, written after
its PNGs, so a re-run renders only the batches a kill interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from atlas.bundle import Bundle, icon_batch_marker
from atlas.config import ModelConfig, RenderConfig
from atlas.devices import key_part
from atlas.featurevis import Direction, derive_seed, fourier, render
from atlas.featurevis.fidelity import Fidelity, centre_activations, direction_fidelity
from atlas.lock import sweep_temporaries
from atlas.markers import is_fresh, write_marker
from atlas.models import LoadedModel
from pipelines.context import RunInputs
from pipelines.stage import Report, Stage, StageCall
from pipelines.worker_state import model_and_layer, use_threads


@dataclass(frozen=True)
class IconBatch:
    grid: int
    index: int
    icons: tuple[str, ...]  # bundle paths
    seeds: tuple[int, ...]
    rows: tuple[int, ...]  # positions in directions.npy

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


def render_batch_task(
    bundle: Bundle,
    batch: IconBatch,
    directions: np.ndarray,
    whitening: np.ndarray | None,
    model_config: ModelConfig,
    config: RenderConfig,
    key: str,
    threads: int,
    device: str = "cpu",
) -> int:
    """Runs on a worker: render one batch of cells on ``device`` and save their icons, then the batch marker."""
    use_threads(threads)
    model, layer = model_and_layer(model_config, device)
    prep = model.preprocessing
    targets = directions[list(batch.rows)]
    objective = (
        Direction.whitened(targets, whitening, cossim_power=config.cossim_power)
        if whitening is not None
        else Direction(targets, cossim_power=config.cossim_power)
    )
    result = render(
        model.module, layer, objective, fourier(prep.channels, config.icon_size),
        seeds=list(batch.seeds), mean=prep.mean, std=prep.std,
        steps=config.steps, lr=config.learning_rate, tries=config.tries, precision=config.precision,
    )  # fmt: skip
    for name, image in zip(batch.icons, result.images.cpu().numpy()):
        bundle.write_icon(name, image)
    write_marker(bundle.path(batch.marker), key)
    return len(batch.icons)


def plan_batches(bundle: Bundle, sizes: tuple[int, ...], batch_size: int, seed: int) -> list[IconBatch]:
    batches = []
    for size in sizes:
        cells = bundle.grid_cells(size)
        for index, start in enumerate(range(0, len(cells), batch_size)):
            chunk = cells[start : start + batch_size]
            batches.append(
                IconBatch(
                    size, index,
                    tuple(c["icon"] for c in chunk),
                    tuple(derive_seed(seed, size, c["i"], c["j"]) for c in chunk),
                    tuple(range(start, start + len(chunk))),
                )
            )  # fmt: skip
    return batches


def render_icons(call: StageCall) -> Report:
    run, key = call.run, call.key
    config, bundle, sizes = run.config.render, run.bundle, run.config.grid.sizes
    batches = plan_batches(bundle, sizes, config.batch_size_on(run.device.type), run.config.seed)
    todo = [b for b in batches if not is_fresh(bundle.path(b.marker), key, [bundle.path(name) for name in b.icons])]
    swept = sum(sweep_temporaries(folder) for folder in {bundle.path(b.marker).parent for b in todo})
    run.log(
        f"[render] rendering {len(todo)} of {len(batches)} icon batches ({len(batches) - len(todo)} already done"
        + (f"; removed {swept} temporary file(s) of an interrupted run)" if swept else ")")
    )
    if todo:
        ex = run.executor()
        whitening_ref = ex.scatter(bundle.whitening() if config.whiten else None)
        direction_refs = {size: ex.scatter(bundle.directions(size)) for size in {b.grid for b in todo}}
        futures = [
            ex.submit(
                render_batch_task, bundle, b, direction_refs[b.grid], whitening_ref, run.config.model, config, key, ex.threads_per_task,
                str(run.device),
            )
            for b in todo
        ]  # fmt: skip
        total = sum(len(b.icons) for b in batches)
        with tqdm(total=total, initial=total - sum(len(b.icons) for b in todo), desc="render", unit="icon") as bar:
            for future in ex.as_completed(futures):
                bar.update(future.result())
    levels = []
    for size in sizes:
        fidelity = measure_fidelity(bundle, size, run.model, run.layer, config.icon_size)
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
    settings = config.model_dump(mode="json")
    return {"render": {k: settings[k] for k in ("steps", "icon_size", "tries", "learning_rate", "whiten")}, "levels": levels}


FIDELITY_BATCH = 256  # icons read and fed back at a time


def measure_fidelity(bundle: Bundle, size: int, model: LoadedModel, layer: torch.nn.Module, icon_size: int) -> Fidelity:
    """Feed the saved PNGs back through the model; each cell's cosine and rank go to the level's fidelity file."""
    cells: list[dict[str, Any]] = bundle.grid_cells(size)
    prep = model.preprocessing
    if len(cells):
        # A batch of icons at a time: a 320 grid of 80 px RGB icons would be 4 GB as one float tensor.
        activations = np.concatenate(
            [
                centre_activations(
                    model.module,
                    layer,
                    load_icons(bundle, [c["icon"] for c in cells[start : start + FIDELITY_BATCH]], prep.channels, icon_size),
                    prep.mean,
                    prep.std,
                )
                for start in range(0, len(cells), FIDELITY_BATCH)
            ]
        )
        fidelity = direction_fidelity(activations, bundle.directions(size))
    else:
        fidelity = Fidelity(np.zeros(0, np.float32), np.zeros(0, np.int64))
    bundle.write_fidelity(size, [{"cosine": round(float(c), 4), "rank": int(r)} for c, r in zip(fidelity.cosine, fidelity.rank)])
    return fidelity


def render_settings(run: RunInputs) -> list[Any]:
    """The render section as it keys the stage, so that a CPU run keeps the key it had before devices existed:
    ``batch_size`` as resolved ('auto' is 64 on CPU, the old default), ``precision`` only when not fp32, and the
    device only off the CPU (GPU icons differ from CPU icons in the last bits; bf16 ones more)."""
    config = run.config.render
    section = {**config.model_dump(mode="json"), "batch_size": config.batch_size_on(run.device.type)}
    if config.precision == "fp32":
        del section["precision"]
    return [section, run.config.seed, *key_part(run.device)]


RENDER = Stage("render", reads=("grid",), settings=render_settings, work=render_icons)
