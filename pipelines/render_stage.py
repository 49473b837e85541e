"""Render stage: one Dask task per batch of cells renders and saves their icons; then fidelity.

A batch is done when its marker (holding the stage key) exists, written after
its PNGs, so a re-run renders only the batches a kill interrupted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from atlas.config import ModelConfig, RenderConfig
from atlas.featurevis import Direction, derive_seed, fourier, render
from atlas.featurevis.fidelity import Fidelity, centre_activations, direction_fidelity
from atlas.io import read_json, write_bytes, write_json
from atlas.models import LoadedModel
from pipelines.executor import Executor
from pipelines.worker_state import model_and_layer, use_threads


@dataclass(frozen=True)
class IconBatch:
    grid: int
    index: int
    paths: tuple[Path, ...]
    seeds: tuple[int, ...]
    rows: tuple[int, ...]  # positions in directions.npy

    @property
    def marker(self) -> Path:
        return self.paths[0].parent / f".batch-{self.index:05d}.json"


def save_icon(path: Path, image: np.ndarray) -> None:
    """[C, H, W] in [0, 1] -> 8-bit PNG (RGB, or L for one-channel models), written atomically."""
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def load_icons(paths: list[Path], channels: int) -> torch.Tensor:
    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(Image.open(p).convert(mode), dtype=np.float32) / 255.0 for p in paths]
    stacked = np.stack(arrays)
    return torch.from_numpy(stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2).copy())


def render_batch_task(
    batch: IconBatch,
    directions: np.ndarray,
    whitening: np.ndarray | None,
    model_config: ModelConfig,
    config: RenderConfig,
    key: str,
    threads: int,
) -> int:
    """Runs on a worker: render one batch of cells and save their icons, then the batch marker."""
    use_threads(threads)
    model, layer = model_and_layer(model_config)
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
        steps=config.steps, lr=config.learning_rate, tries=config.tries,
    )  # fmt: skip
    for path, image in zip(batch.paths, result.images.numpy()):
        save_icon(path, image)
    write_json(batch.marker, {"key": key})
    return len(batch.paths)


def plan_batches(run_dir: Path, sizes: tuple[int, ...], batch_size: int, seed: int) -> list[IconBatch]:
    batches = []
    for size in sizes:
        cells = read_json(run_dir / "levels" / str(size) / "cells.json")
        for index, start in enumerate(range(0, len(cells), batch_size)):
            chunk = cells[start : start + batch_size]
            batches.append(
                IconBatch(
                    size, index,
                    tuple(run_dir / c["icon"] for c in chunk),
                    tuple(derive_seed(seed, size, c["i"], c["j"]) for c in chunk),
                    tuple(range(start, start + len(chunk))),
                )
            )  # fmt: skip
    return batches


def _batch_done(batch: IconBatch, key: str) -> bool:
    return batch.marker.exists() and json.loads(batch.marker.read_text()).get("key") == key and all(p.exists() for p in batch.paths)


def run_render(
    executor: Callable[[], Executor],
    run_dir: Path,
    sizes: tuple[int, ...],
    model_config: ModelConfig,
    config: RenderConfig,
    seed: int,
    key: str,
) -> None:
    whitening = np.load(run_dir / "layout" / "whitening.npy") if config.whiten else None
    directions = {size: np.load(run_dir / "levels" / str(size) / "directions.npy") for size in sizes}
    batches = plan_batches(run_dir, sizes, config.batch_size, seed)
    todo = [b for b in batches if not _batch_done(b, key)]
    if not todo:
        return
    ex = executor()
    whitening_ref = ex.scatter(whitening)
    direction_refs = {size: ex.scatter(d) for size, d in directions.items()}
    futures = [
        ex.submit(render_batch_task, b, direction_refs[b.grid], whitening_ref, model_config, config, key, ex.threads_per_task)
        for b in todo
    ]
    total = sum(len(b.paths) for b in batches)
    done = total - sum(len(b.paths) for b in todo)
    with tqdm(total=total, initial=done, desc="render", unit="icon") as bar:
        for future in ex.as_completed(futures):
            bar.update(future.result())


def measure_fidelity(run_dir: Path, size: int, model: LoadedModel, layer: torch.nn.Module) -> Fidelity:
    """Feed the saved PNGs back through the model and store each cell's cosine and rank in cells.json."""
    cells_path = run_dir / "levels" / str(size) / "cells.json"
    cells: list[dict[str, Any]] = read_json(cells_path)
    directions = np.load(run_dir / "levels" / str(size) / "directions.npy")
    icons = load_icons([run_dir / c["icon"] for c in cells], model.preprocessing.channels)
    prep = model.preprocessing
    activations = centre_activations(model.module, layer, icons, prep.mean, prep.std)
    fidelity = direction_fidelity(activations, directions)
    for cell, cosine, rank in zip(cells, fidelity.cosine, fidelity.rank):
        cell["fidelity"] = {"cosine": round(float(cosine), 4), "rank": int(rank)}
    write_json(cells_path, cells)
    return fidelity
