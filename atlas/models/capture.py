"""Hook one layer: keep its output, replace it, or stop the forward pass right after it.

Layers are resolved to modules up front and hooked directly, so there is no
global name -> hook registry and a forward pass can stop right after the layer
it needs, costing only the part of the network before it. This is the one
capture mechanism: collection, attribution, rendering and the checks all use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch
from torch import nn

from atlas.errors import AtlasError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the duration (batch norm must not see a batch of icons as its statistics), then the mode
    it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
    - ``module``: the whole model, so the capture can be called like a function:
      ``with LayerCapture(layer, module=model, stop=True) as capture: out = capture(x)``.

    The hook only acts on forward passes made by the thread that entered the context, so
    threads sharing one model (Dask threads in a worker) do not see each other's captures.
    A layer called more than once per forward stores its last output; ``stop`` stops at the first.
    """

    def __init__(
        self,
        layer: nn.Module,
        *,
        module: nn.Module | None = None,
        store: bool = True,
        stop: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        self.layer = layer
        self.module = module
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

    def run(self, module: nn.Module, x: torch.Tensor) -> Any:
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
            raise AtlasError(f"layer {self.name} did not run in the forward pass; choose a layer the model uses at inference (model.layer)")
        return output

    def __call__(self, x: torch.Tensor) -> Any:
        """The layer's output for ``x``, through the ``module`` given at construction."""
        if self.module is None:
            raise RuntimeError("calling a LayerCapture needs the model: LayerCapture(layer, module=model)")
        return self.run(self.module, x)


def run_to_layer(module: nn.Module, layer: nn.Module, x: torch.Tensor, stop: bool = True) -> Any:
    """The output of ``layer`` for input ``x``; with ``stop`` nothing after it is computed (gradients flow if enabled)."""
    with LayerCapture(layer, store=False, stop=stop) as capture:
        output = capture.run(module, x)
    return output


def zeros_input(module: nn.Module, channels: int, size: int) -> torch.Tensor:
    """A batch of one blank image on the module's device, in its floating dtype: the input of every shape probe."""
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(1, channels, size, size, device=param.device if param is not None else None, dtype=dtype)


__all__ = ["LayerCapture", "run_to_layer", "zeros_input"]
