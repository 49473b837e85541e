"""Layers of a loaded model: list them with output shapes, trace what runs before one, resolve a name once.

Capturing one layer's output is :mod:`atlas.models.capture`; reading it is :mod:`atlas.models.view`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.models.capture import run_to_layer, zeros_input
from atlas.models.record import LoadedModel


@dataclass(frozen=True)
class LayerInfo:
    """One named submodule: its dotted name, class name and output shape without the batch (None: did not run)."""

    name: str
    type: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class Traced:
    """What one named submodule did in a forward pass: its first output's shape without the batch (None: not a
    tensor), how many times it returned a tensor, and whether it handed back its input tensor itself (Identity, eval
    Dropout, in-place activations)."""

    name: str
    shape: tuple[int, ...] | None
    calls: int
    passthrough: bool


def trace_modules(module: nn.Module, x: torch.Tensor, stop_at: nn.Module | None = None, skip: str | None = None) -> list[Traced]:
    """Every named submodule that ran when ``x`` went through (no grad), in the order each first finished.

    ``stop_at``: end the pass once that module has run; ``skip``: leave out that module and everything inside it.
    """
    seen: dict[str, dict[str, Any]] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = isinstance(output, torch.Tensor)
            record = seen.setdefault(name, {"shape": tuple(output.shape[1:]) if tensor else None, "calls": 0, "passthrough": False})
            if not tensor or record["shape"] is None:
                return  # the first output decides: a module that first returned a non-tensor stays one
            record["calls"] += 1
            record["passthrough"] |= bool(inputs) and output is inputs[0]

        return hook

    named = [(n, m) for n, m in module.named_modules() if n and not (skip is not None and (n == skip or n.startswith(f"{skip}.")))]
    handles = [sub.register_forward_hook(hook_for(name)) for name, sub in named]
    try:
        with torch.no_grad():
            if stop_at is None:
                module(x)
            else:
                run_to_layer(module, stop_at, x)
    finally:
        for handle in handles:
            handle.remove()
    return [Traced(n, v["shape"], v["calls"], v["passthrough"]) for n, v in seen.items()]


def list_layers(model: LoadedModel, input_size: int | None = None) -> list[LayerInfo]:
    """Every named submodule in registration order, with its output shape from one dummy forward (batch 1, no grad).

    Modules whose output is not a tensor are left out; modules that did not run get ``shape=None``.
    """
    module = model.module
    size = input_size or model.preprocessing.input_size
    x = zeros_input(module, model.preprocessing.channels, size)
    try:
        traced = {t.name: t.shape for t in trace_modules(module, x)}
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AtlasError(
            f"a forward pass of {model.spec} at {model.preprocessing.channels}x{size}x{size} failed ({first}); "
            "check model.input_size and model.channels"
        ) from None
    return [
        LayerInfo(name=name, type=type(sub).__name__, shape=traced.get(name))
        for name, sub in module.named_modules()
        if name and not (name in traced and traced[name] is None)
    ]


def resolve_layer(model: LoadedModel, name: str, key: str = "model.layer") -> nn.Module:
    """The submodule called ``name``; an unknown name is a one-line error naming the config ``key`` and listing the
    closest real names."""
    modules = dict(model.module.named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    closest = difflib.get_close_matches(name, names, n=6, cutoff=0.6)
    if closest:
        hint = f"closest: {', '.join(closest)}"
    else:
        hint = f"top-level layers: {', '.join(n for n, _ in model.module.named_children())}"
    raise AtlasError(f"{key} {name!r} is not a layer of {model.spec}; {hint} (run `atlas layers {model.spec}` for all)")


def layer_name_of(module: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``module`` (its class name when it is not a submodule)."""
    for name, sub in module.named_modules():
        if sub is layer and name:
            return name
    return type(layer).__name__


def format_layers(infos: list[LayerInfo], readings: dict[str, str] | None = None) -> str:
    """Aligned name / type / output-shape table for ``atlas layers``; ``readings``: a layout column by layer name."""
    rows = [("name", "type", "output shape", "layout" if readings is not None else "")]
    rows += [
        (i.name, i.type, " x ".join(map(str, i.shape)) if i.shape is not None else "-", (readings or {}).get(i.name, "")) for i in infos
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    return "\n".join(f"{n:<{widths[0]}}  {t:<{widths[1]}}  {s:<{widths[2]}}  {r}".rstrip() for n, t, s, r in rows)
