"""The render loop's view of a layer: ``capture(inputs)`` returns the layer output, nothing after it runs.

A thin adapter over :class:`atlas.models.layers.LayerCapture` (thread-aware,
stops the forward pass at the layer), binding the model so the loop can call
it like a function.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn

from atlas.models import layers


class LayerCapture:
    """``with LayerCapture(model, layer) as capture: out = capture(inputs)``; ``stop=False`` runs the whole model."""

    def __init__(self, model: nn.Module, layer: nn.Module, stop: bool = True) -> None:
        self.model = model
        self._capture = layers.LayerCapture(layer, store=False, stop=stop)

    def __enter__(self) -> LayerCapture:
        self._capture.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        self._capture.__exit__(kind, error, traceback)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._capture.run(self.model, inputs)


def layer_output(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, stop: bool = True) -> torch.Tensor:
    """One-off: ``layer``'s output for ``inputs``."""
    with LayerCapture(model, layer, stop) as capture:
        return capture(inputs)


__all__ = ["LayerCapture", "layer_output"]
