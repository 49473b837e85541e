"""Robustness transforms: every step the model sees a randomly shifted, scaled and rotated view.

Optimising through random views keeps icons from exploiting exact pixel
positions (lucid's ``standard_transforms``: pad 12, jitter 8, scale 0.9..1.1,
rotate -10..10 degrees, jitter 4, for images around 128 px).

How the chain becomes one batched op: lucid's chain grows and shrinks the image
(pad, crop, resize), which a batch with per-image draws cannot do. Here the
chain is a single affine map from the output grid to the source image, sampled
with ``F.affine_grid`` + ``F.grid_sample``:

- a view covers what lucid's chain keeps at scale 1 and angle 0, i.e.
  ``size + 2 * pad - jitter - final_jitter`` source pixels per side, resampled
  to a fixed output size (the model's ``input_size``, or the image size), so
  every view of every image has the same shape and the layer's centre position
  always sits at the image centre;
- padding is not materialised: samples outside the image read the constant 0.5
  (grey) or the image reflected at its border;
- jitters are continuous shifts, uniform in ``[-jitter / 2, jitter / 2]``
  pixels (lucid's random crop offsets, made sub-pixel);
- scale and angle are drawn uniformly from the given lists, as lucid does.

Defaults, and the one deviation from lucid: jitters are lucid's 8 and 4 pixels
times ``size / 128`` (``size`` = the image's short side), rounded half up, at
least 1 (80 px icons: 5 and 3; 28 px: 2 and 1). The default pad is
``(jitter + final_jitter) / 2``, not lucid's 12 * size / 128: with a fixed
output size a larger pad would zoom every view out (by 0.9 at 80 px), while
this pad keeps scale-1 views at the image's own scale, the scale at which
``render`` scores the plain image and at which icons are used. Views still show
fill wherever a shift, a zoom-out or a rotation uncovers it. Measured on
trained EfficientNet-Lite0 (blocks.4, 80 px, 96 steps): plain-image scores
5-7% higher than with lucid's pad; on an untrained Lite0, channel scores
optimised through zoomed-out views mostly fell on the plain image.
``pad=12 * size / 128`` restores lucid's view.

Every draw for image b comes from its own seed (a CPU generator per image, all
steps drawn up front), so its views do not depend on the batch it is in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from atlas.featurevis.seeding import generator

REFERENCE_SIZE = 128
"""The image size lucid's pixel amounts were chosen for."""

DEFAULT_SCALES: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
DEFAULT_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(-10, 11))

_DRAWS_PER_STEP = 6  # jitter x, y; scale; angle; final jitter x, y


def _scaled_pixels(amount: int | None, reference: int, size: int) -> int:
    if amount is not None:
        return int(amount)
    return max(1, int(math.floor(reference * size / REFERENCE_SIZE + 0.5)))


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclass(frozen=True)
class Transforms:
    """Which random views to optimise through. ``None`` amounts follow the image size (see module doc).

    Disable a part with 0 (pad, jitters), ``(1.0,)`` (scales) or ``(0.0,)``
    (angles); disable all with ``Transforms.none()``.
    """

    pad: float | None = None
    pad_mode: Literal["constant", "reflect"] = "constant"
    jitter: int | None = None
    scales: tuple[float, ...] = DEFAULT_SCALES
    angles: tuple[float, ...] = DEFAULT_ANGLES
    final_jitter: int | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if any(a is not None and a < 0 for a in (self.pad, self.jitter, self.final_jitter)):
            raise ValueError("pad and jitters must be >= 0 pixels")
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {self.pad_mode!r}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {self.scales}")
        if not self.angles:
            raise ValueError("angles must be a non-empty list (use (0.0,) for no rotation)")

    @classmethod
    def none(cls) -> Transforms:
        """No random views: the model sees the plain image (resized to its input size)."""
        return cls(enabled=False)

    def pixel_amounts(self, size: int) -> tuple[float, int, int]:
        """``(pad, jitter, final_jitter)`` in pixels for an image whose short side is ``size``."""
        jitter = _scaled_pixels(self.jitter, 8, size)
        final_jitter = _scaled_pixels(self.final_jitter, 4, size)
        pad = (jitter + final_jitter) / 2 if self.pad is None else float(self.pad)
        return pad, jitter, final_jitter

    def views(
        self,
        seeds: Sequence[int],
        steps: int,
        image_size: int | Sequence[int],
        out_size: int | Sequence[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> RandomViews:
        """Draw every step's view of every image up front; ``seeds`` holds one seed per image."""
        return RandomViews(self, seeds, steps, _size_pair(image_size), _size_pair(out_size or image_size), device)


def resize(pixels: torch.Tensor, out_size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear resize to ``out_size``; the identity (same tensor) when the size already matches."""
    size = _size_pair(out_size)
    if tuple(pixels.shape[-2:]) == size:
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)


def _uniforms(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """``[steps, B, draws]`` uniforms; column b comes from seed b alone."""
    return torch.stack([torch.rand(steps, _DRAWS_PER_STEP, generator=generator(s)) for s in seeds], dim=1)


def _choose(values: Sequence[float], u: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(values, dtype=torch.float64)
    return table[(u * len(values)).long().clamp_(max=len(values) - 1)]


class RandomViews:
    """Per-step affine maps for a batch; calling it on ``[B, C, H, W]`` pixels returns that step's views."""

    def __init__(
        self,
        transforms: Transforms,
        seeds: Sequence[int],
        steps: int,
        image_size: tuple[int, int],
        out_size: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> None:
        self.transforms = transforms
        self.batch = len(seeds)
        self.image_size = image_size
        self.out_size = out_size
        self.theta: torch.Tensor | None = None
        if transforms.enabled and steps > 0 and self.batch > 0:
            self.theta = self._thetas(_uniforms(seeds, steps).double()).to(device=device, dtype=torch.float32)

    def _thetas(self, u: torch.Tensor) -> torch.Tensor:
        """``[steps, B, 2, 3]`` maps from output coordinates to source coordinates (both in [-1, 1])."""
        height, width = self.image_size
        pad, jitter, final_jitter = self.transforms.pixel_amounts(min(height, width))
        first = (u[..., 0:2] - 0.5) * jitter  # source pixels (x, y)
        scale = _choose(self.transforms.scales, u[..., 2])
        angle = _choose(self.transforms.angles, u[..., 3]) * (math.pi / 180.0)
        final = (u[..., 4:6] - 0.5) * final_jitter  # view pixels (x, y)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [S, B, 2, 2]
        view_half = torch.tensor([width + 2 * pad - jitter - final_jitter, height + 2 * pad - jitter - final_jitter],
                                 dtype=torch.float64) / 2  # fmt: skip
        source_half = torch.tensor([width, height], dtype=torch.float64) / 2
        # In pixels about the centres: source = R/s (view + final) + first; then normalise both sides.
        linear = rotation * view_half[None, :] / source_half[:, None]
        shift = ((rotation @ final[..., None])[..., 0] + first) / source_half
        return torch.cat([linear, shift[..., None]], dim=-1)

    def __call__(self, pixels: torch.Tensor, step: int) -> torch.Tensor:
        if self.theta is None:
            return resize(pixels, self.out_size)
        theta = self.theta[step].to(pixels.dtype)
        grid = F.affine_grid(theta, [pixels.shape[0], pixels.shape[1], *self.out_size], align_corners=False)
        if self.transforms.pad_mode == "reflect":
            return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Constant 0.5 outside the image: sample (pixels - 0.5) with zero padding, then add 0.5 back.
        return F.grid_sample(pixels - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


__all__ = ["DEFAULT_ANGLES", "DEFAULT_SCALES", "REFERENCE_SIZE", "RandomViews", "Transforms", "resize"]
