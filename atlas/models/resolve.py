"""Turn a ``model`` config section into a :class:`LoadedModel`: the one sequence every spec form goes through.

The spec string is parsed by :mod:`atlas.models.specs` (the registry of forms),
weight files are loaded by :mod:`atlas.models.weights`, preprocessing is
inferred and overridden by :mod:`atlas.models.preprocessing`; what stays here is
the order of those steps and ``model.classes``, which only makes sense once the
model and its input size are known.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.in_memory import is_memory_spec
from atlas.models.capture import zeros_input
from atlas.models.in_memory import memory_source
from atlas.models.preprocessing import final_preprocessing
from atlas.models.record import LoadedModel, ModelFields, Preprocessing
from atlas.models.specs import form_for
from atlas.models.weights import load_weights


def load_model(config: ModelFields) -> LoadedModel:
    """Build the model a config names, load its weights, and attach preprocessing and class names; eval mode."""
    spec = config.spec.strip()
    source = memory_source(spec) if is_memory_spec(spec) else form_for(spec).load(spec, config)
    module = source.module
    extra = dict(source.extra)
    if config.weights is not None:
        load_weights(module, config.weights, spec)
        extra["weights"] = str(config.weights)
    module.eval()
    preprocessing = final_preprocessing(source.preprocessing, config, module, spec)
    labels = source.labels
    if config.classes is not None:
        labels = read_classes(config.classes)
        _check_label_count(labels, config.classes, module, preprocessing, spec)
        extra["classes"] = str(config.classes)
    return LoadedModel(module=module, preprocessing=preprocessing, labels=labels, spec=spec, extra=extra)


def read_classes(path: Path) -> list[str]:
    """Class names from a text file, one per line in output-index order."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise AtlasError(f"model.classes '{path}': cannot read it ({err.strerror})") from None
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise AtlasError(f"model.classes '{path}' is empty; give one class name per line")
    if "" in names:
        raise AtlasError(f"model.classes '{path}': line {names.index('') + 1} is empty; give one class name per line")
    return names


def _check_label_count(labels: list[str], path: Path, module: nn.Module, pre: Preprocessing, spec: str) -> None:
    """A classes file that does not match the outputs would label every cell wrongly: refuse it up front."""
    outputs = _output_dim(module, pre)
    if outputs is not None and outputs != len(labels):
        raise AtlasError(f"model.classes '{path}' has {len(labels)} names but {spec} outputs {outputs} classes")


def _output_dim(module: nn.Module, pre: Preprocessing) -> int | None:
    """Number of classes the model outputs: its ``num_classes`` or one dummy forward."""
    declared = getattr(module, "num_classes", None)
    if isinstance(declared, int):
        return declared
    x = zeros_input(module, pre.channels, pre.input_size)
    with torch.no_grad():
        out = module(x)
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None
