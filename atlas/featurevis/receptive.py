"""What the centre position of a layer sees: its receptive field, measured from the model, not from arithmetic.

An atlas icon is optimised for the activation at the layer's centre position. On a small-input model a mid
layer's centre sees only part of the image, so the rest of the icon stays flat grey and the part that matters is
a small spot. The field is measured as the input gradient of the centre activation over a few random images: the
smallest square around the gradient's centroid that holds ``mass`` of its total magnitude. Any model and layer
works (strides, padding, dilations, attention are all in the gradient), and the icon can then show that square
at full size, keeping the whole render as the full view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atlas.featurevis.seeding import generator
from atlas.models.capture import eval_mode
from atlas.models.view import ModelView

CROP_BELOW = 0.9  # crop only when the field is clearly smaller than the image; a near-whole field is left whole


@dataclass(frozen=True)
class ReceptiveField:
    """The square ``[top, top + size) x [left, left + size)`` of an ``image_size`` image holding ``mass`` of the
    centre position's input gradient."""

    size: int
    top: int
    left: int
    image_size: int
    mass: float

    @property
    def fraction(self) -> float:
        return self.size / self.image_size

    @property
    def crops(self) -> bool:
        """Whether an icon should show this square rather than the whole image."""
        return self.size < CROP_BELOW * self.image_size

    def box(self) -> tuple[int, int, int, int]:
        """PIL's (left, upper, right, lower)."""
        return self.left, self.top, self.left + self.size, self.top + self.size

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fraction": round(self.fraction, 4), "crops": self.crops}


def input_gradient(view: ModelView, image_size: int, samples: int = 8, seed: int = 0) -> np.ndarray:
    """[H, W]: |d ||centre activation||^2 / d input|, summed over channels and ``samples`` uniform random images."""
    channels = view.preprocessing.channels
    draws = torch.rand((samples, channels, image_size, image_size), generator=generator(seed))
    images = draws.to(view.device).requires_grad_(True)
    with eval_mode(view.module):
        activation = view.layout.centre(view.run_to_layer(view.normalise(images))).float()
        (grad,) = torch.autograd.grad(activation.pow(2).sum(), images)
    return grad.abs().sum(dim=(0, 1)).detach().cpu().double().numpy()


def field_from_gradient(gradient: np.ndarray, mass: float = 0.99) -> ReceptiveField:
    """The smallest square around the gradient's centroid holding ``mass`` of it (the whole image if it is all zero)."""
    height, width = gradient.shape
    side_max = min(height, width)
    total = float(gradient.sum())
    if not np.isfinite(total) or total <= 0:
        return ReceptiveField(side_max, (height - side_max) // 2, (width - side_max) // 2, side_max, mass)
    ys, xs = np.arange(height), np.arange(width)
    cy = float((gradient.sum(axis=1) * ys).sum() / total)
    cx = float((gradient.sum(axis=0) * xs).sum() / total)
    integral = np.pad(gradient.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    for side in range(1, side_max + 1):
        top = int(np.clip(round(cy - (side - 1) / 2), 0, height - side))
        left = int(np.clip(round(cx - (side - 1) / 2), 0, width - side))
        inside = integral[top + side, left + side] - integral[top, left + side] - integral[top + side, left] + integral[top, left]
        if inside >= mass * total:
            return ReceptiveField(side, top, left, side_max, mass)
    return ReceptiveField(side_max, (height - side_max) // 2, (width - side_max) // 2, side_max, mass)


def measure_receptive_field(view: ModelView, image_size: int, mass: float = 0.99, samples: int = 8, seed: int = 0) -> ReceptiveField:
    """The centre position's field on an ``image_size`` image, fed at that size as icons are."""
    return field_from_gradient(input_gradient(view, image_size, samples, seed), mass)


__all__ = ["ReceptiveField", "field_from_gradient", "input_gradient", "measure_receptive_field"]
