"""Weight files and pickle trust: what atlas loads from disk, and what it refuses to unpickle.

A state dict is loaded with ``weights_only=True`` (tensors only, no code runs);
a whole pickled model runs code from the file, so it is loaded only when the
user says ``model.trust_pickle: true``. Without trust the file is still opened
safely to tell the user what it holds (state dict, pickled model, not torch).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.models.card import DEFAULT_WEIGHTS, MODEL_CARD
from atlas.models.messages import first_line


def load_weights(module: nn.Module, path: Path, spec: str) -> None:
    """Load a state dict file strictly; checkpoint wrappers ('model'/'state_dict') and DataParallel 'module.' prefixes are unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AtlasError(f"model.weights '{path}': no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise AtlasError(
            f"model.weights '{path}' holds pickled objects, not a plain state dict; save it with torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise AtlasError(f"model.weights '{path}' is not a file saved with torch.save ({first_line(err)})") from None
    state = unwrap_checkpoint(state, path)
    check_state_dict(module, state, path, spec)
    module.load_state_dict(state, strict=True)


def unwrap_checkpoint(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """The bare state dict inside a training checkpoint, so users can point at the file they already have."""
    if isinstance(state, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AtlasError(f"model.weights '{path}' is not a state dict (a mapping of names to tensors)")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, spec: str) -> None:
    """Compare keys and shapes first so a mismatch is one line rather than torch's multi-line report."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k} file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)):
        if items:
            shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            problems.append(f"{len(items)} {what} ({shown})")
    if problems:
        raise AtlasError(f"model.weights '{path}' does not fit {spec}: {'; '.join(problems)}")


def load_pickled_model(path: Path, spec: str, trusted: bool) -> nn.Module:
    """A whole model saved with ``torch.save(model)``; unpickled only when the user trusts the file."""
    if not trusted:
        _refuse_untrusted(path, spec)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as err:
        raise AtlasError(
            f"model.spec {spec!r}: the model's class cannot be imported ({err}); make its module importable, "
            "or save a state dict and use package.module:factory with model.weights"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise AtlasError(f"model.spec {spec!r} is not a file saved with torch.save ({first_line(err)})") from None
    if isinstance(obj, Mapping):
        raise AtlasError(_state_dict_spec_message(spec))
    if not isinstance(obj, nn.Module):
        raise AtlasError(f"model.spec {spec!r} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _refuse_untrusted(path: Path, spec: str) -> NoReturn:
    """Always raises: explains why the file was not loaded, telling a state dict from a pickled model."""
    pickled = f"model.spec {spec!r} is a pickled model; loading it runs code from the file: set model.trust_pickle: true if you trust it"
    if not zipfile.is_zipfile(path):
        raise AtlasError(
            f"model.spec {spec!r} is not a file saved with torch.save (or uses an old format); "
            "if it is a pickled model you trust, set model.trust_pickle: true"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise AtlasError(pickled) from None
    except RuntimeError as err:
        raise AtlasError(f"model.spec {spec!r} is not a file saved with torch.save ({first_line(err)})") from None
    if isinstance(obj, Mapping):
        raise AtlasError(_state_dict_spec_message(spec))
    raise AtlasError(f"model.spec {spec!r} holds a {type(obj).__name__}, not a torch.nn.Module")


def _state_dict_spec_message(spec: str) -> str:
    return (
        f"model.spec {spec!r} holds a state dict, not a model: set model.spec to the package.module:factory "
        f"that builds the network and model.weights: {spec}"
    )


def model_files_identity(spec: str) -> str | None:
    """What changes when the files behind a file or folder spec change (for cache keys); None for other specs.

    Size and modification time, not a content hash: a weights file can be large, and
    retraining (``atlas train``) always rewrites it.
    """
    path = Path(spec.strip()).expanduser()
    files = [path / MODEL_CARD, path / DEFAULT_WEIGHTS] if path.is_dir() else [path] if path.is_file() else []
    parts = []
    for file in files:
        if file.is_file():
            stat = file.stat()
            parts.append(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts) or None
