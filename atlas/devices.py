"""Which device runs the model: the top-level ``device`` config key, resolved once and checked against this torch.

``auto`` picks CUDA when torch sees a GPU, else the CPU. ``cuda`` means "the
current GPU" (index left open), which is what lets one setting serve every
worker of a one-worker-per-GPU cluster: each worker sees only its own GPU, as
``cuda:0``. Library code never reads the setting: a model is moved to a device
once (``pipelines/engine/worker_state.py``, the driver in ``pipelines/commands/run.py``) and
collection, rendering and fidelity follow the device of the model's weights.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from atlas.errors import AtlasError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")  # the names the ``device`` key takes; the config validates with it
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
CPU = torch.device("cpu")  # the default wherever a device is optional


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> ``cuda`` or ``cpu``; ``cuda``/``cuda:N`` only if this torch can use that GPU (else one line with the fix)."""
    if not DEVICE_PATTERN.fullmatch(setting):
        raise AtlasError(f"device={setting!r}: expected {DEVICE_CHOICES}")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise AtlasError(
            f"device={setting!r}: torch {torch.__version__} ({build}) sees no CUDA GPU here; use --set device=cpu (or device=auto)"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise AtlasError(
            f"device={setting!r}: only {count} CUDA GPU(s) visible (cuda:0..cuda:{count - 1}); use --set device=cuda:0 or device=cpu"
        )
    return device


def key_part(device: torch.device) -> list[Any]:
    """What a stage key gains from the device: nothing on the CPU, the reference device, and the type of any other.

    Only the device type counts: results differ between a GPU and the CPU, not between two GPUs of one kind.
    """
    return [] if device.type == "cpu" else [{"device": device.type}]


def device_of(module: nn.Module) -> torch.device:
    """Where a module's weights live (CPU for a module without parameters): inputs are moved there."""
    first = next(module.parameters(), None)
    return CPU if first is None else first.device


__all__ = ["CPU", "DEVICE_CHOICES", "DEVICE_PATTERN", "device_of", "key_part", "resolve_device"]
