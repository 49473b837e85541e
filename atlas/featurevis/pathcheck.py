"""Path check: is an icon processed like its cell's real example patches at earlier layers?

Geirhos et al. (ICML 2024, "Don't trust your eyes") show a feature visualisation can drive a unit through a path
real images never take. So for each cell we compare the icon's mean activation at one or two layers before the
atlas layer with the mean over its example patches: the cosine, and the rank of its own cell's example-mean among
every cell's (0 = its own examples are the nearest), as :mod:`atlas.featurevis.fidelity` does at the atlas layer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.featurevis.transforms import resize
from atlas.models.capture import zeros_input
from atlas.models.layers import Traced, resolve_layer, trace_modules
from atlas.models.layout_reading import LayoutRequest, UnclearLayout, shapes_at_twice_the_size, tensor_layout
from atlas.models.record import LoadedModel
from atlas.models.view import ChannelsFirst, LayerLayout, ModelView

SETTING = "path_check.layers"


def _trace_to(model: LoadedModel, layer: nn.Module, layer_name: str) -> list[Traced]:
    """The modules that finish before ``layer`` starts, in forward order (one dummy pass, stopped at ``layer``)."""
    prep = model.preprocessing
    return trace_modules(model.module, zeros_input(model.module, prep.channels, prep.input_size), stop_at=layer, skip=layer_name)


def choose_layers(
    model: LoadedModel, atlas_layer: str, setting: Sequence[str] | Literal["auto"] = "auto", own_layouts: bool = False
) -> list[str]:
    """The early layers of the check: the named ones (checked, with model.layer's one-line error), or chosen.

    ``auto``: among the modules that finish before the atlas layer starts, with a 4-D output, run once, and not
    handing back their input (Identity, Dropout, in-place activations), at no deeper nesting than the atlas layer
    when that leaves two or more (block outputs rather than a block's inner convolutions): the ones at about 1/3
    and 2/3 of that forward order. A model with nothing before its atlas layer checks at the atlas layer itself.
    ``own_layouts`` (an atlas layer that is not channels first): only layers whose own layout reads for certain
    (:func:`early_layouts`), token outputs too (a transformer's blocks).
    """
    if setting != "auto":
        for name in setting:
            try:
                resolve_layer(model, name)
            except AtlasError as err:
                raise AtlasError(str(err).replace("model.layer", SETTING, 1)) from None
        return list(dict.fromkeys(setting))
    traced = _trace_to(model, resolve_layer(model, atlas_layer), atlas_layer)
    mapped = [t for t in traced if t.shape is not None and len(t.shape) in (2, 3) and t.calls == 1 and not t.passthrough]
    if own_layouts:
        readable = early_layouts(model, [t.name for t in mapped])
        mapped = [t for t in mapped if t.name in readable]
    candidates = [t.name for t in mapped if own_layouts or len(t.shape or ()) == 3]
    depth = atlas_layer.count(".")
    shallow = [name for name in candidates if name.count(".") <= depth]
    candidates = shallow if len(shallow) >= 2 else candidates
    if not candidates:
        return [atlas_layer]
    return list(dict.fromkeys(candidates[min(len(candidates) - 1, k * len(candidates) // 3)] for k in (1, 2)))


class _AllSeen(Exception):
    """Raised once every early layer has run, so nothing after the last of them is computed."""


def early_layouts(model: LoadedModel, names: Sequence[str]) -> dict[str, LayerLayout]:
    """Each named early layer's own layout, read as the atlas layer's is (the model's metadata, and the outputs at
    twice the input size where the model takes it); a layer with no certain reading is left out."""
    module, prep = model.module, model.preprocessing
    traced = {t.name: t.shape for t in trace_modules(module, zeros_input(module, prep.channels, prep.input_size))}
    resized = shapes_at_twice_the_size(model)
    found: dict[str, LayerLayout] = {}
    for name in names:
        shape = traced.get(name)
        if shape is None:
            continue
        try:
            found[name] = tensor_layout(module, name, resolve_layer(model, name), shape, LayoutRequest(), partial(resized.get, name))
        except UnclearLayout:
            continue
    return found


def reads_own_layouts(view: ModelView) -> bool:
    """Whether the early layers are read each in its own layout: for any atlas layer that is not channels first (a
    channels-first atlas reads its early layers channels first, as it always has)."""
    return not isinstance(view.layout, ChannelsFirst)


def path_layouts(view: ModelView, names: Sequence[str]) -> list[LayerLayout] | None:
    """The layouts :func:`early_vectors` reads ``names`` with (None: the atlas layer's, for every one); a named layer
    without a certain reading is one line."""
    if not reads_own_layouts(view):
        return None
    found = {**early_layouts(view.model, [name for name in names if name != view.layer_name]), view.layer_name: view.layout}
    for name in names:
        if name not in found:
            raise AtlasError(f"{SETTING}: layer {name!r} has no certain layout (see `atlas layers`); name another layer")
    return [found[name] for name in names]


def _batch_vectors(
    view: ModelView, layers: Sequence[nn.Module], x: torch.Tensor, layouts: Sequence[LayerLayout] | None = None
) -> torch.Tensor:
    """[B, sum of channels]: each layer's spatial mean, taken in its hook (before any in-place op changes it).

    Several layers at once, stopping after the last of them, so not :class:`atlas.models.capture.LayerCapture`."""
    means: dict[int, torch.Tensor] = {}
    thread = threading.get_ident()

    def hook_for(k: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if threading.get_ident() != thread or k in means or not isinstance(output, torch.Tensor):
                return
            means[k] = (layouts[k] if layouts is not None else view.layout).spatial_mean(output.float())
            if len(means) == len(layers):
                raise _AllSeen

        return hook

    handles = [layer.register_forward_hook(hook_for(k)) for k, layer in enumerate(layers)]
    try:
        view.module(x)
    except _AllSeen:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(means) < len(layers):
        raise AtlasError(f"{SETTING}: a layer did not run in the forward pass; name layers the model uses at inference")
    parts = [means[k] / means[k].norm(dim=1, keepdim=True).clamp_min(1e-12) for k in range(len(layers))]
    return torch.cat(parts, dim=1)


def early_vectors(
    view: ModelView,
    layers: Sequence[nn.Module],
    images: Sequence[torch.Tensor] | torch.Tensor,
    batch_size: int = 64,
    layouts: Sequence[LayerLayout] | None = None,
    fixed_size: int | None = None,
) -> np.ndarray:
    """[N, D]: per image in [0, 1] ([C, H, W], each fed at its own size, or resized to ``fixed_size`` for a model of
    one input size), every early layer's spatial mean activation (read through ``layouts``, one per layer; default:
    the atlas layer's), L2-normalised per layer (so each layer weighs the same) and concatenated. Images of one size
    go in batches."""
    device = view.device
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for n, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape), []).append(n)
    out: np.ndarray | None = None
    with torch.no_grad():
        for members in by_shape.values():
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                pixels = torch.stack([images[n] for n in chunk]).to(device).float()
                batch = view.normalise(pixels if fixed_size is None else resize(pixels, fixed_size))
                vectors = _batch_vectors(view, layers, batch.contiguous(memory_format=torch.channels_last), layouts).cpu().numpy()
                if out is None:
                    out = np.zeros((len(images), vectors.shape[1]), np.float32)
                out[chunk] = vectors
    return out if out is not None else np.zeros((0, 0), np.float32)


@dataclass
class PathCheck:
    """Per cell: cosine of the icon's early vector with its examples' mean, and that mean's rank among all cells'."""

    cosine: np.ndarray  # [N] float32, NaN where the cell has no readable example
    rank: np.ndarray  # [N] int64, 0 = own examples nearest; -1 where the cell has no readable example
    checked: np.ndarray  # [N] bool: the cell had at least one readable example
    nonfinite: int = 0  # icons whose early activations were NaN or infinite: cosine 0, last rank

    @property
    def cells(self) -> int:
        return int(self.checked.sum())

    @property
    def top1(self) -> float:
        return float((self.rank[self.checked] == 0).mean()) if self.cells else 0.0

    @property
    def mean_cosine(self) -> float:
        return float(self.cosine[self.checked].mean()) if self.cells else 0.0

    def records(self) -> list[dict[str, Any] | None]:
        """The level's path.json: {cosine, rank} per cell in cell order, null for a cell without examples."""
        return [{"cosine": round(float(c), 4), "rank": int(r)} if ok else None for c, r, ok in zip(self.cosine, self.rank, self.checked)]


def path_check(icon_vectors: np.ndarray, example_vectors_per_cell: Sequence[np.ndarray], block: int = 512) -> PathCheck:
    """Score each icon against the mean of its own cell's example vectors, ranked among every checked cell's mean.

    Example rows that are not finite are dropped; a cell left with none is not checked. An icon whose vector is
    not finite points nowhere: cosine 0 and the last rank, never a NaN that would compare as a perfect match.
    Compared a block of icons at a time, so memory is ``block x cells``.
    """
    n = len(icon_vectors)
    dim = icon_vectors.shape[1] if icon_vectors.ndim == 2 else 0
    means = np.zeros((n, dim), np.float64)
    checked = np.zeros(n, bool)
    for k, rows in enumerate(example_vectors_per_cell):
        rows = np.asarray(rows, np.float64).reshape(-1, dim)
        rows = rows[np.isfinite(rows).all(axis=1)]
        if len(rows):
            means[k], checked[k] = rows.mean(axis=0), True
    cosine = np.full(n, np.nan, np.float32)
    rank = np.full(n, -1, np.int64)
    where = np.flatnonzero(checked)
    icons = np.asarray(icon_vectors, np.float64)[where]
    broken = np.asarray(~np.isfinite(icons).all(axis=1), bool)
    icons = np.where(broken[:, None], 0.0, icons)
    a = icons / np.maximum(np.linalg.norm(icons, axis=1, keepdims=True), 1e-12)
    d = means[where] / np.maximum(np.linalg.norm(means[where], axis=1, keepdims=True), 1e-12)
    own = np.einsum("ij,ij->i", a, d)
    ranks = np.zeros(len(where), np.int64)
    for start in range(0, len(where), block):
        similarity = a[start : start + block] @ d.T  # [block icons, every checked cell]
        diagonal = similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))]
        ranks[start : start + block] = (similarity > diagonal[:, None]).sum(axis=1)
    own[broken] = 0.0
    ranks[broken] = max(len(where) - 1, 0)
    cosine[where], rank[where] = own.astype(np.float32), ranks
    return PathCheck(cosine, rank, checked, int(broken.sum()))
