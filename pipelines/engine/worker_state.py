"""State a process loads once and reuses: the model, on the run's device, and its view at the atlas layer.

The driver (``atlas run``'s checks, fidelity, the path stage, ``atlas classes``) and the workers' tasks both come
here, so a process that is both (``--scheduler sync``) loads the model once.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from atlas.config import ModelConfig
from atlas.dependency_warnings import silence_dependency_warnings
from atlas.errors import AtlasError
from atlas.in_memory import is_memory_spec, registered
from atlas.io import DISK_FULL
from atlas.models import LoadedModel, ModelView, load_model, model_files_identity
from atlas.models.folding import fold_batch_norms
from atlas.models.layout_reading import LayoutRequest, view_with_layout
from atlas.runtime import tune_allocator


def use_threads(threads: int) -> None:
    """Called by every task: right-size PyTorch's thread pool and malloc for this worker process."""
    tune_allocator()
    silence_dependency_warnings()
    quiet_user_errors()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass
class _Loaded:
    """A cached model and its views by layer and reading: a view lives exactly as long as the model it holds."""

    model: LoadedModel
    views: dict[tuple[str, LayoutRequest], ModelView] = field(default_factory=dict)
    folded: dict[tuple[str, LayoutRequest], ModelView] = field(default_factory=dict)


READING_KEYS = ("layout", "prefix_tokens", "output")  # how the layer is read: one model serves every reading


@lru_cache(maxsize=2)
def _model(model_json: str, source: str | None, device: str) -> _Loaded:
    """``model_json``: the model section without its layer, so two layers of one model share one copy; ``source``:
    the identity of the files or the object behind it, so a retrained model is loaded again, not served stale.

    The model moves to ``device`` once, here; collection, rendering and fidelity follow its weights. channels_last:
    1.3-1.6x faster convolutions on CPU, and cuDNN's NHWC kernels (tensor cores) on a GPU.
    """
    try:
        model = load_model(ModelConfig.model_validate(json.loads(model_json)))
    except AtlasError as err:  # raised on a worker, read on the driver: say which machine could not load it
        worker = _worker_address()
        if worker is None:
            raise
        raise AtlasError(f"on worker {worker}: {err}") from None
    model.module.to(device=torch.device(device), memory_format=torch.channels_last)
    return _Loaded(model)


def model_view(config: ModelConfig, device: str = "cpu") -> ModelView:
    """The model a config names, loaded once per process onto ``device``, seen at ``config.layer``.

    ``device``: the run's resolved device (``atlas.devices.resolve_device``), as a string: ``cpu``, ``cuda``, ``cuda:N``.
    """
    loaded, key = _loaded(config, device)
    if key not in loaded.views:
        loaded.views[key] = view_with_layout(loaded.model, *key)
    return loaded.views[key]


def folded_view(config: ModelConfig, device: str = "cpu") -> ModelView:
    """:func:`model_view` with its batch norms folded into their convolutions (``atlas.models.folding``), made once
    per process, for the tasks that only read the model through it: collection (1.5x faster on EfficientNet-Lite0)
    and rendering, which runs it up to the layer thousands of times (1.5x)."""
    loaded, key = _loaded(config, device)
    if key not in loaded.folded:
        loaded.folded[key] = fold_batch_norms(model_view(config, device))
    return loaded.folded[key]


def _loaded(config: ModelConfig, device: str) -> tuple[_Loaded, tuple[str, LayoutRequest]]:
    """The process's cached model for ``config`` and the key of its view at ``config.layer``."""
    loaded = _model(config.model_dump_json(exclude={"layer", "layers", *READING_KEYS}), _source_identity(config), device)
    return loaded, (config.layer, LayoutRequest(config.layout, config.prefix_tokens, config.output))


def _source_identity(config: ModelConfig) -> str | None:
    """What is behind the spec, beyond its text: for an in-memory model, the object registered now (an equal model
    passed again is that object, never an earlier one that may have changed since); else the spec's files, and the
    weights and classes files a config adds: rewriting any of them (``atlas train`` retrains in place) loads the
    model again in a long-lived process."""
    if is_memory_spec(config.spec):
        return f"object {id(registered(config.spec, 'model.spec'))}"  # the cache holds it, so the id stays its own
    extra = [model_files_identity(str(path)) for path in (config.weights, config.classes) if path is not None]
    parts = [part for part in (model_files_identity(config.spec), *extra) if part is not None]
    return "|".join(parts) or None


def warm_worker(config: ModelConfig, threads: int, device: str = "cpu") -> None:
    """A worker's first task: set its threads, load the model and fold its norms, while the driver is still listing
    images."""
    use_threads(threads)
    folded_view(config, device)


def _worker_address() -> str | None:
    """This Dask worker's address, or None in the driver's own process."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


class _UserErrors(logging.Filter):
    """Drops Dask's "Compute Failed" log (a traceback) for a task that failed with an error the user can fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed") or not isinstance(record.args, tuple) or len(record.args) < 4:
            return True
        text = str(record.args[3])  # repr() of the task's exception
        return not (text.startswith("AtlasError(") or any(os.strerror(code) in text for code in DISK_FULL))


def quiet_user_errors() -> None:
    """In a worker: an AtlasError or a full disk raised by a task is not logged by Dask with its traceback; the driver
    re-raises it (an OSError keeps its errno and file name) and prints it as one line. Bugs are still logged."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _UserErrors) for f in logger.filters):
        logger.addFilter(_UserErrors())
