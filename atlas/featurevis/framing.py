"""Icon framing: the canvas an icon is rendered on, the size it is shown at, and the receptive-field crop.

An icon is rendered no larger than the model's input (a 28 px model's icons are rendered at 28 px and scaled up),
at the input size itself when the model accepts only that one (a 224 px ViT's 80 px icons are rendered at 224 and
scaled down), and when asked, shows only the square the centre position sees (atlas.featurevis.receptive).
Whenever what is shown is not what the model was fed, the whole render is kept as the icon's full view, which
fidelity and the path check score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from atlas.featurevis.receptive import ReceptiveField, measure_receptive_field
from atlas.models.input_sizes import accepts_input_size
from atlas.models.view import ModelView


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


def frame_icons(view: ModelView, icon_size: int, crop_to_field: bool, seed: int) -> IconFrame:
    """The frame of every icon of a layer: the canvas is the icon size capped at the model's input (the input size
    itself for a model that accepts no other), and with
    ``crop_to_field`` the centre position's receptive field on that canvas, measured once from the model."""
    prep = view.preprocessing
    canvas = min(icon_size, prep.input_size)
    if canvas != prep.input_size and not accepts_input_size(view, canvas):
        canvas = prep.input_size  # a model of one input size (ViT, Swin): render at it, show at the icon size
    if not crop_to_field:
        return IconFrame(canvas, icon_size)
    field = measure_receptive_field(view, canvas, seed=seed)
    return IconFrame(canvas, icon_size, field)


__all__ = ["IconFrame", "frame_icons"]
