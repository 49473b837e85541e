"""The natural-image magnitude spectrum that MaCo's phase-only parameterisation keeps fixed.

MaCo (Fel et al., NeurIPS 2023) ships one spectrum measured on ImageNet. Measured here instead from the run's own
images, at the icon size and in the colour space the Fourier parameterisations work in, it fits any model's data
(1-channel, 28 px, or photos) and can be estimated once and stored beside the icons.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from atlas.featurevis.param import _size_pair, correlated_to_decorrelated
from atlas.images.preprocess import to_pixels
from atlas.models.record import Preprocessing

SPECTRUM_IMAGES = 256  # of a run's own images, enough for a stable mean magnitude


def _batches(images: torch.Tensor | Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    return [images] if isinstance(images, torch.Tensor) else images


def estimate_spectrum(
    images: torch.Tensor | Iterable[torch.Tensor],
    size: int | tuple[int, int],
    *,
    decorrelate: bool = True,
) -> torch.Tensor:
    """``[C, H, W // 2 + 1]`` float32: the mean ``|rfft2|`` of ``images`` resized to ``size`` (H, W).

    ``images`` is ``[N, C, H', W']`` in [0, 1], or an iterable of such batches (streamed, so a large sample never
    sits in memory at once). Each image is resized (antialiased), moved to the pre-sigmoid space by its linear
    approximation about grey (``pixels - 0.5``; the sigmoid is near-linear where MaCo's standardised images lie,
    and a logit would blow saturated pixels up into broadband edges), rotated into the decorrelated colour space
    when ``decorrelate`` (as :class:`atlas.featurevis.param.MacoParam` rotates back) and transformed with
    ``norm="ortho"``. The DC term thus measures how far the images' mean colours stray from grey, which bounds
    how far a MaCo icon's may. The overall scale is irrelevant, since MaCo standardises each image.
    """
    height, width = _size_pair(size)
    total: torch.Tensor | None = None
    count = 0
    for batch in _batches(images):
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise ValueError(f"images must be [N, C, H, W] with N >= 1, got shape {tuple(batch.shape)}")
        batch = batch.detach().to(dtype=torch.float64)
        if tuple(batch.shape[-2:]) != (height, width):
            batch = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        batch = batch - 0.5
        if decorrelate:
            batch = correlated_to_decorrelated(batch)
        magnitude = torch.fft.rfft2(batch, norm="ortho").abs().sum(dim=0)
        if total is not None and total.shape != magnitude.shape:
            raise ValueError(f"every batch needs the same channels: got {magnitude.shape[0]} after {total.shape[0]}")
        total = magnitude if total is None else total + magnitude
        count += batch.shape[0]
    if total is None:
        raise ValueError("need at least one image to estimate a spectrum")
    return (total / count).to(device="cpu", dtype=torch.float32)


def spectrum_of_images(
    images: Iterable[Image.Image | None], preprocessing: Preprocessing, size: int, limit: int = SPECTRUM_IMAGES
) -> tuple[np.ndarray | None, int]:
    """maco's fixed magnitude from up to ``limit`` of ``images`` as the model sees them (its input frame, in
    [0, 1]), at ``size``; and how many were used. Missing or unreadable images are skipped; none readable: None."""
    pixels: list[torch.Tensor] = []
    for image in images:
        if image is not None:
            with contextlib.suppress(OSError, ValueError):
                pixels.append(to_pixels(image, preprocessing))
        if len(pixels) >= limit:
            break
    if not pixels:
        return None, 0
    return estimate_spectrum(torch.stack(pixels), size).numpy(), len(pixels)


__all__ = ["SPECTRUM_IMAGES", "estimate_spectrum", "spectrum_of_images"]
