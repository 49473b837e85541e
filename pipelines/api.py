"""``atlas.run``: the whole of ``atlas run`` as one Python call, on a spec or on objects already in memory.

Every stage, the class atlases the config asks for, the file checks, the bundle lock and resume are the command's;
the command line (:mod:`atlas_pipelines.commands.cli`) builds these same arguments and calls :func:`run`, so there
is one code path. What Python adds: a model given as an ``nn.Module``, images as a ``Dataset`` or a list, class
names as a list, the caller's Dask client. In-memory objects are named by content (``memory:Class@digest``, see
:mod:`atlas.in_memory`), registered in this process and shipped to each worker once.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from torch import nn

from atlas.bundle import Bundle, open_bundle
from atlas.bundle.paths import VIEWER
from atlas.compare.reading import Comparison, open_comparison
from atlas.config import AtlasConfig, ExperimentConfig, check_files, check_model_files, load_config, packaged_default_config
from atlas.dependency_warnings import silence_dependency_warnings
from atlas.devices import resolve_device
from atlas.errors import AtlasError
from atlas.images.memory import as_dataset, dataset_spec
from atlas.in_memory import register
from atlas.models.in_memory import module_spec
from atlas.models.preprocessing import from_timm
from atlas_pipelines.commands.classes import build_classes
from atlas_pipelines.commands.run import run_atlas
from atlas_pipelines.engine.executor import LazyExecutor

PREPROCESSING_KEYS = ("input_size", "channels", "mean", "std")
_NEEDED = ("input_size", "mean", "std")  # channels can be read from the first convolution


def run(
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    settings: Mapping[str, Any] | Sequence[str] | None = None,
    model: str | nn.Module | None = None,
    layer: str | Sequence[str] | None = None,
    images: Any = None,
    classes: Sequence[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    client: Any = None,
    name: str | None = None,
    out: str | os.PathLike[str] | None = None,
    scheduler: str | None = None,
    until: str | None = None,
    dataset_key: str | None = None,
    log: Callable[[str], None] = print,
) -> Bundle:
    """Build (or resume) one atlas and return its bundle.

    ``config``: a YAML path, a config as a dict, or None for the packaged default. ``settings``: overrides with the
    keys of ``--set``, as a dict of values or as ``"KEY=VALUE"`` strings read as YAML. ``model``: a spec string or an
    ``nn.Module`` (used as it is in this process, so it is left in eval mode; ``preprocessing`` gives its
    ``input_size``, ``channels``, ``mean`` and ``std`` unless timm knows them). ``images``: a spec string, a
    ``Dataset`` (items an image or ``(image, label)``), or a list of paths or PIL images; ``dataset_key`` joins its
    cache key. ``layer``: a layer name, or several for one atlas per layer of the same rows (``model.layers``; the
    first is the main bundle, the others are under its ``layers/``: :meth:`atlas.bundle.Bundle.layers`). ``classes``: the model's class names. ``client``: a ``distributed.Client`` to run on, used as it is.
    ``scheduler``, ``until``: as ``--scheduler`` and ``--until``. A user error raises ``AtlasError``, one line.
    """
    silence_dependency_warnings()
    objects: dict[str, Any] = {}
    values = list(_plain_values(model, layer, name, out, scheduler, preprocessing, images))
    if isinstance(model, nn.Module):
        spec = module_spec(model)
        objects[spec] = model
        values.append(("model.spec", spec))
    loaded = _with_images(_load(config, settings, values), images, dataset_key, objects)
    if isinstance(model, nn.Module):
        _check_preprocessing(model, loaded)
    check_files(loaded)  # paths that do not exist or cannot be read or written: one line before any work
    for spec, value in objects.items():
        register(spec, value)  # this process uses the objects themselves (--scheduler sync, the driver's checks)
    labels = _class_list(classes)
    with ExitStack() as stack:
        executor = LazyExecutor(loaded.scheduler, stack, log, resolve_device(loaded.device), client, objects)
        run_dir = run_atlas(loaded, until=until, log=log, executor=executor, labels=labels)
        if until is None and (loaded.classes.classes or loaded.classes.pairs):
            build_classes(run_dir, log=log, executor=executor)
    if (run_dir / VIEWER).exists():
        log(f"atlas: bundle in {run_dir}; view it with: atlas serve {shlex.quote(str(run_dir))}")
    return open_bundle(run_dir)


def compare_models(
    models: Mapping[str, str | nn.Module | Mapping[str, Any]],
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    settings: Mapping[str, Any] | Sequence[str] | None = None,
    images: Any = None,
    client: Any = None,
    name: str | None = None,
    out: str | os.PathLike[str] | None = None,
    scheduler: str | None = None,
    dataset_key: str | None = None,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Compare ``models`` on the same images (``atlas compare`` with ``compare.models``) and return the comparison.

    ``models``: a name -> ``"SPEC:LAYER"`` (as ``--model``), or a model section as a dict (``spec``, ``layer``,
    ``layers``, ``weights``, ...) whose ``spec`` may be an ``nn.Module``: then give its ``input_size``, ``channels``,
    ``mean`` and ``std`` in the section unless timm built it. ``config``: an experiment YAML or dict (None: defaults,
    named ``compare``); ``images``, ``client``, ``name``, ``out``, ``scheduler``, ``dataset_key``: as for :func:`run`.
    """
    from atlas_pipelines.commands.compare import run_compare
    from atlas_pipelines.commands.compare_models import model_option

    silence_dependency_warnings()
    if not isinstance(models, Mapping) or not models:
        raise AtlasError("models: give a dict of name -> 'SPEC:LAYER' or a model section (a dict; its spec may be an nn.Module)")
    objects: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in models.items():
        if isinstance(value, str):
            _, section = model_option(f"{key}={value}")
            sections[key] = dict(section)
        elif isinstance(value, Mapping):
            sections[key] = dict(value)
        else:
            raise AtlasError(f"models[{key!r}]: a {type(value).__name__}; give 'SPEC:LAYER' or a model section dict")
        module = sections[key].get("spec")
        if isinstance(module, nn.Module):
            _check_section_preprocessing(key, module, sections[key])
            spec = module_spec(module)
            objects[spec] = module
            sections[key]["spec"] = spec
    values: list[tuple[str, Any]] = [("compare.models", sections)]
    values += list(
        _plain_values(None, None, name if name is not None else (None if config is not None else "compare"), out, scheduler, None, images)
    )
    loaded: ExperimentConfig = _with_images(
        _load(config if config is not None else {}, settings, values, ExperimentConfig), images, dataset_key, objects
    )
    check_files(loaded)
    for section in (loaded.compare.models or {}).values():
        check_model_files(section)
    for spec, value in objects.items():
        register(spec, value)
    with ExitStack() as stack:
        executor = LazyExecutor(loaded.scheduler, stack, log, resolve_device(loaded.device), client, objects)
        root = run_compare(loaded, log, executor)
    return open_comparison(root)


def _check_section_preprocessing(key: str, model: nn.Module, section: Mapping[str, Any]) -> None:
    """An nn.Module's input size and normalisation, asked for in its section unless timm knows them."""
    missing = _missing_preprocessing(model, section)
    if missing:
        raise AtlasError(
            f"models[{key!r}]: atlas cannot read {', '.join(missing)} from a {type(model).__name__}; add them to its section, "
            "e.g. {'spec': model, 'layer': ..., 'input_size': 28, 'channels': 1, 'mean': [0.5], 'std': [0.5]}"
        )


def _with_images(loaded: Any, images: Any, dataset_key: str | None, objects: dict[str, Any]) -> Any:
    """``loaded`` reading ``images`` when they are objects (a Dataset, a list): named by content and added to
    ``objects``; a spec string is already in the config."""
    if images is None or _is_spec(images):
        return loaded
    dataset = as_dataset(images, loaded.images.max_pixels)
    spec = dataset_spec(dataset, dataset_key)
    objects[spec] = dataset
    return loaded.model_copy(update={"images": loaded.images.model_copy(update={"source": spec})})


def _is_spec(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _plain_values(
    model: Any, layer: Any, name: Any, out: Any, scheduler: Any, preprocessing: Mapping[str, Any] | None, images: Any
) -> Iterator[tuple[str, Any]]:
    """The arguments that are config values, typed as given (like command-line flags: never read as YAML)."""
    if model is not None and not isinstance(model, nn.Module):
        if not isinstance(model, str):
            raise AtlasError(f"model: a {type(model).__name__}; give a spec string (see `atlas layers`) or a torch nn.Module")
        yield "model.spec", model
    yield from _layer_values(layer)
    for key, value in (("output.name", name), ("scheduler.address", scheduler)):
        if value is not None:
            yield key, value
    if out is not None:
        yield "output.dir", os.fspath(out)
    if images is not None and _is_spec(images):
        yield "images.source", os.fspath(images)
    unknown = sorted(set(preprocessing or {}) - set(PREPROCESSING_KEYS))
    if unknown:
        raise AtlasError(f"preprocessing: unknown key {unknown[0]!r}; give {', '.join(PREPROCESSING_KEYS)}")
    for key, value in (preprocessing or {}).items():
        yield f"model.{key}", value


def _layer_values(layer: Any) -> Iterator[tuple[str, Any]]:
    """One name sets ``model.layer`` as it always did; several set ``model.layers`` too, the first the main one."""
    if layer is None:
        return
    names = [layer] if isinstance(layer, str) else list(layer)
    if not names or not all(isinstance(name, str) for name in names):
        raise AtlasError(f"layer: {layer!r}; give a layer name, or a list of them for one atlas per layer (see `atlas layers`)")
    yield "model.layer", names[0]
    if len(names) > 1:
        yield "model.layers", names


def _load(
    config: Any, settings: Mapping[str, Any] | Sequence[str] | None, values: list[tuple[str, Any]], schema: type[AtlasConfig] = AtlasConfig
) -> Any:
    """File (or dict, or the packaged default), then ``settings``, then the arguments; validated once."""
    if isinstance(settings, str):
        settings = [settings]
    assignments: list[str] = []
    typed: list[tuple[str, Any]] = []
    if isinstance(settings, Mapping):
        for key, value in settings.items():
            if not isinstance(key, str):
                raise AtlasError(f"settings: key {key!r} is not a string; use dotted keys such as 'collect.n_images'")
            typed.append((key, value))
    elif settings is not None:
        assignments = [str(text) for text in settings]
    if isinstance(config, Mapping):
        return load_config(None, assignments, schema, values=[*_flatten(config), *typed, *values])
    if config is not None and not _is_spec(config):
        raise AtlasError(f"config: a {type(config).__name__}; give a YAML path, a dict or None (the packaged default)")
    path = Path(config) if config is not None else packaged_default_config()
    return load_config(path, assignments, schema, values=[*typed, *values])


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """A config dict as dotted keys, so a dict config goes through the same assignment checks as a file and --set."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{dotted}.")
        else:
            yield dotted, dict(value) if isinstance(value, Mapping) else value


def _check_preprocessing(model: nn.Module, config: AtlasConfig) -> None:
    """An nn.Module's input size and normalisation cannot be read from it unless timm built it: ask, in one line."""
    missing = _missing_preprocessing(model, config.model.model_dump())
    if missing:
        raise AtlasError(
            f"preprocessing: atlas cannot read {', '.join(missing)} from a {type(model).__name__}; pass "
            "preprocessing={'input_size': 28, 'channels': 1, 'mean': [0.5], 'std': [0.5]} with your model's values"
        )


def _missing_preprocessing(model: nn.Module, given: Mapping[str, Any]) -> list[str]:
    """The preprocessing keys a module needs and ``given`` lacks: none for a timm model, which carries its own."""
    if from_timm(model) is not None:
        return []
    return [key for key in _NEEDED if given.get(key) is None]


def _class_list(classes: Sequence[str] | None) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(name, str) for name in classes):
        raise AtlasError("classes: give a list of class names, one per model output, in output order")
    return list(classes)
