"""Models: resolve a spec to a module plus its preprocessing and labels, and look at one of its layers.

Nothing here imports the configuration: ``load_model`` takes a :class:`ModelRequest` (or anything with its fields,
such as the config's ``ModelConfig``). The view, the capture and the layer listing import no model zoo;
``load_model`` and ``model_files_identity`` (which do) are imported on first use, so ``import atlas.featurevis``
stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from atlas.models.capture import LayerCapture, run_to_layer
from atlas.models.layers import LayerInfo, format_layers, list_layers, resolve_layer
from atlas.models.layout_reading import LayoutRequest, view_with_layout
from atlas.models.layouts import ChannelsLast, Element, Tokens
from atlas.models.record import LoadedModel, ModelFields, ModelRequest, Preprocessing
from atlas.models.view import ChannelsFirst, LayerLayout, ModelView

if TYPE_CHECKING:
    from atlas.models.resolve import load_model
    from atlas.models.weights import model_files_identity

_LAZY = {"load_model": "atlas.models.resolve", "model_files_identity": "atlas.models.weights"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atlas.models' has no attribute {name!r}")


__all__ = [
    "ChannelsFirst",
    "ChannelsLast",
    "Element",
    "LayerCapture",
    "LayerInfo",
    "LayerLayout",
    "LayoutRequest",
    "LoadedModel",
    "ModelFields",
    "ModelRequest",
    "ModelView",
    "Preprocessing",
    "Tokens",
    "format_layers",
    "list_layers",
    "load_model",
    "model_files_identity",
    "resolve_layer",
    "run_to_layer",
    "view_with_layout",
]
