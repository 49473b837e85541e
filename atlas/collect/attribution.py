"""Layer activations at sampled positions, and their attribution to every class.

attribution_c = h · ∂logit_c/∂h for the activation vector h at one position.
That is a Jacobian-vector product from the layer to the logits with h itself as
the tangent, so one forward-mode pass (about two plain forwards) gives every
class at once: no backward pass per class, no loop over positions. Each row of
the batch carries its own tangent (its own position), so an image sampled at k
positions becomes k rows from the layer on.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from atlas.models.layers import LayerCapture, run_to_layer


@dataclass
class PositionRows:
    activation: np.ndarray  # float32 [R, C]
    attribution: np.ndarray | None  # float32 [R, n_classes]


def _gather(output: torch.Tensor, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    if output.dim() == 4:
        return output[rows, :, ys, xs]
    if output.dim() == 2:
        return output[rows]
    raise ValueError(f"layer output has shape {tuple(output.shape)}; expected [B, C, H, W] or [B, C]")


def layer_shape(module: torch.nn.Module, layer: torch.nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """Shape of the layer's output for one example, by a forward that stops at the layer."""
    with torch.no_grad():
        return tuple(run_to_layer(module, layer, example[:1]).shape[1:])


def activations_at(
    module: torch.nn.Module,
    layer: torch.nn.Module,
    images: torch.Tensor,
    rows: np.ndarray,
    positions: np.ndarray,
    with_attribution: bool,
) -> PositionRows:
    """Activations (and attributions) at ``positions[r]`` of image ``rows[r]`` for every row r.

    Without attribution the forward pass stops at the layer. With it, each row
    is one forward-mode pass whose tangent is its own activation vector placed
    at its own position and zero elsewhere.
    """
    device = images.device  # the caller puts images where the model is; indices follow, results come back to the CPU
    index = torch.as_tensor(rows, dtype=torch.long, device=device)
    ys = torch.as_tensor(positions[:, 0], dtype=torch.long, device=device)
    xs = torch.as_tensor(positions[:, 1], dtype=torch.long, device=device)
    if not with_attribution:
        with torch.no_grad():
            output = run_to_layer(module, layer, images)
        return PositionRows(_gather(output, index, ys, xs).float().cpu().numpy(), None)

    if len(index) == len(images) and np.array_equal(rows, np.arange(len(images))):
        return _attribute(module, layer, images, None, ys, xs)
    if _EXPAND_AT_LAYER.get(layer, True):
        try:
            return _attribute(module, layer, images, index, ys, xs)
        except RuntimeError:
            _EXPAND_AT_LAYER[layer] = False  # something after the layer still needs the original batch
    return _attribute(module, layer, images[index], None, ys, xs)


# Layers after which the batch can be widened to one row per position (False once that failed).
_EXPAND_AT_LAYER: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def _attribute(
    module: torch.nn.Module,
    layer: torch.nn.Module,
    images: torch.Tensor,
    expand: torch.Tensor | None,
    ys: torch.Tensor,
    xs: torch.Tensor,
) -> PositionRows:
    """One forward-mode pass; ``expand`` (row -> image) widens the batch at the layer.

    Widening at the layer instead of feeding an image once per position saves
    the work before the layer. It is exact whenever it runs: tensors from before
    the layer are identical for every copy of an image and carry no tangent. A
    network that combines the widened batch with an earlier one fails with a
    shape error, and the caller falls back to repeating the input.
    """
    captured: dict[str, torch.Tensor] = {}

    def make_dual(output: torch.Tensor) -> torch.Tensor:
        if expand is not None:
            output = output[expand]
        own = torch.arange(len(output), device=output.device)
        h = _gather(output, own, ys, xs)
        captured["h"] = h.detach().clone()  # later in-place ops must not change the stored rows
        if output.dim() == 4:
            tangent = torch.zeros_like(output)
            tangent[own, :, ys, xs] = h
        else:
            tangent = output.detach().clone()
        return fwAD.make_dual(output, tangent)

    with torch.no_grad(), fwAD.dual_level(), LayerCapture(layer, store=False, transform=make_dual):
        logits = module(images)
        tangent_out = fwAD.unpack_dual(logits).tangent
    if tangent_out is None:
        raise RuntimeError("the model's output does not depend on the hooked layer; pick a layer on the path to the logits")
    return PositionRows(captured["h"].float().cpu().numpy(), tangent_out.float().cpu().numpy())
