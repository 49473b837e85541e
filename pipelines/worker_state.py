"""State a worker process loads once and reuses for every task: the model and its hooked layer."""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from atlas.config import ModelConfig
from atlas.models import LoadedModel, load_model, model_files_identity, resolve_layer
from atlas.runtime import tune_allocator


def use_threads(threads: int) -> None:
    """Called by every task: right-size PyTorch's thread pool and malloc for this worker process."""
    tune_allocator()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@lru_cache(maxsize=2)
def _model(model_json: str, files: str | None) -> tuple[LoadedModel, torch.nn.Module]:
    """``files``: the identity of a file or folder spec, so a retrained model is loaded again, not served stale."""
    model = load_model(ModelConfig.model_validate(json.loads(model_json)))
    model.module.to(memory_format=torch.channels_last)  # 1.3-1.6x faster convolutions on CPU
    return model, resolve_layer(model, json.loads(model_json)["layer"])


def model_and_layer(config: ModelConfig) -> tuple[LoadedModel, torch.nn.Module]:
    return _model(config.model_dump_json(), model_files_identity(config.spec))


def warm_worker(config: ModelConfig, threads: int) -> None:
    """A worker's first task: set its threads and load the model, while the driver is still listing images."""
    use_threads(threads)
    model_and_layer(config)
