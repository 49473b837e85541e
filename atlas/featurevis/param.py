"""Image parameterisations: optimisable tensors that ``forward()`` turns into pixels in [0, 1].

Gradient ascent in a decorrelated space (a 1/f-scaled Fourier spectrum, colours
rotated by ImageNet's colour correlation) gives natural-looking images where
raw pixels give high-frequency noise (Olah et al., "Feature Visualization",
Distill 2017). Each image is initialised from its own seed, so an image's start
does not depend on which batch it is rendered in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

from atlas.featurevis.seeding import generator

ParamFactory = Callable[[Sequence[int]], "ImageParam"]
"""Builds a parameterisation for a list of per-image seeds; ``render`` calls it once per try."""

# Square root of ImageNet's RGB colour correlation matrix (lucid's constant), scaled so
# its largest column has unit norm: one unit in the decorrelated space is at most one
# unit of colour.
_COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32)
COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / _COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()

# irfft2 of the 1/f-scaled spectrum has a spread of a few units; lucid divides by 4 so
# the sigmoid starts in its linear range.
_FOURIER_OUTPUT_SCALE = 4.0


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return height, width


def _seeded_normal(seeds: Sequence[int], shape: tuple[int, ...], sd: float) -> torch.Tensor:
    """``[len(seeds), *shape]``; row b is drawn from seed b alone (a loop at init only, never per step)."""
    if len(seeds) == 0:
        raise ValueError("need at least one seed (one per image)")
    return torch.stack([torch.randn(shape, generator=generator(s)) * sd for s in seeds])


def decorrelate_colors(image: torch.Tensor) -> torch.Tensor:
    """Map decorrelated colour coordinates to RGB; identity for 1-channel images."""
    if image.shape[1] == 1:
        return image
    if image.shape[1] != 3:
        raise ValueError(f"colour decorrelation needs 1 or 3 channels, got {image.shape[1]}")
    matrix = COLOR_CORRELATION.to(device=image.device, dtype=image.dtype)
    return torch.einsum("dc,bchw->bdhw", matrix, image)


class ImageParam(nn.Module):
    """Base: ``parameters()`` are what the optimiser moves; ``forward()`` gives ``[B, C, H, W]`` pixels in [0, 1]."""

    def __init__(self, seeds: Sequence[int], channels: int, size: int | tuple[int, int], decorrelate: bool) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        if decorrelate and channels not in (1, 3):
            raise ValueError(f"decorrelate needs 1 or 3 channels, got {channels}")
        self.seeds = [int(s) for s in seeds]
        self.channels = channels
        self.size = _size_pair(size)
        self.decorrelate = decorrelate

    @property
    def batch(self) -> int:
        return len(self.seeds)

    def _to_pixels(self, image: torch.Tensor) -> torch.Tensor:
        if self.decorrelate:
            image = decorrelate_colors(image)
        return torch.sigmoid(image)


class FourierParam(ImageParam):
    """Pixels = sigmoid(colour-decorrelate(irfft2(spectrum / f^decay_power))).

    The 1/f scaling makes every frequency equally easy to move (natural images have
    1/f amplitude), so the optimiser does not pour its steps into pixel noise.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        channels: int = 3,
        size: int | tuple[int, int] = 128,
        *,
        decorrelate: bool = True,
        sd: float = 0.01,
        decay_power: float = 1.0,
    ) -> None:
        super().__init__(seeds, channels, size, decorrelate)
        height, width = self.size
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        # The DC term would divide by zero: clamp to the lowest non-zero frequency.
        scale = 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power
        self.register_buffer("scale", scale[None, None, :, :, None].to(torch.float32), persistent=False)
        spectrum = _seeded_normal(self.seeds, (channels, height, width // 2 + 1, 2), sd)
        self.spectrum = nn.Parameter(spectrum)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum * cast(torch.Tensor, self.scale))
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / _FOURIER_OUTPUT_SCALE
        return self._to_pixels(image)


class PixelParam(ImageParam):
    """Pixels = sigmoid(raw): the plain baseline (noisier icons, but no assumptions about image statistics)."""

    def __init__(
        self,
        seeds: Sequence[int],
        channels: int = 3,
        size: int | tuple[int, int] = 128,
        *,
        decorrelate: bool = False,
        sd: float = 0.01,
    ) -> None:
        super().__init__(seeds, channels, size, decorrelate)
        height, width = self.size
        self.raw = nn.Parameter(_seeded_normal(self.seeds, (channels, height, width), sd))

    def forward(self) -> torch.Tensor:
        return self._to_pixels(self.raw)


def fourier(
    channels: int = 3,
    size: int | tuple[int, int] = 128,
    *,
    decorrelate: bool = True,
    sd: float = 0.01,
    decay_power: float = 1.0,
) -> ParamFactory:
    """A :data:`ParamFactory` for :class:`FourierParam`: everything but the seeds fixed up front."""

    def make(seeds: Sequence[int]) -> ImageParam:
        return FourierParam(seeds, channels, size, decorrelate=decorrelate, sd=sd, decay_power=decay_power)

    return make


def pixels(channels: int = 3, size: int | tuple[int, int] = 128, *, decorrelate: bool = False, sd: float = 0.01) -> ParamFactory:
    """A :data:`ParamFactory` for :class:`PixelParam`."""

    def make(seeds: Sequence[int]) -> ImageParam:
        return PixelParam(seeds, channels, size, decorrelate=decorrelate, sd=sd)

    return make


__all__ = [
    "COLOR_CORRELATION",
    "FourierParam",
    "ImageParam",
    "ParamFactory",
    "PixelParam",
    "decorrelate_colors",
    "fourier",
    "pixels",
]
