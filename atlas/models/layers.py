"""Layers of a loaded model: list them with output shapes, resolve a name once, and capture (or cut at) one layer.

Layers are resolved to modules up front and hooked directly, so there is no
global name -> hook registry and a forward pass can stop right after the layer
it needs, costing only the part of the network before it.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.models.record import LoadedModel


@dataclass(frozen=True)
class LayerInfo:
    """One named submodule: its dotted name, class name and output shape without the batch (None: did not run)."""

    name: str
    type: str
    shape: tuple[int, ...] | None


def _dummy_input(module: nn.Module, channels: int, size: int) -> torch.Tensor:
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(1, channels, size, size, device=param.device if param is not None else None, dtype=dtype)


def list_layers(model: LoadedModel, input_size: int | None = None) -> list[LayerInfo]:
    """Every named submodule in registration order, with its output shape from one dummy forward (batch 1, no grad).

    Modules whose output is not a tensor are left out; modules that did not run get ``shape=None``.
    """
    module = model.module
    size = input_size or model.preprocessing.input_size
    shapes: dict[str, tuple[int, ...] | None] = {}
    non_tensor: set[str] = set()

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if name in shapes or name in non_tensor:
                return  # a module called twice keeps its first output
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape[1:])
            else:
                non_tensor.add(name)

        return hook

    named = [(name, sub) for name, sub in module.named_modules() if name]
    handles = [sub.register_forward_hook(hook_for(name)) for name, sub in named]
    x = _dummy_input(module, model.preprocessing.channels, size)
    try:
        with torch.no_grad():
            module(x)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AtlasError(
            f"a forward pass of {model.spec} at {model.preprocessing.channels}x{size}x{size} failed ({first}); "
            "check model.input_size and model.channels"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return [LayerInfo(name=name, type=type(sub).__name__, shape=shapes.get(name)) for name, sub in named if name not in non_tensor]


def resolve_layer(model: LoadedModel, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name is a one-line error listing the closest real names."""
    modules = dict(model.module.named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    closest = difflib.get_close_matches(name, names, n=6, cutoff=0.6)
    if closest:
        hint = f"closest: {', '.join(closest)}"
    else:
        hint = f"top-level layers: {', '.join(n for n, _ in model.module.named_children())}"
    raise AtlasError(f"model.layer {name!r} is not a layer of {model.spec}; {hint} (run `atlas layers {model.spec}` for all)")


class _StopForward(Exception):
    """Raised by a stopping hook to abandon the rest of the forward pass; carries the layer's output."""

    def __init__(self, capture: LayerCapture, output: Any) -> None:
        super().__init__("forward pass stopped at the captured layer")
        self.capture = capture
        self.output = output


class LayerCapture:
    """Context manager hooking one layer: keep its output, optionally replace it, optionally stop right after it.

    - ``store``: keep the (transformed) output in ``self.output``.
    - ``stop``: end the forward pass once the layer has run, so truncated passes cost only
      the network up to the layer. Call :meth:`run` (or let the ``with`` block end on the
      forward call) to swallow the stop.
    - ``transform``: applied to the output; its return value is what the rest of the network
      sees and what is stored (used to inject forward-AD dual tensors).

    The hook only acts on forward passes made by the thread that entered the context, so
    threads sharing one model (Dask threads in a worker) do not see each other's captures.
    A layer called more than once per forward stores its last output; ``stop`` stops at the first.
    """

    def __init__(
        self,
        layer: nn.Module,
        *,
        store: bool = True,
        stop: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        self.layer = layer
        self.store = store
        self.stop = stop
        self.transform = transform
        self.name = name or type(layer).__name__
        self.output: torch.Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._thread: int | None = None
        self._last: Any = None

    def __enter__(self) -> LayerCapture:
        if self._handle is not None:
            raise RuntimeError("LayerCapture is already active; use a new one for nested captures")
        self.output = None
        self._thread = threading.get_ident()
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return isinstance(exc, _StopForward) and exc.capture is self

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if threading.get_ident() != self._thread:
            return None
        if self.transform is not None:
            output = self.transform(output)
        self._last = output
        if self.store:
            self.output = output
        if self.stop:
            raise _StopForward(self, output)
        return output if self.transform is not None else None

    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Forward ``x`` through ``module`` (inside this context) and return the layer's output."""
        if self._handle is None:
            raise RuntimeError("LayerCapture.run needs an active capture: use it inside `with LayerCapture(...)`")
        self._last = None
        try:
            module(x)
        except _StopForward as stopped:
            if stopped.capture is not self:
                raise
        output, self._last = self._last, None
        if output is None:
            raise AtlasError(f"layer {self.name} did not run in the forward pass; choose a layer the model uses at inference")
        return output


def run_to_layer(module: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` for input ``x``, computing nothing after it (gradients flow if enabled)."""
    with LayerCapture(layer, store=False, stop=True) as capture:
        output = capture.run(module, x)
    return output


def format_layers(infos: list[LayerInfo]) -> str:
    """Aligned name / type / output-shape table for ``atlas layers``."""
    rows = [("name", "type", "output shape")]
    rows += [(i.name, i.type, " x ".join(map(str, i.shape)) if i.shape is not None else "-") for i in infos]
    widths = [max(len(row[col]) for row in rows) for col in range(2)]
    return "\n".join(f"{n:<{widths[0]}}  {t:<{widths[1]}}  {s}".rstrip() for n, t, s in rows)
