"""What each activation layer does on the test set: dead units, saturation, output statistics.

A unit (one channel of one activation layer) is *dead* when the activation
passes almost no gradient for any test input: ``|f'(x)| < threshold`` at every
position of every image. For ReLU that is exactly "never positive"; for Leaky
ReLU it can never happen; for sigmoid and tanh it means a unit saturated
everywhere. One definition for every function keeps the comparison fair.
``f'`` comes from autograd on the layer's own module, so any ``torch.nn``
activation works.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn


@dataclass
class _Running:
    max_grad: torch.Tensor
    max_input: torch.Tensor
    total: torch.Tensor
    total_sq: torch.Tensor
    count: int = 0


def activation_layers(model: nn.Module, activation_type: type[nn.Module]) -> list[tuple[str, nn.Module]]:
    """The model's activation modules of this type, in forward (depth) order of definition."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, activation_type)]


@torch.no_grad()
def unit_statistics(
    model: nn.Module, layers: list[tuple[str, nn.Module]], batches: Iterable[torch.Tensor], threshold: float, channel_dim: int = 1
) -> dict[str, Any]:
    """Per layer: dead and never-positive unit fractions, mean and std of outputs; plus totals over all units.

    ``channel_dim`` is the dimension holding the units: 1 for ``[B, C, H, W]`` maps, -1 for ``[B, N, C]`` tokens.
    """
    running: dict[str, _Running] = {}

    def hook(name: str, module: nn.Module):  # type: ignore[no-untyped-def]
        def record(_m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach()
            with torch.enable_grad():
                xg = x.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(module.forward(xg).sum(), xg)  # .forward: no hooks, no recursion
            unit_dim = channel_dim % x.dim()
            dims = [d for d in range(x.dim()) if d != unit_dim]
            channels = x.shape[unit_dim]
            state = running.get(name)
            if state is None:
                zeros = torch.zeros(channels, dtype=torch.float64, device=x.device)
                lowest = torch.full((channels,), -np.inf, device=x.device)
                state = running[name] = _Running(lowest, lowest.clone(), zeros, zeros.clone())
            state.max_grad = torch.maximum(state.max_grad, grad.abs().amax(dim=dims))
            state.max_input = torch.maximum(state.max_input, x.amax(dim=dims))
            out = output.detach().double()
            state.total += out.sum(dim=dims)
            state.total_sq += (out * out).sum(dim=dims)
            state.count += out.numel() // channels

        return record

    handles = [m.register_forward_hook(hook(name, m)) for name, m in layers]
    try:
        was_training = model.training
        model.eval()
        for batch in batches:
            model(batch)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()

    per_layer = []
    dead_units = never_positive = units = 0
    for name, _m in layers:
        state = running[name]
        dead = state.max_grad < threshold
        negative = state.max_input <= 0
        mean = state.total / state.count
        var = (state.total_sq / state.count - mean * mean).clamp_min(0)
        per_layer.append({
            "layer": name,
            "units": int(dead.numel()),
            "dead_fraction": float(dead.double().mean()),
            "never_positive_fraction": float(negative.double().mean()),
            "output_mean": float(mean.mean()),
            "output_std": float(var.mean().sqrt()),
            # per unit |mean| / std, averaged: signed means of different units must not cancel out
            "centring": float((mean.abs() / var.sqrt().clamp_min(1e-12)).mean()),
        })  # fmt: skip
        dead_units += int(dead.sum())
        never_positive += int(negative.sum())
        units += int(dead.numel())
    return {
        "dead_fraction": dead_units / units if units else 0.0,
        "never_positive_fraction": never_positive / units if units else 0.0,
        "output_mean": float(np.mean([row["output_mean"] for row in per_layer])) if per_layer else 0.0,
        "output_std": float(np.mean([row["output_std"] for row in per_layer])) if per_layer else 0.0,
        "threshold": threshold,
        "layers": per_layer,
    }


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Convolution and linear weights in definition order: the depth axis of a gradient-norm plot."""
    return [(f"{name}.weight", cast(nn.Parameter, m.weight)) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
