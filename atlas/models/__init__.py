"""Models: resolve a spec to a module plus its preprocessing and labels, and hook its layers."""

from atlas.models.layers import LayerCapture, LayerInfo, format_layers, list_layers, resolve_layer, run_to_layer
from atlas.models.record import LoadedModel, Preprocessing
from atlas.models.resolve import load_model
from atlas.models.weights import model_files_identity

__all__ = [
    "LayerCapture",
    "LayerInfo",
    "LoadedModel",
    "Preprocessing",
    "format_layers",
    "list_layers",
    "load_model",
    "model_files_identity",
    "resolve_layer",
    "run_to_layer",
]
