"""Objectives: small objects scoring each image of a batch, composable with ``+``, ``-`` and scalar ``*``.

An objective is called with the captured layer activation ``[B, C, H, W]`` and
the pixels being optimised ``[B, C, H, W]`` and returns one score per image
``[B]``; ``render`` maximises it. Unlike lucent's, each image of a batch can have
its own target (a row of ``vectors``, an entry of ``indices``), so a hundred atlas
cells render as one batch, and a researcher writes
``Channel(3) - 0.5 * Channel(7) + TotalVariation(0.01)`` in one line.

"Centre position" means row ``H // 2``, column ``W // 2`` (lucid's choice and what
the icon fidelity check reads, docs/architecture.md section 8). For even maps that is the
lower-right of the four central positions; ``window=2`` averages those four
instead (generally, a ``window x window`` block starting at ``H // 2 - window // 2``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from atlas.featurevis.param import ACCENTUATE_MARGIN, inside_unit
from atlas.models.view import centre

ArrayLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]]


def _as_tensor(values: ArrayLike | int, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(dtype=dtype)
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def _per_image(values: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Broadcast one target to the batch, or check there is one target per image."""
    if values.shape[0] == 1 and batch != 1:
        return values.expand(batch, *values.shape[1:])
    if values.shape[0] != batch:
        raise ValueError(f"{what} has {values.shape[0]} rows but the batch has {batch} images")
    return values


class Objective:
    """Base class: ``objective(activation, pixels) -> [B]`` scores, higher is better."""

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum((self, other))

    def __radd__(self, other: object) -> Objective:
        if isinstance(other, (int, float)) and other == 0:  # so that sum(objectives) works
            return self
        return NotImplemented

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum((self, Scaled(other, -1.0)))

    def __mul__(self, factor: float) -> Objective:
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return Scaled(self, float(factor))

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Objective:
        if not isinstance(divisor, (int, float)):
            return NotImplemented
        return Scaled(self, 1.0 / float(divisor))

    def __neg__(self) -> Objective:
        return Scaled(self, -1.0)


class Sum(Objective):
    """The sum of several objectives' scores."""

    terms: tuple[Objective, ...]

    def __init__(self, terms: Sequence[Objective]) -> None:
        flat: list[Objective] = []
        for term in terms:
            flat.extend(term.terms if isinstance(term, Sum) else [term])
        self.terms = tuple(flat)

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        total = self.terms[0](activation, pixels)
        for term in self.terms[1:]:
            total = total + term(activation, pixels)
        return total

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


class Scaled(Objective):
    """An objective times a constant."""

    def __init__(self, term: Objective, factor: float) -> None:
        self.term, self.factor = term, factor

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return self.factor * self.term(activation, pixels)

    def __repr__(self) -> str:
        return f"{self.factor:g} * {self.term!r}"


class Lambda(Objective):
    """Wrap any ``fn(activation, pixels) -> [B]`` so it composes with the others."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str = "Lambda") -> None:
        self.fn, self.name = fn, name

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return self.fn(activation, pixels)

    def __repr__(self) -> str:
        return self.name


class Direction(Objective):
    """Activation at the centre along a per-image vector: ``dot * max(cos, floor) ** cossim_power``.

    The cosine term (lucid's atlas objective) rewards pointing the right way, not
    just growing the activation. Keep ``floor > 0``: with ``relu(cos)`` an image
    that starts at a negative cosine would get exactly zero gradient and never
    move; with the floor it still follows ``floor ** p * vector``.
    ``dot`` is the plain dot product with ``vectors``; ``cos`` the true cosine with ``cosine_vectors``
    (default: the same vectors). Growing along one vector while pointing at another is what
    ``Direction.whitened(..., cosine="raw")`` uses.
    """

    def __init__(
        self,
        vectors: ArrayLike,
        cossim_power: float = 4.0,
        floor: float = 0.1,
        window: int = 1,
        eps: float = 1e-8,
        cosine_vectors: ArrayLike | None = None,
    ) -> None:
        self.vectors = _as_matrix(vectors, "vectors")
        self.cosine_vectors = None if cosine_vectors is None else _as_matrix(cosine_vectors, "cosine_vectors")
        if self.cosine_vectors is not None and self.cosine_vectors.shape[-1] != self.vectors.shape[-1]:
            raise ValueError(f"cosine_vectors have {self.cosine_vectors.shape[-1]} channels but vectors have {self.vectors.shape[-1]}")
        self.cossim_power, self.floor, self.window, self.eps = cossim_power, floor, window, eps

    @classmethod
    def whitened(cls, vectors: ArrayLike, matrix: ArrayLike, cosine: str = "whitened", **kwargs: float) -> Direction:
        """Optimise along ``vectors @ matrix.T``, where ``matrix`` [C, C] is the layout stage's whitening
        (inverse uncentred second moment): directions every image excites stop dominating.

        ``cosine="raw"`` takes the cosine against the cell's own (unwhitened) vector instead: the icon grows along
        the whitened direction but must point where the cell's activations point, which is what icon fidelity
        measures (on EfficientNet-Lite0 and a Fashion-MNIST CNN it raised fidelity's cosine from 0.66 / 0.75 to
        0.85 / 0.95; see README, "Icon settings").
        """
        if cosine not in ("whitened", "raw"):
            raise ValueError(f"cosine {cosine!r}: expected 'whitened' or 'raw'")
        vectors_t = _as_tensor(vectors, torch.float64)
        matrix_t = _as_tensor(matrix, torch.float64)
        whitened = (vectors_t @ matrix_t.T).to(torch.float32)
        return cls(whitened, cosine_vectors=vectors_t.to(torch.float32) if cosine == "raw" else None, **kwargs)  # type: ignore[arg-type]

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        acts = centre(activation, self.window)
        vectors = _per_image(self.vectors.to(device=acts.device, dtype=acts.dtype), acts.shape[0], "vectors")
        if vectors.shape[1] != acts.shape[1]:
            raise ValueError(f"vectors have {vectors.shape[1]} channels but the layer has {acts.shape[1]}")
        dot = (acts * vectors).sum(dim=1)
        if self.cossim_power == 0:
            return dot
        if self.cosine_vectors is None:
            cos = dot / (acts.norm(dim=1) * vectors.norm(dim=1) + self.eps)
        else:
            target = _per_image(self.cosine_vectors.to(device=acts.device, dtype=acts.dtype), acts.shape[0], "cosine_vectors")
            cos = (acts * target).sum(dim=1) / (acts.norm(dim=1) * target.norm(dim=1) + self.eps)
        return dot * cos.clamp_min(self.floor) ** self.cossim_power

    def __repr__(self) -> str:
        towards = "" if self.cosine_vectors is None else ", cosine against other vectors"
        return f"Direction({tuple(self.vectors.shape)}, cossim_power={self.cossim_power}, floor={self.floor}{towards})"


class Log(Objective):
    """``log(max(term, eps))``: a product of objectives as a sum of logs, so neither term's scale decides the balance.

    Below ``eps`` the gradient through ``term`` is zero; add a term that still moves such images (``Retrieval``).
    """

    def __init__(self, term: Objective, eps: float = 1e-6) -> None:
        self.term, self.eps = term, eps

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return torch.log(self.term(activation, pixels).clamp_min(self.eps))

    def __repr__(self) -> str:
        return f"Log({self.term!r})"


RETRIEVAL_TEMPERATURE = 0.01  # in cosine units: a neighbour 0.01 closer than the own cell is e times as likely


class Retrieval(Objective):
    """Log-probability that the centre activation picks its own row of ``directions`` among all rows, by cosine.

    ``log_softmax(cos(activation, directions) / temperature)[own]``: what icon fidelity's top-1 asks, made smooth.
    Where neighbouring cells of a grid point within a few degrees of each other, a plain direction objective reaches
    the right region but not the right cell; this term pushes each icon away from the cells next to its own.
    ``directions`` [N, C] are all of a grid's cells; ``own`` [B] the row of each image's cell.
    """

    def __init__(self, directions: ArrayLike, own: Sequence[int] | torch.Tensor, temperature: float = RETRIEVAL_TEMPERATURE) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be above 0, got {temperature}")
        matrix = _as_matrix(directions, "directions")
        self.directions = matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.own = _indices(own)
        if len(self.own) and (int(self.own.min()) < 0 or int(self.own.max()) >= len(self.directions)):
            raise ValueError(f"own rows must lie in 0..{len(self.directions) - 1}")
        self.temperature = float(temperature)

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        acts = centre(activation)
        directions = self.directions.to(device=acts.device, dtype=acts.dtype)
        if directions.shape[1] != acts.shape[1]:
            raise ValueError(f"directions have {directions.shape[1]} channels but the layer has {acts.shape[1]}")
        own = _per_image(self.own.to(acts.device), acts.shape[0], "own")
        cosines = (acts / acts.norm(dim=1, keepdim=True).clamp_min(1e-8)) @ directions.T
        log_p = torch.log_softmax(cosines / self.temperature, dim=1)
        return log_p[torch.arange(acts.shape[0], device=acts.device), own]

    def __repr__(self) -> str:
        return f"Retrieval({tuple(self.directions.shape)}, temperature={self.temperature:g})"


def _as_matrix(values: ArrayLike, what: str) -> torch.Tensor:
    matrix = _as_tensor(values, torch.float32)
    if matrix.ndim == 1:
        matrix = matrix[None]
    if matrix.ndim != 2:
        raise ValueError(f"{what} must be [B, C] (or [C] for all images), got shape {tuple(matrix.shape)}")
    return matrix


def _indices(indices: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    return _as_tensor(indices, torch.long).reshape(-1)


class Channel(Objective):
    """Mean over space of one channel per image (an int targets the same channel in every image)."""

    def __init__(self, indices: int | Sequence[int] | torch.Tensor) -> None:
        self.indices = _indices(indices)

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        index = _per_image(self.indices.to(activation.device), activation.shape[0], "indices")
        rows = torch.arange(activation.shape[0], device=activation.device)
        return activation[rows, index].mean(dim=(1, 2))

    def __repr__(self) -> str:
        return f"Channel({self.indices.tolist()})"


class Neuron(Objective):
    """One channel at one position (the centre by default, see module doc), per image."""

    def __init__(self, channel: int | Sequence[int] | torch.Tensor, y: int | None = None, x: int | None = None) -> None:
        self.channel, self.y, self.x = _indices(channel), y, x

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        index = _per_image(self.channel.to(activation.device), activation.shape[0], "channel")
        rows = torch.arange(activation.shape[0], device=activation.device)
        height, width = activation.shape[-2:]
        y = height // 2 if self.y is None else self.y
        x = width // 2 if self.x is None else self.x
        return activation[rows, index, y, x]

    def __repr__(self) -> str:
        return f"Neuron({self.channel.tolist()}, y={self.y}, x={self.x})"


class TotalVariation(Objective):
    """``-weight * total variation`` of the pixels: a negative term, so adding it penalises pixel noise.

    Total variation here is the mean absolute difference between neighbouring
    pixels (a mean, not lucid's sum, so one weight works at any image size).
    """

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        dy = (pixels[:, :, 1:, :] - pixels[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
        dx = (pixels[:, :, :, 1:] - pixels[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
        return -self.weight * (dx + dy)

    def __repr__(self) -> str:
        return f"TotalVariation({self.weight:g})"


class Proximity(Objective):
    """``-weight * mean squared distance`` of the pixels to per-image reference images: keeps an icon near its start.

    Feature accentuation's penalty (Hamblin et al., 2024), compared on the plain pixels (before random views) in
    [0, 1], as a mean over channels and pixels so one weight works at any size. ``starts`` [B, C, H, W] (or one
    image for all) are clamped like :class:`atlas.featurevis.param.AccentuateParam` clamps its starts, so the
    penalty is exactly zero where that parameterisation begins, and resized to the pixels' size when it differs.
    """

    def __init__(self, starts: torch.Tensor, weight: float | torch.Tensor = 1.0, margin: float = ACCENTUATE_MARGIN) -> None:
        """``weight``: one number, or one per image ([B]; so each penalty can follow its own objective's scale)."""
        if starts.ndim != 4:
            raise ValueError(f"starts must be [B, C, H, W] images in [0, 1], got shape {tuple(starts.shape)}")
        self.starts = inside_unit(starts.detach().to(torch.float32), margin)
        self.weight: float | torch.Tensor = weight.detach().to(torch.float32) if isinstance(weight, torch.Tensor) else float(weight)
        self._fitted: torch.Tensor | None = None

    def _starts_like(self, pixels: torch.Tensor) -> torch.Tensor:
        fitted = self._fitted
        if fitted is None or fitted.shape[-2:] != pixels.shape[-2:] or fitted.device != pixels.device or fitted.dtype != pixels.dtype:
            fitted = self.starts.to(device=pixels.device, dtype=pixels.dtype)
            if fitted.shape[-2:] != pixels.shape[-2:]:
                fitted = F.interpolate(fitted, size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False, antialias=True)
            self._fitted = fitted
        return _per_image(fitted, pixels.shape[0], "starts")

    def __call__(self, activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        starts = self._starts_like(pixels)
        if starts.shape[1] != pixels.shape[1]:
            raise ValueError(f"starts have {starts.shape[1]} channels but the images have {pixels.shape[1]}")
        weight = self.weight.to(device=pixels.device, dtype=pixels.dtype) if isinstance(self.weight, torch.Tensor) else self.weight
        return -weight * (pixels - starts).square().mean(dim=(1, 2, 3))

    def __repr__(self) -> str:
        weight = f"[{self.weight.numel()} weights]" if isinstance(self.weight, torch.Tensor) else f"{self.weight:g}"
        return f"Proximity({tuple(self.starts.shape)}, weight={weight})"


__all__ = [
    "Channel",
    "Direction",
    "Lambda",
    "Log",
    "Neuron",
    "Objective",
    "Proximity",
    "Retrieval",
    "Scaled",
    "Sum",
    "TotalVariation",
    "centre",
]
