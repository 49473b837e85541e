"""Train one variant (architecture x activation) with a schedule every variant shares; resumable.

Fairness is the point: the same seed builds the same initialisation (the
parameter shapes do not depend on the activation), the data order of epoch e
comes from ``(seed, e)`` alone, and Adam with a cosine schedule runs the same
number of steps. Nothing else is random (no dropout, no augmentation), so a
variant trained twice with the same seed and thread count is identical.

After every epoch a checkpoint (model, optimiser, history) is written
atomically; a killed run resumes from the last finished epoch.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from atlas.devices import CPU
from atlas.io import write_bytes, write_json
from atlas.models.card import MODEL_CARD, ModelCard, new_card, write_card  # noqa: F401  MODEL_CARD: the folder's file names live together
from atlas.models.zoo import ACTIVATION_CHANNEL_DIM, FIXED_INPUT_SIZE, build_classifier, check_input_size, make_activation
from atlas.train.data import Split, TrainingData, to_model_input
from atlas.train.units import activation_layers, unit_statistics, weight_layers

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
METRICS = "metrics.json"
PROGRESS = "progress.json"  # epochs finished so far, for a progress bar in another process
EVAL_BATCH = 500
_INIT_LOCK = threading.Lock()
START_STEPS = 50  # gradient norms are also kept for the first steps alone: vanishing gradients show at initialisation
VERSION = "train/3"  # part of a variant's cache key: bump when what training records changes


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """How every variant of one comparison is trained, so that variants differ by their activation alone."""

    epochs: int
    batch_size: int
    learning_rate: float  # Adam's step at the start of the cosine schedule
    weight_decay: float
    dead_threshold: float  # a unit is dead when |f'(x)| stays below this on every test input
    seed: int  # the initialisation and every epoch's data order


@dataclass(frozen=True)
class Variant:
    architecture: str
    activation: str
    num_classes: int
    in_channels: int
    width: int
    batch_norm: bool
    input_size: int = 28  # px per side; only the ViT depends on it (its position embeddings)

    def build(self, seed: int) -> nn.Module:
        """The initial model for ``seed``; the lock keeps two tasks in one worker from interleaving on the global RNG."""
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_classifier(**self.kwargs())

    def kwargs(self) -> dict[str, Any]:
        """:func:`build_classifier`'s arguments; ``input_size`` only where the architecture depends on it, so CNN cards stay as they were."""
        kwargs: dict[str, Any] = {
            "architecture": self.architecture,
            "activation": self.activation,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "width": self.width,
            "batch_norm": self.batch_norm,
        }
        if self.architecture in FIXED_INPUT_SIZE:
            kwargs["input_size"] = self.input_size
        return kwargs


def variant_of(architecture: str, activation: str, data: TrainingData, width: int, batch_norm: bool) -> Variant:
    """The variant with ``activation`` for ``data``'s classes, channels and size; an unknown activation, or a size the
    architecture cannot take, fails here with its one line, before any training starts."""
    make_activation(activation)
    pre = data.preprocessing
    check_input_size(architecture, pre.input_size)
    return Variant(architecture, activation, len(data.classes), pre.channels, width, batch_norm, pre.input_size)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: the same for every variant."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_variant(
    variant: Variant,
    data: TrainingData,
    schedule: Schedule,
    out_dir: Path,
    log: Callable[[str], None] = lambda _m: None,
    device: torch.device = CPU,
) -> dict[str, Any]:
    """Train (or finish training) one variant into ``out_dir`` on ``device``; returns its metrics.

    The initialisation, the data order and the files written do not depend on the device: the model is built on
    the CPU, each batch is moved to the device, and checkpoints and weights are saved as CPU tensors.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = variant.build(schedule.seed).to(device)
    steps_per_epoch = math.ceil(len(data.train.labels) / schedule.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.learning_rate, weight_decay=schedule.weight_decay)
    total_steps = steps_per_epoch * schedule.epochs
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    history: list[dict[str, Any]] = []
    start_epoch = 0
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["schedule"])
        history = state["history"]
        start_epoch = len(history)
        log(f"[train] {variant.activation}: resuming after epoch {start_epoch}")

    weights = weight_layers(model)
    loss_fn = nn.CrossEntropyLoss()
    start_norms: list[float] = []
    for epoch in range(start_epoch, schedule.epochs):
        model.train()
        order = epoch_order(len(data.train.labels), schedule.seed, epoch)
        grad_sums = torch.zeros(len(weights), dtype=torch.float64, device=device)
        loss_sum = correct = seen = 0.0
        started = time.perf_counter()
        for step in range(steps_per_epoch):
            index = order[step * schedule.batch_size : (step + 1) * schedule.batch_size]
            x = to_model_input(data.train.images[index.numpy()], data.preprocessing).to(device)
            y = torch.from_numpy(data.train.labels[index.numpy()]).to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            grad_sums += torch.stack([cast(torch.Tensor, p.grad).detach().norm() for _n, p in weights]).double()
            if step + 1 == min(START_STEPS, steps_per_epoch):
                start_norms = (grad_sums / (step + 1)).cpu().tolist()
            optimizer.step()
            lr_schedule.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += float((logits.argmax(1) == y).sum())
            seen += len(y)
        seconds = time.perf_counter() - started
        test_loss, test_accuracy = evaluate(model, data.test, data)
        history.append({
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "seconds": seconds,
            "images_per_second": seen / seconds,
            "grad_norms": (grad_sums / steps_per_epoch).cpu().tolist(),
            "grad_norms_first_steps": start_norms,
        })  # fmt: skip
        _save_checkpoint(checkpoint_path, model, optimizer, lr_schedule, history)
        write_json(out_dir / PROGRESS, {"epochs_done": len(history), "test_accuracy": test_accuracy})
        log(f"[train] {variant.activation} epoch {epoch + 1}/{schedule.epochs}: test accuracy {test_accuracy:.3f} ({seconds:.1f} s)")

    units = unit_statistics(
        model,
        activation_layers(model, type(make_activation(variant.activation))),
        _test_batches(data, device),
        schedule.dead_threshold,
        channel_dim=ACTIVATION_CHANNEL_DIM[variant.architecture],
    )
    metrics = {
        "variant": variant.kwargs(),
        "seed": schedule.seed,
        "epochs": schedule.epochs,
        "history": history,
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else None,
        "grad_norm_layers": [name for name, _p in weights],
        "units": units,
        "n_train": int(len(data.train.labels)),
        "n_test": int(len(data.test.labels)),
    }
    buffer = io.BytesIO()
    torch.save(_on_cpu(model.state_dict()), buffer)
    write_bytes(out_dir / WEIGHTS, buffer.getvalue())
    write_card(out_dir, model_card(variant, data))
    write_json(out_dir / METRICS, metrics)
    return metrics


def model_card(variant: Variant, data: TrainingData) -> ModelCard:
    """What ``atlas run`` needs to load this variant from its folder (``model.spec: <folder>``)."""
    return new_card(
        factory="atlas.models.zoo:build_classifier",
        kwargs=variant.kwargs(),
        preprocessing=data.preprocessing,
        classes=data.classes,
        weights=WEIGHTS,
    )


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, data: TrainingData) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a split, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = correct = 0.0
    for start in range(0, len(split.labels), EVAL_BATCH):
        x = to_model_input(split.images[start : start + EVAL_BATCH], data.preprocessing).to(device)
        y = torch.from_numpy(split.labels[start : start + EVAL_BATCH]).to(device)
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
    n = max(1, len(split.labels))
    return loss_sum / n, correct / n


def _test_batches(data: TrainingData, device: torch.device):  # type: ignore[no-untyped-def]
    for start in range(0, len(data.test.labels), EVAL_BATCH):
        yield to_model_input(data.test.images[start : start + EVAL_BATCH], data.preprocessing).to(device)


def _on_cpu(state: Any) -> Any:
    """A state dict (nested for the optimiser) with every tensor on the CPU: files load anywhere, and are the same
    bytes whichever device trained them (``.cpu()`` of a CPU tensor is the tensor itself)."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_on_cpu(v) for v in state]
    return state


def _save_checkpoint(path: Path, model: nn.Module, optimizer: Any, schedule: Any, history: list[dict[str, Any]]) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "model": _on_cpu(model.state_dict()),
            "optimizer": _on_cpu(optimizer.state_dict()),
            "schedule": schedule.state_dict(),
            "history": history,
        },
        buffer,
    )
    write_bytes(path, buffer.getvalue())
