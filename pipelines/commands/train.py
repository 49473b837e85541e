"""``atlas train``: every activation variant as one Dask task, resumable, skipped when already trained.

A variant's folder holds a ``.key`` naming the settings it was trained with.
Same key and ``metrics.json`` present: done, skipped. Same key, no metrics:
a killed run, resumed from its last epoch checkpoint. Different key: the
settings changed, so the old checkpoint is discarded and training starts over.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from atlas.config import ExperimentConfig, TrainConfig
from atlas.devices import CPU, key_part, resolve_device
from atlas.io import read_json
from atlas.markers import is_fresh, read_marker, write_marker
from atlas.storage import location, require_local
from atlas.train.data import TrainingData, load_training_data
from atlas.train.trainer import CHECKPOINT, METRICS, PROGRESS, Schedule, Variant, train_variant, variant_of
from atlas.train.trainer import VERSION as TRAINER_VERSION
from atlas_pipelines.engine.executor import Executor
from atlas_pipelines.engine.stage import fingerprint
from atlas_pipelines.engine.worker_state import use_threads

KEY_FILE = ".key"


def experiment_dir(config: ExperimentConfig) -> Path:
    """atlas train and atlas compare write to this machine's disk (their models and pages are small)."""
    return require_local(location(config.output.dir), "output.dir") / config.name


def variant_dir(config: ExperimentConfig, activation: str) -> Path:
    return experiment_dir(config) / "train" / activation


def training_data(config: TrainConfig, log: Callable[[str], None] = print) -> TrainingData:
    """The images ``train.dataset`` names, sized and split as the ``train`` settings say."""
    return load_training_data(
        config.dataset,
        root=config.root,
        limit_train_images=config.limit_train_images,
        limit_test_images=config.limit_test_images,
        test_fraction=config.test_fraction,
        seed=config.seed,
        input_size=config.input_size,
        channels=config.channels,
        log=log,
    )


def schedule_of(config: TrainConfig) -> Schedule:
    """The ``train`` settings every variant shares: each field of a Schedule is the ``train`` key of its name."""
    return Schedule(**config.model_dump(include={field.name for field in fields(Schedule)}))


def variant_for(config: TrainConfig, activation: str, data: TrainingData) -> Variant:
    """The ``train`` settings' variant with ``activation``; an unknown name fails here, listing the valid ones."""
    return variant_of(config.architecture, activation, data, config.width, config.batch_norm)


def train_task(variant: Variant, data: TrainingData, schedule: Schedule, out_dir: Path, threads: int, device: str) -> dict[str, Any]:
    """Runs on a worker: one variant, start to finish (or from its last checkpoint), on ``device``."""
    use_threads(threads)
    return train_variant(variant, data, schedule, out_dir, device=torch.device(device))


def variant_key(config: TrainConfig, activation: str, data: TrainingData, device: torch.device = CPU) -> str:
    """The settings a variant was trained with, and the device's part (``atlas.devices.key_part``)."""
    settings = config.model_dump(mode="json", exclude={"activations", "root"})  # where the dataset lives is not what it is
    return fingerprint(
        TRAINER_VERSION, settings, activation, data.images_source, len(data.train.labels), len(data.test.labels), *key_part(device)
    )


def run_training(
    config: ExperimentConfig, executor: Callable[[], Executor], log: Callable[[str], None] = print
) -> tuple[dict[str, dict[str, Any]], TrainingData]:
    """Train every variant not yet trained with these settings; returns ``{activation: metrics}`` and the data."""
    train = config.train
    device = resolve_device(config.device)  # a GPU asked for where there is none fails before the data loads
    data = training_data(train, log)
    log(f"[train] {train.dataset}: {len(data.train.labels)} training, {len(data.test.labels)} test images at "
        f"{data.preprocessing.input_size} px; {train.architecture}, {len(train.activations)} activation(s)")  # fmt: skip
    variants = {name: variant_for(train, name, data) for name in train.activations}  # unknown names fail before any work
    metrics: dict[str, dict[str, Any]] = {}
    todo: dict[str, tuple[Path, str]] = {}
    for name in variants:
        folder, key = variant_dir(config, name), variant_key(train, name, data, device)
        if _done(folder, key):
            metrics[name] = read_json(folder / METRICS)
            continue
        if (stored := read_marker(folder / KEY_FILE)) is not None and stored.get("key") != key:
            shutil.rmtree(folder)  # trained with other settings: its checkpoint cannot be resumed
        folder.mkdir(parents=True, exist_ok=True)
        (folder / METRICS).unlink(missing_ok=True)
        write_marker(folder / KEY_FILE, key)
        if (folder / CHECKPOINT).exists():
            log(f"[train] {name}: resuming from its last finished epoch")
        todo[name] = (folder, key)
    if todo:
        ex = executor()
        data_ref = ex.scatter(data)
        futures = {
            ex.submit(train_task, variants[name], data_ref, schedule_of(train), folder, ex.threads_per_task, str(device)): name
            for name, (folder, _k) in todo.items()
        }
        folders = [folder for folder, _k in todo.values()]
        total = len(variants) * train.epochs
        with tqdm(total=total, initial=total - len(todo) * train.epochs, desc="train", unit="epoch") as bar, _EpochWatch(bar, folders):
            for future in ex.as_completed(list(futures)):
                name = futures[future]
                metrics[name] = future.result()
                log(f"[train] {name}: test accuracy {metrics[name]['test_accuracy']:.3f}, "
                    f"{metrics[name]['seconds_per_epoch']:.1f} s/epoch, dead units {100 * metrics[name]['units']['dead_fraction']:.1f}%")  # fmt: skip
    else:
        log(f"[train] all {len(variants)} variant(s) already trained (cached)")
    return {name: metrics[name] for name in train.activations}, data


class _EpochWatch:
    """Advances the bar as workers finish epochs (they write ``progress.json``), polled from a thread."""

    def __init__(self, bar: tqdm, folders: list[Path], every: float = 1.0) -> None:
        self.bar, self.folders, self.every = bar, folders, every
        self.base = bar.n
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _epochs(self) -> int:
        done = 0
        for folder in self.folders:
            try:
                done += int(read_json(folder / PROGRESS)["epochs_done"])
            except (OSError, ValueError, KeyError):
                continue
        return done

    def _poll(self) -> None:
        while not self.stop.wait(self.every):
            self._refresh()

    def _refresh(self) -> None:
        target = self.base + self._epochs()
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def __enter__(self) -> _EpochWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._refresh()


def _done(folder: Path, key: str) -> bool:
    return is_fresh(folder / KEY_FILE, key, [folder / METRICS])
