"""The icons' natural-image statistics: spectral slope and colourfulness, checked against images of known statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.featurevis.image_statistics import colourfulness, image_statistics, spectral_slope


def power_law_noise(exponent: float, side: int, rng: np.random.Generator) -> torch.Tensor:
    """A grey image whose power spectrum falls off as 1/f^exponent (random phases), in [0, 1]."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side)))
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=(side, side)) + 1j * rng.normal(size=(side, side))) / f ** (exponent / 2)
    image = np.real(np.fft.ifft2(spectrum))
    return torch.from_numpy((image - image.min()) / (image.max() - image.min())).float()[None]


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("side", [64, 128])
def test_the_slope_of_power_law_noise_is_its_exponent(exponent: float, side: int) -> None:
    rng = np.random.default_rng(int(exponent * 10) + side)
    slopes = [spectral_slope(power_law_noise(exponent, side, rng)) for _ in range(24)]
    assert float(np.median(slopes)) == pytest.approx(exponent, abs=0.3)


def test_blurring_an_image_steepens_its_slope_and_a_flat_one_has_none() -> None:
    rng = np.random.default_rng(0)
    image = power_law_noise(2.0, 128, rng)
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(image[None], 4), scale_factor=4, mode="bilinear")[0]
    assert spectral_slope(blurred) > spectral_slope(image) + 0.5
    assert np.isnan(spectral_slope(torch.full((3, 32, 32), 0.5)))


def test_colourfulness_is_zero_for_grey_and_grows_with_saturation() -> None:
    grey = torch.rand(1, 32, 32).repeat(3, 1, 1)
    assert colourfulness(grey) == pytest.approx(0.0, abs=1e-9) and colourfulness(torch.rand(1, 32, 32)) == 0.0
    halves = torch.zeros(3, 32, 32)
    halves[0, :, :16] = 1.0  # red | blue
    halves[2, :, 16:] = 1.0
    muted = 0.5 + 0.2 * (halves - 0.5)
    # red/blue halves: rg is 255 | 0 and yb is 127.5 | -255, so sqrt(127.5^2 + 191.25^2) + 0.3 sqrt(127.5^2 + 63.75^2)
    assert colourfulness(halves) == pytest.approx(float(np.hypot(127.5, 191.25) + 0.3 * np.hypot(127.5, 63.75)), rel=1e-6)
    assert colourfulness(muted) == pytest.approx(0.2 * colourfulness(halves), rel=1e-6)


def test_the_summary_is_the_median_slope_and_mean_colour_and_skips_flat_slopes() -> None:
    rng = np.random.default_rng(1)
    red = torch.zeros(3, 16, 16)
    red[0] = 1.0
    images = [power_law_noise(2.0, 64, rng).repeat(3, 1, 1) for _ in range(5)] + [red]
    summary = image_statistics(images)
    assert summary is not None and summary.images == 6
    assert summary.spectral_slope == pytest.approx(float(np.median([spectral_slope(i) for i in images[:5]])))
    assert summary.colourfulness == pytest.approx(colourfulness(red) / 6)  # five grey images and one red
    assert image_statistics([]) is None
