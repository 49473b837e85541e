"""Turn decoded images into the tensor a model expects, following the model's own Preprocessing.

Every stage that feeds pixels to a model (collection, icon checks) goes
through here, so the resize and crop are the same everywhere; mean and std are
applied by :meth:`atlas.models.record.Preprocessing.normalise`, the one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from atlas.images.modes import to_8bit
from atlas.models.record import Preprocessing


def to_tensor(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """``[C, H, W]`` float32: short side resized to ``input_size``, centre square, normalised."""
    return prep.normalise(to_pixels(image, prep))


def to_pixels(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """``[C, H, W]`` float32 in [0, 1]: the model's input frame before normalisation (where patches are pasted)."""
    square = fit_square(image, prep.input_size)
    square = square.convert("L") if prep.channels == 1 else square.convert("RGB")  # RGB->L is ITU-R 601 luma
    pixels = np.asarray(square, dtype=np.float32) / 255.0
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def batch_to_tensor(images: Sequence[Image.Image], prep: Preprocessing) -> torch.Tensor:
    """``[B, C, H, W]`` float32 for a batch of images of any sizes."""
    if not images:
        return torch.empty(0, prep.channels, prep.input_size, prep.input_size)
    return torch.stack([to_tensor(image, prep) for image in images])


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size`` (bilinear, antialiased when shrinking), then crop the centre."""
    image = to_8bit(image)
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))
