"""Every form a ``model.spec`` string can take, in one ordered registry; the only place spec strings are parsed.

Adding a form means adding one ``@spec_form(...)`` loader below: dispatch
(:func:`form_for`), the error for an unknown spec and :data:`SPEC_HELP` (the
CLI's ``--model`` help) all read :data:`SPEC_FORMS`. The first form that
recognises a spec loads it, so order matters: exact names and prefixes first,
then paths (a folder before a file), and ``package.module:factory`` last, since
its pattern would also match a misspelt prefix form.

A loader returns a :class:`Source`; ``load_model`` then applies ``model.weights``,
the preprocessing overrides and ``model.classes`` the same way for every form.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from atlas.errors import AtlasError
from atlas.models import efficientnet_lite0
from atlas.models.card import MODEL_CARD, read_card
from atlas.models.libraries import load_timm, load_torchvision
from atlas.models.messages import closest
from atlas.models.record import ModelFields, Source
from atlas.models.weights import load_pickled_model, load_weights

Loader = Callable[[str, ModelFields], Source]
Recogniser = Callable[[str], bool]


@dataclass(frozen=True)
class SpecForm:
    """One spec form: how it is written, how it is recognised, and how it is loaded."""

    name: str  # a short id, e.g. "timm"
    syntax: str  # terse, for --model's help: "timm:NAME"
    help: str  # one line, for the unknown-spec error: "timm:NAME (a timm model)"
    recognise: Recogniser  # takes the stripped spec
    load: Loader
    names: tuple[str, ...] = ()  # exact specs this form accepts, suggested when a spec is misspelt


SPEC_FORMS: list[SpecForm] = []


def spec_form(name: str, syntax: str, help: str, recognise: Recogniser, names: tuple[str, ...] = ()) -> Callable[[Loader], Loader]:
    """Register the decorated loader as the next spec form (registration order is recognition order)."""

    def register(load: Loader) -> Loader:
        if any(form.name == name for form in SPEC_FORMS):
            raise ValueError(f"spec form {name!r} is registered twice")
        SPEC_FORMS.append(SpecForm(name=name, syntax=syntax, help=help, recognise=recognise, load=load, names=names))
        return load

    return register


def form_for(spec: str) -> SpecForm:
    """The first registered form that recognises ``spec``; an unknown spec is one line listing every form."""
    for form in SPEC_FORMS:
        if form.recognise(spec):
            return form
    hint = closest(spec, [name for form in SPEC_FORMS for name in form.names])
    raise AtlasError(f"model.spec {spec!r} is not a model spec{hint}; use {forms_sentence()}")


def forms_sentence() -> str:
    """Every form's help as one English list: 'a, b, or c'."""
    helps = [form.help for form in SPEC_FORMS]
    return helps[0] if len(helps) == 1 else f"{', '.join(helps[:-1])}, or {helps[-1]}"


def spec_help() -> str:
    """Every form's syntax, comma-separated, in recognition order."""
    return ", ".join(form.syntax for form in SPEC_FORMS)


def _pretrained(config: ModelFields) -> bool:
    """With a weights file the architecture is built untrained: no download, the file supplies the weights."""
    return config.pretrained and config.weights is None


def _path(spec: str) -> Path:
    return Path(spec).expanduser()


_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_FACTORY = re.compile(rf"^({_DOTTED}):({_DOTTED})$")
_MODEL_FILE_SUFFIXES = {".pt", ".pth", ".pkl", ".ckpt", ".bin", ".pt2"}


def _looks_like_file(spec: str) -> bool:
    """An existing file, or something written like a path (so a typo says 'no such file', not 'not a spec')."""
    path = _path(spec)
    return path.is_file() or path.suffix.lower() in _MODEL_FILE_SUFFIXES or "/" in spec or "\\" in spec


# --- the forms, in recognition order ---------------------------------------------------------------


@spec_form(
    "builtin",
    syntax=efficientnet_lite0.SPEC,
    help=f"{efficientnet_lite0.SPEC} (built in, works offline)",
    recognise=lambda spec: spec.lower() == efficientnet_lite0.SPEC,
    names=(efficientnet_lite0.SPEC,),
)
def _load_builtin(spec: str, config: ModelFields) -> Source:
    loaded = efficientnet_lite0.load(pretrained=_pretrained(config))
    return Source(loaded.module, loaded.preprocessing, loaded.labels, loaded.extra)


@spec_form(
    "torchvision",
    syntax="torchvision:NAME",
    help="torchvision:NAME (a torchvision classifier)",
    recognise=lambda spec: spec.startswith("torchvision:"),
)
def _load_torchvision(spec: str, config: ModelFields) -> Source:
    return load_torchvision(spec, spec.partition(":")[2], _pretrained(config))


@spec_form(
    "timm",
    syntax="timm:NAME",
    help="timm:NAME (a timm model)",
    recognise=lambda spec: spec.startswith("timm:"),
)
def _load_timm(spec: str, config: ModelFields) -> Source:
    return load_timm(spec, spec.partition(":")[2], _pretrained(config))


@spec_form(
    "variant-folder",
    syntax="a variant folder",
    help="a variant folder from atlas train",
    recognise=lambda spec: _path(spec).is_dir(),
)
def _load_variant_folder(spec: str, config: ModelFields) -> Source:
    """A folder written by ``atlas train``: ``model.json`` (architecture, preprocessing, classes) + its weights file."""
    path = _path(spec)
    card_path = path / MODEL_CARD
    if not card_path.is_file():
        raise AtlasError(f"model.spec {spec!r} is a folder without {MODEL_CARD}; point it at a variant folder written by `atlas train`")
    card = read_card(card_path, spec)
    module = card.build()
    if config.weights is None:
        load_weights(module, path / card.weights, spec)
    labels = list(card.classes) if card.classes else None
    extra = {"source": "atlas train", "variant": json.dumps(card.kwargs, sort_keys=True)}
    return Source(module, card.preprocessing.to_preprocessing(), labels, extra)


@spec_form(
    "model-file",
    syntax="FILE.pt",
    help="a file saved with torch.save(model)",
    recognise=_looks_like_file,
)
def _load_model_file(spec: str, config: ModelFields) -> Source:
    """A whole pickled model; unpickling runs code from the file, so it needs ``model.trust_pickle: true``."""
    path = _path(spec)
    if not path.is_file():
        raise AtlasError(f"model.spec {spec!r}: no such file")
    return Source(load_pickled_model(path, spec, config.trust_pickle), None, None, {"source": "pickle"})


@spec_form(
    "factory",
    syntax="pkg.mod:factory",
    help="package.module:factory (a callable taking no arguments)",
    recognise=lambda spec: _FACTORY.match(spec) is not None,
)
def _load_factory(spec: str, config: ModelFields) -> Source:
    match = _FACTORY.match(spec)
    assert match is not None  # recognised above
    return Source(_call_factory(spec, match.group(1), match.group(2)), None, None, {"source": "factory"})


def _call_factory(spec: str, module_name: str, attribute: str) -> nn.Module:
    """Import ``module_name``, walk the dotted ``attribute`` and call it with no arguments, each failure one line."""
    try:
        owner: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise AtlasError(
                f"model.spec {spec!r}: no module named {missing!r}; install it, add its folder to PYTHONPATH,"
                " or on a cluster list its file in scheduler.upload"
            ) from None
        raise AtlasError(f"model.spec {spec!r}: importing {module_name} failed: {err}") from None
    where = module_name
    for part in attribute.split("."):
        if not hasattr(owner, part):
            public = [n for n in dir(owner) if not n.startswith("_")]
            raise AtlasError(f"model.spec {spec!r}: {where} has no attribute {part!r}{closest(part, public)}")
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


SPEC_HELP = spec_help()  # "efficientnet-lite0, torchvision:NAME, ...": the CLI's --model help
