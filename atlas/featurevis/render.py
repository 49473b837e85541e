"""Gradient ascent on an image parameterisation: a short loop that knows nothing about objectives.

Each step: pixels from the parameterisation, one random view per image
(batched), resize to the model's input size, normalise (the model view's mean
and std), forward up to the layer (nothing after it runs), score, backward into
the parameterisation only, Adam.
Best of N: ``tries`` independent starts (seeds from :func:`try_seeds`), and per
image the try whose plain image (no random view) scores highest is kept.

Only the parameterisation's tensors are optimised: the backward pass is asked
for their gradients alone (``backward(inputs=...)``), so model weights get no
``.grad`` and the model's ``requires_grad`` flags are never touched (safe when
threads share a model). Views are fed ``channels_last`` (the weights are left
as they are): on 2 CPU cores that made this loop 1.2x faster (1.3x on one
thread) for EfficientNet-Lite0 at 80 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack

import torch
import torch.nn.functional as F
from torch import nn

from atlas.featurevis.alpha import AlphaAccumulator
from atlas.featurevis.objectives import Channel, Objective
from atlas.featurevis.param import ImageParam, ParamFactory, fourier
from atlas.featurevis.seeding import derive_seed, try_seeds
from atlas.featurevis.transforms import Transforms, resize
from atlas.models.capture import LayerCapture, eval_mode
from atlas.models.view import LayerLayout, ModelView


@dataclass
class RenderResult:
    """``images`` [B, C, H, W] in [0, 1]; ``scores`` [B]: the objective on each kept plain image;
    ``history`` [steps]: mean training score per step (over images and tries);
    ``try_scores`` [tries, B] and ``best_try`` [B]: what best-of-N chose from;
    ``alpha`` [B, 1, H, W] in [0, 1]: the kept try's attribution transparency (``render(..., alpha=True)``), else None."""

    images: torch.Tensor
    scores: torch.Tensor
    history: torch.Tensor
    try_scores: torch.Tensor
    best_try: torch.Tensor
    alpha: torch.Tensor | None = None


class _ModelInput:
    """Pixels in [0, 1] -> model input: resize, the view's normalisation, the model's dtype, optionally channels_last."""

    def __init__(self, view: ModelView, input_size: int | tuple[int, int] | None, channels_last: bool) -> None:
        self.view = view
        self.model_dtype = view.dtype
        self.input_size = input_size
        self.channels_last = channels_last

    def __call__(self, views: torch.Tensor, resized: bool = False) -> torch.Tensor:
        if not resized and self.input_size is not None:
            views = resize(views, self.input_size)
        inputs = self.view.normalise(views).to(self.model_dtype)
        return inputs.contiguous(memory_format=torch.channels_last) if self.channels_last else inputs


def as_view(
    model: ModelView | nn.Module, layer: nn.Module | str | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> ModelView:
    """``model`` itself when it is a view; a bare module becomes a view of ``layer`` (mean/std: given, else its own or
    ImageNet's), as lucent takes a plain model."""
    if isinstance(model, ModelView):
        if layer is not None or mean is not None or std is not None:
            raise ValueError("a ModelView carries its layer and preprocessing; pass layer=, mean= and std= only with a bare module")
        return model
    if layer is None:
        raise ValueError("a bare module needs layer= (the module or its name); or pass a ModelView")
    return ModelView.of_module(model, layer, mean=mean, std=std)


def _work_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Pixels and views in float64 for a float64 model, else float32 (half models get a cast input)."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


Precision = Literal["fp32", "bf16"]


class _Forward:
    """``capture(inputs)`` as the layout's spatial map, with ``precision="bf16"`` under ``torch.autocast`` and cast back
    to float32 for the objective.

    bf16 runs the model's convolutions (forward and backward) on a GPU's tensor cores; pixels, the objective and
    Adam stay float32. fp32 calls the capture as it is, so the default loop is exactly the one measured before.
    """

    def __init__(self, capture: LayerCapture, layout: LayerLayout, precision: Precision, device: torch.device) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision!r}: expected 'fp32' or 'bf16'")
        self.capture = capture
        self.layout = layout
        self.autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16" else None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.autocast is None:
            return self.layout.spatial(self.capture(inputs))
        with self.autocast:
            return self.layout.spatial(self.capture(inputs)).float()


@dataclass(frozen=True)
class RenderOptions:
    """How the loop runs, besides what it optimises and for whom: lucent's one-call ``render_vis`` is the model,
    so every option has a default and a notebook names only what it changes (``render(..., steps=512, tries=4)``).

    ``input_size`` is the model's input size (views are resized to it; None feeds them at the image size);
    ``transforms`` defaults to ``Transforms()``; ``coarse_steps``: the first steps feed the model each view at half
    its size (2 x 2 average-pooled, so a quarter of the model's work per step): the coarse shapes settle cheaply,
    the last steps at full size add the detail (not with a fixed ``input_size``); ``precision="bf16"`` runs the model's forward (and so its backward)
    in bfloat16 under autocast, on any device, while pixels, the objective and Adam stay float32; ``alpha`` also
    asks the backward for each step's pixel gradient and returns MaCo's transparency (:mod:`atlas.featurevis.alpha`)
    as ``RenderResult.alpha`` (off, the loop does exactly what it did without it).
    """

    steps: int = 256
    lr: float = 0.05
    tries: int = 1
    transforms: Transforms | None = None
    input_size: int | tuple[int, int] | None = None
    coarse_steps: int = 0
    stop_at_layer: bool = True
    channels_last: bool = True
    precision: Precision = "fp32"
    alpha: bool = False


class RenderKeywords(TypedDict, total=False):
    """:class:`RenderOptions` as keywords of :func:`render`, so a type checker sees each one."""

    steps: int
    lr: float
    tries: int
    transforms: Transforms | None
    input_size: int | tuple[int, int] | None
    coarse_steps: int
    stop_at_layer: bool
    channels_last: bool
    precision: Precision
    alpha: bool


def _check_scores(scores: torch.Tensor, batch: int) -> torch.Tensor:
    if scores.shape != (batch,):
        raise ValueError(f"an objective must return one score per image, shape ({batch},); got {tuple(scores.shape)}")
    return scores


def score_images(
    model: ModelView | nn.Module,
    objective: Objective,
    images: torch.Tensor,
    *,
    layer: nn.Module | str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: int | tuple[int, int] | None = None,
    stop_at_layer: bool = True,
    channels_last: bool = True,
) -> torch.Tensor:
    """``[B]``: the objective on plain images in [0, 1] (no random views), resized like the model input.

    ``model``: a :class:`ModelView`, or a bare module with ``layer`` (and ``mean``/``std``, see :func:`as_view`)."""
    view = as_view(model, layer, mean, std)
    images = images.to(device=view.device, dtype=_work_dtype(view.dtype))
    model_input = _ModelInput(view, input_size, channels_last)
    with eval_mode(view.module), view.capture(stop_at_layer) as capture, torch.no_grad():
        scores = objective(view.layout.spatial(capture(model_input(images))), images)
    return _check_scores(scores, images.shape[0]).float()


def render(
    model: ModelView | nn.Module,
    objective: Objective,
    param_factory: ParamFactory,
    *,
    seeds: Sequence[int],
    layer: nn.Module | str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Unpack[RenderKeywords],
) -> RenderResult:
    """Maximise ``objective`` at the layer for ``len(seeds)`` images; image b depends only on ``seeds[b]``.

    ``model``: a :class:`ModelView` (layer and normalisation included), or a bare module with ``layer`` (the module
    or its name) and ``mean``/``std`` like the model's training data (default: a timm model's own, else ImageNet's).
    ``param_factory(seeds)`` builds the parameterisation (e.g. ``fourier(3, 80)``); any of :class:`RenderOptions`
    may follow as a keyword (``steps``, ``lr``, ``tries``, ``transforms``, ``input_size``, ``stop_at_layer``,
    ``channels_last``, ``precision``, ``alpha``).
    """
    opts = RenderOptions(**options)
    steps, lr, tries, input_size, precision = opts.steps, opts.lr, opts.tries, opts.input_size, opts.precision
    stop_at_layer, channels_last, alpha = opts.stop_at_layer, opts.channels_last, opts.alpha
    transforms = Transforms() if opts.transforms is None else opts.transforms
    if steps < 0 or tries < 1:
        raise ValueError(f"need steps >= 0 and tries >= 1, got steps={steps}, tries={tries}")
    if opts.coarse_steps and input_size is not None:
        raise ValueError("coarse_steps needs a model that takes views at any size; this one is fed input_size only")
    if len(seeds) == 0:
        raise ValueError("need at least one seed (one per image)")
    view = as_view(model, layer, mean, std)
    device, model_dtype = view.device, view.dtype
    model_input = _ModelInput(view, input_size, channels_last)
    history = torch.zeros(steps, device=device)  # summed on device: no host sync per step
    try_scores: list[torch.Tensor] = []
    with eval_mode(view.module), view.capture(stop_at_layer) as capture:
        forward = _Forward(capture, view.layout, precision, device)
        for attempt in range(tries):
            attempt_seeds = try_seeds(seeds, attempt)
            param: ImageParam = param_factory(attempt_seeds).to(device=device, dtype=_work_dtype(model_dtype))
            tensors = [p for p in param.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(tensors, lr=lr)
            out_size = input_size if input_size is not None else param.size
            views = transforms.views([derive_seed(s, "transforms") for s in attempt_seeds], steps, param.size,
                                     out_size, device)  # fmt: skip
            attribution = AlphaAccumulator() if alpha else None
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                pixels = param()
                seen = views(pixels, step)
                if step < opts.coarse_steps:
                    seen = F.avg_pool2d(seen, 2)
                scores = objective(forward(model_input(seen, resized=True)), pixels)
                if attribution is None:
                    (-_check_scores(scores, len(seeds)).sum()).backward(inputs=tensors)
                else:  # the pixels' gradient too (a non-leaf: backward fills its .grad when asked for it)
                    (-_check_scores(scores, len(seeds)).sum()).backward(inputs=[*tensors, pixels])
                    attribution.add(pixels.grad)
                optimizer.step()
                history[step] += scores.detach().mean()
            with torch.no_grad():
                images = param().detach()
                final = _check_scores(objective(forward(model_input(images)), images), len(seeds)).float()
                images = images.float()
            transparency = attribution.alpha(images) if attribution is not None else None
            if attempt == 0:
                best_images, best_scores, best_alpha = images, final, transparency
                best_try = torch.zeros(len(seeds), dtype=torch.long, device=device)
            else:
                better = final > best_scores  # ties keep the earlier try
                best_images = torch.where(better[:, None, None, None], images, best_images)
                best_scores = torch.where(better, final, best_scores)
                best_try = torch.where(better, attempt, best_try)
                if transparency is not None and best_alpha is not None:
                    best_alpha = torch.where(better[:, None, None, None], transparency, best_alpha)
            try_scores.append(final)
    return RenderResult(best_images, best_scores, history / tries, torch.stack(try_scores), best_try, best_alpha)


def render_channel(
    model: nn.Module,
    layer: nn.Module,
    channel: int | Sequence[int],
    size: int = 128,
    *,
    channels: int | None = None,
    seeds: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Unpack[RenderKeywords],
) -> RenderResult:
    """Visualise one channel (or a batch of channels) of any layer of any model, with sensible defaults.

    Input channels come from the first ``Conv2d``; mean/std from a timm model's
    config, else ImageNet's (3 channels) or 0.5/0.5. Any of :class:`RenderOptions` may follow as a keyword.
    """
    targets = [channel] if isinstance(channel, int) else list(channel)
    view = ModelView.of_module(model, layer, mean=mean, std=std, channels=channels)
    return render(
        view,
        Channel(targets),
        fourier(view.preprocessing.channels, size),
        seeds=list(seeds) if seeds is not None else list(range(len(targets))),
        **options,
    )


__all__ = ["RenderKeywords", "RenderOptions", "RenderResult", "as_view", "render", "render_channel", "score_images"]
