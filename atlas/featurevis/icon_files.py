"""A bundle's icon images as tensors: saved icons read back, start patches read in, a batch's renders saved.

Every name here is a bundle path the bundle spells (``atlas.bundle``); this module only turns its images into
[N, C, H, W] tensors in [0, 1] and back, so fidelity, the path check and accentuate all see the exact pixels the
PNGs hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from atlas.bundle import Bundle, BundleWriter, Cell, alpha_file, full_view_file, patch_file
from atlas.featurevis.framing import IconFrame
from atlas.featurevis.render import RenderResult


def load_icons(bundle: Bundle, icons: Sequence[str], channels: int, size: int) -> torch.Tensor:
    """Saved icons as [N, C, H, W] in [0, 1], exactly the pixels the PNGs hold (``size`` only shapes an empty list)."""
    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(bundle.image(name).convert(mode), dtype=np.float32) / 255.0 for name in icons]
    if not arrays:
        return torch.zeros(0, channels, size, size)
    stacked = np.stack(arrays)
    return torch.from_numpy(stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2).copy())


def first_patch(cell: Cell) -> str | None:
    """The patch of a cell's best example (its first), where accentuate starts; None for a cell without examples."""
    if not cell.examples:
        return None
    first = cell.examples[0]
    return patch_file(first.image_id, first.y, first.x)


def start_images(bundle: Bundle, patches: Sequence[str | None], channels: int, size: int) -> np.ndarray:
    """[N, C, size, size] in [0, 1]: the given patches, grey where there is none or it cannot be read."""
    mode = "L" if channels == 1 else "RGB"
    starts = np.full((len(patches), channels, size, size), 0.5, np.float32)
    for n, name in enumerate(patches):
        if name is None:
            continue
        try:
            patch = bundle.image(name).convert(mode).resize((size, size), Image.Resampling.BICUBIC)
        except (OSError, ValueError):
            continue
        pixels = np.asarray(patch, np.float32) / 255.0
        starts[n] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return starts


def save_icons(bundle: BundleWriter, icons: Sequence[str], result: RenderResult, frame: IconFrame) -> None:
    """Each render as its icon (framed), its full view where the frame keeps one, and its transparency if rendered.

    The icon is written last, so an icon on disk always has its view and alpha beside it.
    """
    images = result.images.cpu()
    shown = frame.shown(images) if frame.keeps_views else None
    for n, name in enumerate(icons):
        if shown is not None:
            bundle.write_icon(full_view_file(name), images[n].numpy())
        if result.alpha is not None:
            bundle.write_icon(alpha_file(name), result.alpha[n].cpu().numpy())
        bundle.write_icon(name, (shown if shown is not None else images)[n].numpy())


__all__ = ["first_patch", "load_icons", "save_icons", "start_images"]
