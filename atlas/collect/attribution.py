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
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch.nn.attention import SDPBackend, sdpa_kernel

from atlas.models.capture import LayerCapture
from atlas.models.layouts import batch_size, map_outputs
from atlas.models.view import ModelView


@dataclass
class PositionRows:
    activation: np.ndarray  # float32 [R, C]
    attribution: np.ndarray | None  # float32 [R, n_classes]


def activations_at(
    view: ModelView,
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
    layer = view.layer
    device = images.device  # the caller puts images where the model is; indices follow, results come back to the CPU
    index = torch.as_tensor(rows, dtype=torch.long, device=device)
    ys = torch.as_tensor(positions[:, 0], dtype=torch.long, device=device)
    xs = torch.as_tensor(positions[:, 1], dtype=torch.long, device=device)
    if not with_attribution:
        with torch.no_grad():
            output = view.run_to_layer(images)
        return PositionRows(view.layout.at(output, index, ys, xs).float().cpu().numpy(), None)

    if len(index) == len(images) and np.array_equal(rows, np.arange(len(images))):
        return _attribute(view, images, None, ys, xs)
    if _EXPAND_AT_LAYER.get(layer, True):
        try:
            return _attribute(view, images, index, ys, xs)
        except RuntimeError:
            _EXPAND_AT_LAYER[layer] = False  # something after the layer still needs the original batch
    return _attribute(view, images[index], None, ys, xs)


# Layers after which the batch can be widened to one row per position (False once that failed).
_EXPAND_AT_LAYER: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def _attribute(
    view: ModelView,
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

    def make_dual(output: Any) -> Any:
        if expand is not None:
            output = map_outputs(lambda part: part[expand], output)
        own = torch.arange(batch_size(output), device=ys.device)
        h = view.layout.at(output, own, ys, xs)
        captured["h"] = h.detach().clone()  # later in-place ops must not change the stored rows
        return map_outputs(fwAD.make_dual, output, view.layout.place(output, own, ys, xs, h))

    # The fused attention kernels have no forward-mode derivative; the math one does, and gives the same values.
    with torch.no_grad(), fwAD.dual_level(), sdpa_kernel(SDPBackend.MATH), LayerCapture(view.layer, store=False, transform=make_dual):
        logits = view.module(images)
        tangent_out = fwAD.unpack_dual(logits).tangent
    if tangent_out is None:
        raise RuntimeError("the model's output does not depend on the hooked layer; pick a layer on the path to the logits")
    return PositionRows(captured["h"].float().cpu().numpy(), tangent_out.float().cpu().numpy())
