"""The patch experiment: paste a small image into a corner of real images of class A; how often does the model say B?

The article (section 5) pastes an icon from the part of a two-class comparison
that favours B onto images classified as A, and finds it flips about 2 in 5 of
them (1 in 2 with the best of the four corners) on InceptionV1. The baselines
here are pasted the same way in the same run: uniform noise, and a random icon
of the parent atlas (resized like the chosen icon: the same treatment, other content). Pixels are in the model's input
frame, in [0, 1], before normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PATCH_KINDS = ("icon", "noise", "random_icon")
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a rate (scipy's): honest at 0 or n successes, where the normal one is not."""
    if trials == 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest

    interval = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(interval.low), float(interval.high))


@dataclass
class FlipCount:
    """Flips out of trials, for one patch kind at one size and corner rule."""

    flips: int = 0
    n: int = 0

    def add(self, flipped: np.ndarray) -> None:
        self.flips += int(np.count_nonzero(flipped))
        self.n += len(flipped)

    def to_json(self) -> dict[str, Any]:
        low, high = wilson_interval(self.flips, self.n)
        return {"flips": self.flips, "n": self.n, "rate": self.flips / self.n if self.n else None, "interval": [low, high]}


def paste(pixels: torch.Tensor, patch: torch.Tensor, corner: str) -> torch.Tensor:
    """``pixels`` [B, C, S, S] with ``patch`` ([C, s, s] or [B, C, s, s]) over one corner; a new tensor."""
    out = pixels.clone()
    s, side = patch.shape[-1], pixels.shape[-1]
    top = 0 if corner.startswith("top") else side - s
    left = 0 if corner.endswith("left") else side - s
    out[..., top : top + s, left : left + s] = patch
    return out


def resize_patch(image: torch.Tensor, size: int) -> torch.Tensor:
    """[..., C, h, w] -> [..., C, size, size] (bilinear, antialiased when shrinking)."""
    batched = image if image.dim() == 4 else image[None]
    resized = F.interpolate(batched, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return resized if image.dim() == 4 else resized[0]


@dataclass
class PatchResults:
    """Per kind and size: flips at the fixed corner and with the best of the four corners."""

    sizes: tuple[int, ...]
    corner: str
    counts: dict[str, dict[int, dict[str, FlipCount]]] = field(default_factory=dict)

    def count(self, kind: str, size: int, rule: str) -> FlipCount:
        return self.counts.setdefault(kind, {}).setdefault(size, {}).setdefault(rule, FlipCount())

    def to_json(self) -> dict[str, Any]:
        return {
            kind: {
                "sizes": [
                    {
                        "size": size,
                        "corner": self.count(kind, size, "corner").to_json(),
                        "best_corner": self.count(kind, size, "best_corner").to_json(),
                    }
                    for size in self.sizes
                ]
            }
            for kind in PATCH_KINDS
        }


def run_patch_experiment(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    icons: Sequence[torch.Tensor],
    other_icons: Sequence[torch.Tensor],
    target: int,
    sizes: Sequence[int],
    corner: str = "top_left",
    seed: int = 0,
    batch_size: int = 64,
) -> PatchResults:
    """Paste each kind of patch at each size onto every image (all four corners) and count top-1 == ``target``.

    ``classify`` maps input-frame pixels [B, C, S, S] in [0, 1] to logits. Image n gets icon ``n % len(icons)``,
    a random one of ``other_icons`` and its own uniform noise, all drawn from ``seed``, so a re-run repeats exactly.
    """
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
    if not icons or not other_icons:
        raise ValueError("the patch experiment needs at least one chosen icon and one other icon")
    results = PatchResults(tuple(sizes), corner)
    rng = np.random.default_rng(seed)
    n, channels = len(images), images.shape[1]
    random_choice = rng.integers(0, len(other_icons), size=n)
    noise_seed = int(rng.integers(0, 2**31 - 1))
    for size in sizes:
        generator = torch.Generator().manual_seed(noise_seed + size)
        noise = torch.rand(n, channels, size, size, generator=generator)
        chosen = torch.stack([resize_patch(icons[k % len(icons)], size) for k in range(n)]) if n else noise
        others = torch.stack([resize_patch(other_icons[int(k)], size) for k in random_choice]) if n else noise
        for kind, patches in (("icon", chosen), ("noise", noise), ("random_icon", others)):
            for start in range(0, n, batch_size):
                batch, patch = images[start : start + batch_size], patches[start : start + batch_size]
                flipped = {c: _predicts(classify, paste(batch, patch, c), target) for c in CORNERS}
                results.count(kind, size, "corner").add(flipped[corner])
                results.count(kind, size, "best_corner").add(np.logical_or.reduce([flipped[c] for c in CORNERS]))
    return results


def _predicts(classify: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, target: int) -> np.ndarray:
    with torch.no_grad():
        return (classify(pixels).argmax(dim=1) == target).cpu().numpy()
