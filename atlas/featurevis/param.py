"""Image parameterisations: optimisable tensors that ``forward()`` turns into pixels in [0, 1].

Gradient ascent in a decorrelated space (a 1/f-scaled Fourier spectrum, colours
rotated by ImageNet's colour correlation) gives natural-looking images where
raw pixels give high-frequency noise (Olah et al., "Feature Visualization",
Distill 2017). Each image is initialised from its own seed, so an image's start
does not depend on which batch it is rendered in.

Four of them: ``fourier`` (that space), ``pixels`` (the plain baseline),
``maco`` (only the Fourier phase moves; the magnitude is a natural-image
spectrum: Fel et al., NeurIPS 2023) and ``accentuate`` (``fourier``'s space,
started at a given real image: Hamblin et al., 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
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

ACCENTUATE_MARGIN = 0.01
"""Start images are clamped this far inside (0, 1): the logit stays finite and the sigmoid's slope there is 0.01."""

ACCENTUATE_STEP_SCALE = 0.25
"""How far one Adam step moves an accentuated image, relative to ``fourier``'s: Adam's first steps move every
coefficient by about ``lr`` (a sign step), which from a real image is a broadband jolt. On trained
EfficientNet-Lite0 (blocks.4, 80 px, 6 photo patches, targets their own centre activations) at 1.0 one jolt
took an icon off target (cosine 1 to 0.33) and 24 steps left its score near zero; at 0.25 every icon's score
over random views rose in 24 steps (1.3 to 2.4 times), and the plain images' by 1.26 to 1.43 times in 128."""

MACO_PHASE_SCALE = 10.0
"""Radians of phase per unit of MaCo's optimised tensor (see :class:`MacoParam`). With render's default lr 0.05
the phase moves 0.5 per step, as MaCo's lr 1.0 moves its phases: on trained EfficientNet-Lite0 (blocks.4, 16
photo directions, 80 px) effective rates 0.2 to 1 ended within 3% of each other after 128 steps, 0.05 far lower."""


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


def correlated_to_decorrelated(image: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`decorrelate_colors`: RGB coordinates to decorrelated ones; identity for 1 channel."""
    if image.shape[1] == 1:
        return image
    if image.shape[1] != 3:
        raise ValueError(f"colour decorrelation needs 1 or 3 channels, got {image.shape[1]}")
    inverse = torch.linalg.inv(COLOR_CORRELATION.double()).to(device=image.device, dtype=image.dtype)
    return torch.einsum("dc,bchw->bdhw", inverse, image)


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


def inside_unit(images: torch.Tensor, margin: float = ACCENTUATE_MARGIN) -> torch.Tensor:
    """Pixels clamped to ``[margin, 1 - margin]``: the sigmoid reaches them at a finite logit with a live gradient."""
    if not 0 < margin < 0.5:
        raise ValueError(f"margin must be in (0, 0.5), got {margin}")
    return images.clamp(margin, 1.0 - margin)


def _standardise(values: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Zero mean, unit spread per image (over everything but the batch axis), as MaCo standardises its whole tensor."""
    dims = tuple(range(1, values.ndim))
    centred = values - values.mean(dim=dims, keepdim=True)
    return centred / (centred.std(dim=dims, keepdim=True) + eps)


def _conjugate_rows(height: int) -> torch.Tensor:
    """Row ``(-k) mod height`` for each row k: where a real image's spectrum keeps the conjugate of row k."""
    return (-torch.arange(height)) % height


def _self_conjugate_columns(width: int) -> torch.Tensor:
    """``[width // 2 + 1]`` bools: the rfft columns (0, and width / 2 when even) that hold both +f and -f rows."""
    mask = torch.zeros(width // 2 + 1, dtype=torch.bool)
    mask[0] = True
    if width % 2 == 0:
        mask[-1] = True
    return mask


def _conjugate_pairs(height: int, width: int) -> torch.Tensor:
    """``[H, W // 2 + 1]`` bools: bins of the self-conjugate columns whose conjugate is another bin of the same
    column (all rows but 0 and H / 2, which are real-only: irfft2 reads just their real part)."""
    rows = _conjugate_rows(height)
    return _self_conjugate_columns(width)[None, :] & (rows != torch.arange(height))[:, None]


class MacoParam(ImageParam):
    """MaCo (Fel et al., NeurIPS 2023): only the Fourier phase moves; the magnitude is a fixed natural-image spectrum.

    Pixels = sigmoid(colour-decorrelate(standardise(irfft2(magnitude * e^(i standardise(phase)))))), with both
    standardisations per image. A fixed magnitude keeps every icon's energy spread over frequencies like a real
    photo's, so deep networks cannot be driven by high-frequency patterns no image has. ``spectrum`` is
    ``[channels, H, W // 2 + 1]`` (from :func:`atlas.featurevis.spectrum.estimate_spectrum` at this size); its
    overall scale does not matter. In the self-conjugate columns (0 and W / 2) the phase is made odd in the row
    frequency, so irfft2 keeps the given magnitude there too (MaCo's irfft2 silently halves part of those columns);
    the real-only bins (the DC term and the Nyquist ones) become ``magnitude * cos(phase)``, a signed value within
    the magnitude: the icon's mean colour is free, as much as the images' own means vary. The final
    standardisation scales every bin by one number per image and shifts the DC terms by the image's mean.
    The optimised tensor starts with spread ``1 / phase_scale`` (seeded per image) and is standardised, as MaCo
    standardises its phase: Adam moves each entry about ``lr`` per step, so the phase moves about
    ``lr * phase_scale`` radians (see :data:`MACO_PHASE_SCALE` for the measured choice).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        spectrum: torch.Tensor,
        channels: int = 3,
        size: int | tuple[int, int] = 128,
        *,
        decorrelate: bool = True,
        phase_scale: float = MACO_PHASE_SCALE,
    ) -> None:
        super().__init__(seeds, channels, size, decorrelate)
        if phase_scale <= 0:
            raise ValueError(f"phase_scale must be positive, got {phase_scale}")
        height, width = self.size
        shape = (channels, height, width // 2 + 1)
        magnitude = torch.as_tensor(spectrum).detach().to(device="cpu", dtype=torch.float64)
        if tuple(magnitude.shape) != shape:
            raise ValueError(
                f"spectrum has shape {tuple(magnitude.shape)} but {channels} channels at {height} x {width} px need "
                f"{shape}: estimate it at the icon size (estimate_spectrum(images, size))"
            )
        if not bool(torch.isfinite(magnitude).all()) or bool((magnitude < 0).any()) or float(magnitude.sum()) <= 0:
            raise ValueError("spectrum must be finite magnitudes (>= 0), not all zero")
        rows, pairs = _conjugate_rows(height), _conjugate_pairs(height, width)
        # A real image's magnitude is even along the rows of the self-conjugate columns; make a given one so.
        magnitude = torch.where(pairs, (magnitude + magnitude[:, rows]) / 2, magnitude)
        self.register_buffer("magnitude", magnitude.to(torch.float32)[None], persistent=False)
        self.register_buffer("conjugate_rows", rows, persistent=False)
        self.register_buffer("conjugate_pairs", pairs, persistent=False)
        self.phase = nn.Parameter(_seeded_normal(self.seeds, shape, 1.0 / phase_scale))

    def spatial(self) -> torch.Tensor:
        """``[B, C, H, W]``: the standardised image before colours and sigmoid (its |rfft2| is the magnitude's)."""
        phase = _standardise(self.phase)
        rows = cast(torch.Tensor, self.conjugate_rows)
        odd = (phase - phase[:, :, rows]) / 2
        phase = torch.where(cast(torch.Tensor, self.conjugate_pairs), odd, phase)
        magnitude = cast(torch.Tensor, self.magnitude)
        spectrum = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return _standardise(torch.fft.irfft2(spectrum, s=self.size, norm="ortho"))

    def forward(self) -> torch.Tensor:
        return self._to_pixels(self.spatial())


class AccentuateParam(FourierParam):
    """Feature accentuation (Hamblin et al., 2024): a :class:`FourierParam` whose first image is a real one.

    The spectrum starts at the inverse of the pixel chain (logit, inverse colour rotation, rfft2, divided by the
    1/f scale) of each start image, clamped to ``[margin, 1 - margin]``, so ``forward()`` at init returns those
    clamped starts and every step moves in the same decorrelated, 1/f-scaled space as ``fourier``. Pair it with
    :class:`atlas.featurevis.objectives.Proximity` to keep the result near its start. ``step_scale`` scales the
    1/f spectrum scale, so each step moves the image ``step_scale`` times as far as ``fourier``'s would (see
    :data:`ACCENTUATE_STEP_SCALE`). ``sd > 0`` adds seeded noise (``fourier``'s ``sd``, on the optimised tensor) to
    the start (image b's from ``seeds[b]``); by default the start is exact and the seed only picks the views.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        starts: torch.Tensor,
        *,
        decorrelate: bool = True,
        sd: float = 0.0,
        decay_power: float = 1.0,
        margin: float = ACCENTUATE_MARGIN,
        step_scale: float = ACCENTUATE_STEP_SCALE,
    ) -> None:
        if step_scale <= 0:
            raise ValueError(f"step_scale must be positive, got {step_scale}")
        if starts.ndim != 4:
            raise ValueError(f"starts must be [B, C, H, W] images in [0, 1], got shape {tuple(starts.shape)}")
        if starts.shape[0] != len(seeds):
            raise ValueError(f"{len(seeds)} seeds but {starts.shape[0]} start images: give one start per seed")
        channels, height, width = (int(n) for n in starts.shape[1:])
        super().__init__(seeds, channels, (height, width), decorrelate=decorrelate, sd=sd, decay_power=decay_power)
        cast(torch.Tensor, self.scale).mul_(step_scale)
        image = torch.logit(inside_unit(starts.detach().to(device="cpu", dtype=torch.float64), margin))
        if decorrelate:
            image = correlated_to_decorrelated(image)
        spectrum = torch.fft.rfft2(image * _FOURIER_OUTPUT_SCALE, norm="ortho") / cast(torch.Tensor, self.scale)[..., 0].double()
        with torch.no_grad():
            self.spectrum.add_(torch.view_as_real(spectrum).to(self.spectrum.dtype))


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


def maco(
    channels: int,
    size: int | tuple[int, int],
    spectrum: torch.Tensor,
    *,
    decorrelate: bool = True,
    phase_scale: float = MACO_PHASE_SCALE,
) -> ParamFactory:
    """A :data:`ParamFactory` for :class:`MacoParam`: every image of every try shares ``spectrum``, its phase is seeded."""

    def make(seeds: Sequence[int]) -> ImageParam:
        return MacoParam(seeds, spectrum, channels, size, decorrelate=decorrelate, phase_scale=phase_scale)

    make(seeds=[0])  # a wrong spectrum fails here, where the factory is made, not inside a render task
    return make


def accentuate(
    channels: int,
    size: int | tuple[int, int],
    starts: torch.Tensor,
    *,
    decorrelate: bool = True,
    sd: float = 0.0,
    decay_power: float = 1.0,
    margin: float = ACCENTUATE_MARGIN,
    step_scale: float = ACCENTUATE_STEP_SCALE,
) -> ParamFactory:
    """A :data:`ParamFactory` for :class:`AccentuateParam`; ``starts`` [N, C, H, W] in [0, 1], resized to ``size``.

    The factory is called with N seeds (``render`` passes one list per try) and gives ``starts[b]`` to ``seeds[b]``:
    starts are matched to seeds by position, so give them in the order of ``render``'s ``seeds``. Every best-of-N try
    starts from the same images (only its views, and its noise when ``sd > 0``, differ).
    """
    if starts.ndim != 4 or starts.shape[1] != channels:
        raise ValueError(f"starts must be [N, {channels}, H, W] images in [0, 1], got shape {tuple(starts.shape)}")
    height, width = _size_pair(size)
    resized = starts.detach().to(device="cpu", dtype=torch.float32)
    if tuple(resized.shape[-2:]) != (height, width):
        resized = F.interpolate(resized, size=(height, width), mode="bilinear", align_corners=False, antialias=True)

    def make(seeds: Sequence[int]) -> ImageParam:
        return AccentuateParam(
            seeds, resized, decorrelate=decorrelate, sd=sd, decay_power=decay_power, margin=margin, step_scale=step_scale
        )

    return make


def pixels(channels: int = 3, size: int | tuple[int, int] = 128, *, decorrelate: bool = False, sd: float = 0.01) -> ParamFactory:
    """A :data:`ParamFactory` for :class:`PixelParam`."""

    def make(seeds: Sequence[int]) -> ImageParam:
        return PixelParam(seeds, channels, size, decorrelate=decorrelate, sd=sd)

    return make


__all__ = [
    "ACCENTUATE_MARGIN",
    "ACCENTUATE_STEP_SCALE",
    "COLOR_CORRELATION",
    "MACO_PHASE_SCALE",
    "AccentuateParam",
    "FourierParam",
    "ImageParam",
    "MacoParam",
    "ParamFactory",
    "PixelParam",
    "accentuate",
    "correlated_to_decorrelated",
    "decorrelate_colors",
    "fourier",
    "inside_unit",
    "maco",
    "pixels",
]
