"""Transparency from attribution: which pixels of an icon the objective actually used (MaCo, Fel et al. 2023).

MaCo sums ``|d objective / d pixels|`` over the optimisation and shows the icon with that map as its alpha channel,
so the parts the unit ignores fade out. Here the sum is per image over the steps, averaged over colour channels,
smoothed with a Gaussian (a few pixels wide at icon sizes, so single pixels where the random views happened to
land do not flicker) and normalised per image as MaCo's ``plot_maco`` does: clipped at a percentile, divided by it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ALPHA_PERCENTILE = 0.8
"""MaCo's clip: attribution at or above this per-image quantile is fully opaque."""


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, 1, H, W]`` with edges replicated (a border is not a dark frame)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))


def attribution_alpha(gradient_sum: torch.Tensor, *, sigma: float | None = None, percentile: float = ALPHA_PERCENTILE) -> torch.Tensor:
    """``[B, 1, H, W]`` in [0, 1] from summed absolute pixel gradients ``[B, C, H, W]``.

    ``sigma`` defaults to 1/40 of the short side, at least 0.5 px (2 px at 80 px). An image with no gradient at
    all (no steps) is fully opaque: nothing says which part to hide.
    """
    if not 0 < percentile <= 1:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    maps = gradient_sum.detach().float().abs().mean(dim=1, keepdim=True)
    height, width = maps.shape[-2:]
    sigma = max(0.5, min(height, width) / 40) if sigma is None else float(sigma)
    if sigma > 0:
        maps = _gaussian_blur(maps, sigma)
    clip = torch.quantile(maps.flatten(1), percentile, dim=1).view(-1, 1, 1, 1)
    alpha = torch.where(clip > 0, maps.clamp(max=clip) / clip.clamp_min(torch.finfo(maps.dtype).tiny), torch.ones_like(maps))
    return alpha.clamp(0.0, 1.0)


class AlphaAccumulator:
    """Sums ``|d objective / d pixels|`` over the steps of one try; :meth:`alpha` turns the sum into transparency."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def add(self, pixel_grad: torch.Tensor | None) -> None:
        if pixel_grad is None:  # the objective did not depend on the pixels this step
            return
        grad = pixel_grad.detach().abs()
        self.total = grad if self.total is None else self.total + grad

    def alpha(self, like: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` for images shaped like ``like`` (all opaque when no gradient was ever added)."""
        total = torch.zeros_like(like) if self.total is None else self.total
        return attribution_alpha(total).to(like.device)


__all__ = ["ALPHA_PERCENTILE", "AlphaAccumulator", "attribution_alpha"]
