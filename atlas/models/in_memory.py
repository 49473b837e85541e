"""A model object handed to ``atlas.run``: its content-named spec, and the Source ``load_model`` builds from it.

The spec's hash covers the state dict (names, dtypes, shapes, bytes) and the source of every module class in the
model, so a changed weight or a changed ``forward`` makes a new spec, and with it new collect keys; the same object
(or an equal one) gives the same spec, so a re-run is cached.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import torch
from torch import nn

from atlas.in_memory import memory_spec, registered
from atlas.models.record import Source


def module_spec(module: nn.Module) -> str:
    """``memory:ClassName@DIGEST`` for this module as it is now."""
    return memory_spec(type(module).__name__, _module_parts(module))


def memory_source(spec: str) -> Source:
    """The registered module itself; preprocessing is inferred (timm's) or given by the run's ``model.*`` keys."""
    module = registered(spec, "model.spec")
    return Source(module, None, None, {"source": "python object"})


def _module_parts(module: nn.Module) -> Iterator[bytes]:
    classes = {type(sub) for sub in module.modules()}
    for cls in sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        yield f"{cls.__module__}.{cls.__qualname__}".encode()
        yield _class_code(cls)
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        yield f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode()
        yield flat.view(torch.uint8).numpy().tobytes()


def _class_code(cls: type) -> bytes:
    """The class's source; a class defined where no source is kept (an exec'd string) falls back to its pickled bytes."""
    try:
        return inspect.getsource(cls).encode()
    except (OSError, TypeError):
        import cloudpickle

        return bytes(cloudpickle.dumps(cls))
