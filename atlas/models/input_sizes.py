"""Which input sizes a model accepts: ViT and Swin in timm check the size strictly, so a render or a shape probe at
another size must be known to fail before it is tried, not met as a traceback."""

from __future__ import annotations

from typing import Any

import torch

from atlas.errors import AtlasError
from atlas.models.capture import zeros_input
from atlas.models.messages import first_line
from atlas.models.view import ModelView

# What a model that refuses an input size raises: timm's size assertion, a shape mismatch in a reshape or a linear
# layer, a window partition that does not divide.
REFUSALS = (AssertionError, RuntimeError, ValueError)


def declared_input_size(module: torch.nn.Module) -> int | None:
    """The one size a timm patch embedding insists on (``strict_img_size``, no dynamic size), else None."""
    embed = getattr(module, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if not getattr(embed, "strict_img_size", False) or getattr(module, "dynamic_img_size", False) or size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(height) if height == width else None


def output_at(view: ModelView, size: int) -> Any:
    """The layer's raw output for one blank ``size`` px image; a model that refuses the size is one line."""
    prep = view.preprocessing
    try:
        with torch.no_grad():
            return view.run_to_layer(zeros_input(view.module, prep.channels, size))
    except REFUSALS as err:
        only = declared_input_size(view.module)
        hint = f"this model accepts only {only} px" if only is not None else "check model.input_size and model.channels"
        raise AtlasError(
            f"a forward pass of {view.model.spec} at {prep.channels}x{size}x{size} failed ({first_line(err)}); "
            f"set model.input_size to a size it accepts ({hint})"
        ) from None


def output_if_accepted(view: ModelView, size: int) -> Any | None:
    """The layer's raw output at ``size`` px, or None when the model does not accept that size."""
    declared = declared_input_size(view.module)
    if declared is not None and declared != size:
        return None
    try:
        return output_at(view, size)
    except AtlasError:
        return None


def accepts_input_size(view: ModelView, size: int) -> bool:
    """Whether the model runs to the layer on a ``size`` px image (its own input size always counts as accepted)."""
    return size == view.preprocessing.input_size or output_if_accepted(view, size) is not None


def only_input_size(view: ModelView) -> int | None:
    """The model's input size when it takes no other (timm's strict patch embedding, or a refused forward at twice
    the size), else None: images of any size may then be fed as they are."""
    declared = declared_input_size(view.module)
    if declared is not None:
        return declared
    size = view.preprocessing.input_size
    return None if output_if_accepted(view, 2 * size) is not None else size


__all__ = ["accepts_input_size", "declared_input_size", "only_input_size", "output_at", "output_if_accepted"]
