"""How natural an image's statistics are: the slope of its power spectrum and its colourfulness.

Natural photographs have a power spectrum falling off as 1/f^a with a near 2 (Field 1987; van der Schaaf and van
Hateren 1996); feature visualisations that carry too much fine-grained energy fall off more slowly (a smaller a).
Colourfulness is Hasler and Süsstrunk's (2003) measure on the opponent channels rg = R - G, yb = (R + G) / 2 - B:
sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2), on 0-255 values (about 15 for a dull photograph, over
100 for an extremely colourful one). The atlas reports both for its icons beside their cells' example patches, so a
change of render settings can be judged by how much nearer the icons come to the images they stand for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SPECTRUM_SIDE = 64  # every image is resized to this grey square first, so icons and patches of any size compare
_LUMA = (0.299, 0.587, 0.114)
_BANDS = np.arange(2, SPECTRUM_SIDE // 4 + 1)  # cycles per image fitted: where the antialiased resize is still flat
_WINDOW = np.outer(np.hanning(SPECTRUM_SIDE), np.hanning(SPECTRUM_SIDE))
_FREQUENCIES = np.fft.fftfreq(SPECTRUM_SIDE) * SPECTRUM_SIDE
_RADIUS = np.rint(np.hypot(_FREQUENCIES[:, None], _FREQUENCIES[None, :])).astype(int).ravel()
_BAND_COUNTS = np.bincount(_RADIUS, minlength=SPECTRUM_SIDE)[_BANDS]


def _grey_square(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> [SPECTRUM_SIDE, SPECTRUM_SIDE] luma, resized with antialiasing."""
    grey = image[0] if image.shape[0] == 1 else _LUMA[0] * image[0] + _LUMA[1] * image[1] + _LUMA[2] * image[2]
    resized = F.interpolate(
        grey[None, None].float(), size=(SPECTRUM_SIDE, SPECTRUM_SIDE), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0, 0].numpy().astype(np.float64)


def spectral_slope(image: torch.Tensor) -> float:
    """The exponent a of the power spectrum's 1/f^a fall-off (grey, SPECTRUM_SIDE px, Hann-windowed), fitted by least
    squares on the log-log radial average over 2 to SPECTRUM_SIDE / 4 cycles per image; NaN for a flat image."""
    grey = _grey_square(image)
    power = np.abs(np.fft.fft2((grey - grey.mean()) * _WINDOW)) ** 2
    mean_power = np.bincount(_RADIUS, power.ravel(), minlength=SPECTRUM_SIDE)[_BANDS] / _BAND_COUNTS
    if not np.all(mean_power > 0):
        return float("nan")
    slope = np.polyfit(np.log(_BANDS), np.log(mean_power), 1)[0]
    return float(-slope)


def colourfulness(image: torch.Tensor) -> float:
    """Hasler and Süsstrunk's colourfulness on 0-255 values; 0 for a one-channel image."""
    if image.shape[0] < 3:
        return 0.0
    r, g, b = (image[c].double().numpy() * 255.0 for c in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


@dataclass(frozen=True)
class ImageStatistics:
    """Over a set of images: the median spectral slope (NaN slopes of flat images left out) and the mean colourfulness
    (a set of mostly grey photographs has a median of 0, which would hide its colour images)."""

    images: int
    spectral_slope: float
    colourfulness: float

    def to_json(self) -> dict[str, float | int]:
        return {"images": self.images, "spectral_slope": round(self.spectral_slope, 3), "colourfulness": round(self.colourfulness, 2)}


def image_statistics(images: Iterable[torch.Tensor]) -> ImageStatistics | None:
    """The median spectral slope and mean colourfulness of ``images`` ([C, H, W] in [0, 1]); None for no image."""
    slopes, colours = [], []
    for image in images:
        slopes.append(spectral_slope(image))
        colours.append(colourfulness(image))
    finite = [s for s in slopes if np.isfinite(s)]
    if not colours:
        return None
    return ImageStatistics(len(colours), float(np.median(finite)) if finite else float("nan"), float(np.mean(colours)))


__all__ = ["SPECTRUM_SIDE", "ImageStatistics", "colourfulness", "image_statistics", "spectral_slope"]
