"""Config fuzzing (issue 13, item 1): hostile configs and ``--set`` values against every command.

Hypothesis builds configs from the schema itself (``atlas.config``): a few valid settings, then at least one fault
each — a wrong type, a number out of range or not finite, an unknown key at any depth, an empty or huge list, unicode
where a name or number belongs, a path that does not exist or cannot be read or written, sizes that would exhaust
memory or disk, preprocessing that does not fit the model — delivered as a YAML file or as ``--set`` values to
``atlas run``, ``atlas layers``, ``atlas train``, ``atlas compare`` and ``atlas classes``. Every case must exit 2 with
exactly one stderr line that names a faulty key and says what to give instead, with no traceback, and must leave
every file of an existing bundle as it was (bytes and mtime). A case that gets past validation would reach the
bundle lock or the training data: those are replaced by a tripwire, so such a case fails the test instead of
starting a run. ``pytest -s`` prints the counts; ``-m faults`` runs many more cases.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import stat
import subprocess
import sys
import time
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import atlas.models
import atlas_pipelines.commands.classes
import atlas_pipelines.commands.run
import atlas_pipelines.commands.train
from atlas.config import (
    MAX_CANVAS,
    MAX_SHARD_ROWS,
    UMAP_METRICS,
    AtlasConfig,
    ExperimentConfig,
    load_config,
)
from atlas_pipelines.commands.cli import main

REPO = Path(__file__).resolve().parents[1]
ROOT = os.geteuid() == 0  # root reads and writes through any permission bits: chmod cases need another user

# A small real bundle (EfficientNet-Lite0 on 12 built-in photos, one 2 x 2 grid) that the fuzz cases point at.
BUNDLE_SETTINGS = [
    "--set", "collect.n_images=12",
    "--set", "model.input_size=64",
    "--set", "collect.positions_per_image=2",
    "--set", "collect.shard_size=6",
    "--set", "layout.fit_sample=24",
    "--set", "layout.n_neighbors=4",
    "--set", "grid.sizes=[2]",
    "--set", "grid.min_count=1",
    "--set", "render.steps=2",
    "--set", "render.icon_size=16",
    "--set", "tiles.examples_per_cell=1",
]  # fmt: skip
BUNDLE_NAME = "fuzzed"
# Words in every message that tells the user what to do instead (the fix), beside the key it names.
FIX_WORDS = (
    "should", "expected", "give", "valid keys", "use ", "remove", "lower", "choose", "must", "at most",
    "did you mean", "see the", "is called", "closest:", "run `atlas",
)  # fmt: skip

# Cases per command in the default suite (about 1,400 in all, ~35 s on 2 cores) and under -m faults (five times as many).
DEFAULT_EXAMPLES = {"run": 800, "layers": 160, "experiment": 300, "classes": 80, "model": 30}
FAULTS_EXAMPLES = {name: count * 5 for name, count in DEFAULT_EXAMPLES.items()}


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run: a failure is reproducible, a figure is stable
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


# --- the schema, read from atlas.config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One config key as the fuzzer sees it: its kind and whatever bounds the schema gives."""

    key: str
    kind: str  # bool, int, float, str, path, literal, class_name, tuple, pair, section, mapping
    optional: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    max_len: int | None = None
    choices: tuple[Any, ...] = ()  # Literal values (an int key's 'all' / 'auto' too)
    item: Leaf | None = None  # a tuple's items


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for m in metadata:
        for inner in getattr(m, "metadata", None) or [m]:  # a FieldInfo inside Annotated carries its own list
            if isinstance(inner, annotated_types.Ge):
                found["ge"] = inner.ge
            elif isinstance(inner, annotated_types.Gt):
                found["gt"] = inner.gt
            elif isinstance(inner, annotated_types.Le):
                found["le"] = inner.le
            elif isinstance(inner, annotated_types.MaxLen):
                found["max_len"] = inner.max_length
    return found


def describe(key: str, annotation: Any, metadata: list[Any]) -> Leaf:
    """The Leaf for a pydantic annotation (unions with None and Literals, Annotated bounds, tuples, sections)."""
    bounds = _bounds(metadata)
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        choices = tuple(v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a))
        rest = [a for a in args if typing.get_origin(a) is not Literal]
        if not rest:
            return Leaf(key, "literal", optional, choices=choices, **bounds)
        if len(rest) == 2 and set(rest) == {str, int}:
            return Leaf(key, "class_name", optional)
        inner = describe(key, rest[0], metadata)
        return Leaf(key, inner.kind, optional, inner.ge, inner.gt, inner.le, inner.max_len, choices, inner.item)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return describe(key, base, [*metadata, *extra])
    if origin is Literal:
        return Leaf(key, "literal", choices=typing.get_args(annotation))
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return Leaf(key, "tuple", item=describe(key, args[0], []), max_len=bounds.get("max_len"))
        return Leaf(key, "pair", item=describe(key, args[0], []))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return Leaf(key, "section")
    if origin is dict:  # compare.models: a name -> a model section
        return Leaf(key, "mapping")
    kinds = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}
    return Leaf(key, kinds[annotation], **bounds)


def leaves(schema: type[BaseModel], prefix: str = "") -> dict[str, Leaf]:
    found: dict[str, Leaf] = {}
    for name, info in schema.model_fields.items():
        key = f"{prefix}{name}"
        leaf = describe(key, info.annotation, list(info.metadata))
        found[key] = leaf
        if leaf.kind == "section":
            found.update(leaves(section_type(info.annotation), f"{key}."))
    return found


def section_type(annotation: Any) -> type[BaseModel]:
    """A section's class, also for an optional one (``dictionary: DictionaryConfig | None``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel), annotation
    return annotation


ATLAS_LEAVES = leaves(AtlasConfig)
EXPERIMENT_LEAVES = leaves(ExperimentConfig)
SECTIONS = [""] + [k for k, leaf in EXPERIMENT_LEAVES.items() if leaf.kind == "section"]


def section_fields(schema: type[BaseModel], section: str) -> set[str]:
    current: Any = schema
    for part in filter(None, section.split(".")):
        current = section_type(current.model_fields[part].annotation)
    return set(current.model_fields)


# --- faults ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    key: str  # the dotted key set (a section, a leaf, or a key under either)
    value: Any
    names: tuple[str, ...]  # the message must contain one of these
    kind: str  # what sort of fault, for the counts
    also: tuple[tuple[str, Any], ...] = ()  # other keys a fault across keys sets with it
    raw: bool = False  # value is the text after --set KEY= as typed, not read through YAML first (always a --set)


BOOL_WORDS = {"0", "1", "off", "on", "f", "t", "n", "y", "no", "yes", "false", "true"}
SPECIAL_WORDS = {"all", "auto", "inf", "infinity", "nan", "null", "none", "local", "sync", "cpu", "cuda"} | set(UMAP_METRICS)
# Letters from every script (never digits: "12" is a fine integer), and the odd symbol and accent.
WORDS = st.text(alphabet=st.characters(categories=["Lu", "Ll", "Lo", "Mn", "So"]), min_size=1, max_size=16).filter(
    lambda w: w.strip().lower() not in BOOL_WORDS | SPECIAL_WORDS and w.strip() == w and w.isprintable()
)
NAMES = st.text(alphabet=st.characters(categories=["Lu", "Ll", "Lo", "Nd"], include_characters="_-"), min_size=1, max_size=20).filter(
    str.isprintable
)
# Text after --set KEY= that is not clean YAML: unclosed, too deep, self-referencing, a code tag, not UTF-8.
RAW_TEXT = [
    "[1, 2", "{a", "[" * 1000, "{a: " * 1000, "&a [*a]", "!!python/object/apply:os.system [echo]", "1e400", "0x", "=",
    "\udcff\udcfe", "--", "[1,,2]", "{a: 1, a: 2}", "? [1]\n: 2",
]  # fmt: skip
HUGE = [10**8, 10**9, 10**12, 10**18, 10**30, 10**400]
NOT_FINITE = [math.nan, math.inf, -math.inf]
DATE = datetime.date(2024, 1, 1)
CONTAINERS = st.one_of(st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(NAMES, st.integers(), min_size=1, max_size=2))


def out_of_range(leaf: Leaf) -> list[st.SearchStrategy[Any]]:
    floaty = leaf.kind == "float"
    found: list[st.SearchStrategy[Any]] = []
    if leaf.ge is not None:
        below = st.floats(min_value=-1e300, max_value=leaf.ge, exclude_max=True) if floaty else st.integers(-(10**12), int(leaf.ge) - 1)
        found.append(below)
    if leaf.gt is not None:
        found.append(st.floats(min_value=-1e300, max_value=leaf.gt) if floaty else st.integers(-(10**12), int(leaf.gt)))
    if leaf.le is not None:
        above = st.floats(min_value=leaf.le, max_value=1e300, exclude_min=True) if floaty else st.integers(int(leaf.le) + 1, 10**13)
        found.append(above)
        found.append(st.sampled_from([h for h in HUGE if h > leaf.le] or [10**400]))
    return found


def wrong_value(leaf: Leaf) -> st.SearchStrategy[Any] | None:
    """Values of the wrong type or out of range for ``leaf``; None where any value of the right type is accepted."""
    none = [st.none()] if not leaf.optional else []
    if leaf.kind == "int":
        wrong = [
            WORDS.filter(lambda w: w not in leaf.choices),
            st.floats(allow_nan=False).filter(lambda f: f != int(f) if math.isfinite(f) else True),
        ]
        return st.one_of(*wrong, st.sampled_from(NOT_FINITE), st.booleans(), CONTAINERS, st.just(DATE), *none, *out_of_range(leaf))
    if leaf.kind == "float":
        return st.one_of(WORDS, st.sampled_from(NOT_FINITE), st.booleans(), CONTAINERS, st.just(DATE), *none, *out_of_range(leaf))
    if leaf.kind == "bool":
        return st.one_of(
            st.integers().filter(lambda i: i not in (0, 1)), st.floats().filter(lambda f: f not in (0.0, 1.0)), WORDS, CONTAINERS, *none
        )
    if leaf.kind in ("str", "path", "class_name"):
        numbers = (
            st.one_of(st.floats().filter(lambda f: not math.isfinite(f) or f != int(f)), st.booleans())  # 3.0 is class 3
            if leaf.kind == "class_name"
            else st.one_of(st.integers(), st.floats(), st.booleans())
        )
        return st.one_of(numbers, CONTAINERS, st.just(DATE), *none)
    if leaf.kind == "literal":
        strays = st.one_of(WORDS, st.integers(), st.floats(allow_nan=False)).filter(lambda v: v not in leaf.choices)
        return st.one_of(strays, CONTAINERS, *none)
    if leaf.kind in ("tuple", "pair"):
        assert leaf.item is not None
        item = (
            wrong_value(leaf.item)
            if leaf.kind == "tuple"
            else st.one_of(st.lists(st.integers(0, 3), max_size=1), st.lists(st.integers(0, 3), min_size=3, max_size=5))
        )
        options = [st.dictionaries(NAMES, st.integers(), min_size=1, max_size=2), *none]
        if "all" not in leaf.choices:
            options.append(WORDS)  # a bare word is not a list (classes.classes takes the one word 'all')
        else:
            options.append(WORDS.filter(lambda w: w != "all"))
        if item is not None:
            options.append(st.lists(item, min_size=1, max_size=3))
        if leaf.max_len is not None:
            huge = st.sampled_from([leaf.max_len + 1, 1000, 10_000])
            options.append(huge.map(lambda n: [1] * n))  # a huge list: refused by its length before anything else
        if leaf.key in ("grid.sizes", "classes.patch.sizes", "train.activations"):
            options.append(st.just([]))
        return st.one_of(*options)
    if leaf.kind == "section":
        return st.one_of(st.integers(), WORDS, st.lists(st.integers(), max_size=2), st.floats())
    if leaf.kind == "mapping":  # not a mapping, or one whose values are no model sections
        return st.one_of(
            st.integers(),
            WORDS,
            st.lists(st.integers(), max_size=2),
            st.floats(),
            st.dictionaries(NAMES, st.integers(), min_size=1, max_size=2),
        )
    raise AssertionError(leaf)


# String keys whose every value of the right type is not accepted: what the validators refuse.
VALIDATED_TEXT: dict[str, st.SearchStrategy[Any]] = {
    "device": st.one_of(WORDS, st.sampled_from(["CPU", "cuda:", "cuda:-1", "cuda:x", "gpu", "cuda 0", "mps"])),
    "layout.metric": st.one_of(WORDS, st.sampled_from(["wminkowski", "mahalanobis", "Cosine", ""])),
    "classes.metric": st.one_of(WORDS, st.sampled_from(["haversine", "", "seuclidean"])),
    "scheduler.address": st.one_of(WORDS, st.sampled_from(["tcp://", "http://host:8786", "tcp:// host", "", "LOCAL"])),
    "output.name": st.one_of(
        st.sampled_from(["", ".", "..", "a/b", "../up", "/abs", "a\\b", "nul\x00", "two\nlines", "é" * 128 + "x", "x" * 256]),
        st.tuples(WORDS, st.sampled_from("/\n\r\x00\\"), WORDS).map("".join),
    ),
    "output.dir": st.sampled_from(["", "   ", "a\x00b", "two\nlines"]),
}
# Faults that only two keys together make: each key is in range, the product would not fit a machine.
CANVAS = st.builds(
    lambda g, i, s: Fault(
        "grid.sizes", [g], ("grid.sizes",), "exhausts memory or disk", (("render.icon_size", i), ("tiles.scale", s))
    ),
    st.integers(257, 1024), st.integers(256, 1024), st.one_of(st.none(), st.integers(1, 64)),
)  # fmt: skip
SHARD = st.builds(
    lambda n, k: Fault("collect.shard_size", n, ("collect.shard_size",), "exhausts memory or disk", (("collect.positions_per_image", k),)),
    st.integers(1025, 1_000_000), st.integers(1024, 16_384),
)  # fmt: skip
EXHAUSTING: dict[str, Any] = {  # the examples, by name, each bound's reason in its message
    "grid.sizes": [[10**8]],
    "render.icon_size": [10**6],
    "collect.positions_per_image": [10**9],
    "render.steps": [10**12],
    "layout.fit_sample": [10**12, 10**30],
    "collect.batch_size": [10**9],
    "model.input_size": [10**5],
    "train.width": [10**6],
    "classes.grid": [10**5],
}

# Keys whose value is only checked later, against the model or the data (a layer name, a dataset): they get type
# faults here and value faults in test_faults_found_after_loading_the_model_leave_the_bundle_alone.
FILE_KEYS = ("model.weights", "model.classes", "layout.coords", "scheduler.upload", "images.source", "output.dir")


def value_faults(table: dict[str, Leaf], prefix: str = "") -> dict[str, st.SearchStrategy[Fault]]:
    """Faults in values, by kind: each kind is one branch of :func:`weighted`, whatever the number of keys."""
    kinds: dict[str, list[st.SearchStrategy[Fault]]] = {}
    for key, leaf in table.items():
        if not key.startswith(prefix):
            continue
        wrong = wrong_value(leaf)
        if wrong is not None:
            kinds.setdefault("type or range", []).append(wrong.map(lambda v, key=key: Fault(key, v, (key,), "type or range")))
        if key in VALIDATED_TEXT:
            kinds.setdefault("refused text", []).append(VALIDATED_TEXT[key].map(lambda v, key=key: Fault(key, v, (key,), "refused text")))
        if key in EXHAUSTING:
            exhausting = st.sampled_from(EXHAUSTING[key]).map(lambda v, key=key: Fault(key, v, (key,), "exhausts memory or disk"))
            kinds.setdefault("exhausts memory or disk", []).append(exhausting)
        if leaf.kind == "float" or (leaf.kind == "tuple" and leaf.item is not None and leaf.item.kind == "float"):
            as_list = leaf.kind == "tuple"
            not_finite = st.sampled_from(NOT_FINITE).map(
                lambda v, key=key, as_list=as_list: Fault(key, [v] if as_list else v, (key,), "NaN or infinity")
            )
            kinds.setdefault("NaN or infinity", []).append(not_finite)
        if leaf.kind in ("int", "float", "tuple"):
            kinds.setdefault("raw --set text", []).append(
                st.sampled_from(RAW_TEXT).map(lambda v, key=key: Fault(key, v, (key,), "raw --set text", raw=True))
            )
    return {kind: st.one_of(*options) for kind, options in kinds.items()}


def weighted(*branches: st.SearchStrategy[Fault]) -> st.SearchStrategy[Fault]:
    """One of ``branches``, each equally likely (st.one_of would flatten nested choices and weigh them by count)."""
    return st.integers(0, len(branches) - 1).flatmap(lambda i: branches[i])


def unknown_keys(schema: type[BaseModel], prefix: str = "") -> st.SearchStrategy[Fault]:
    """An unknown key in any section (top level included), or under a key that holds a value."""
    table = EXPERIMENT_LEAVES if schema is ExperimentConfig else ATLAS_LEAVES
    sections = [s for s in SECTIONS if (s == "" or s in table) and s.startswith(prefix.rstrip("."))]
    if prefix:
        sections = [s for s in sections if s]

    def in_section(section: str, name: str) -> Fault:
        key = f"{section}.{name}" if section else name
        return Fault(key, 1, (key,), "unknown key")

    def under_leaf(leaf: str, name: str) -> Fault:
        return Fault(f"{leaf}.{name}", 1, (leaf,), "key under a value")

    valid_leaves = [k for k, leaf in table.items() if leaf.kind != "section" and k.startswith(prefix)]
    return st.one_of(
        st.tuples(st.sampled_from(sections), NAMES)
        .filter(lambda t: t[1] not in section_fields(schema, t[0]))
        .map(lambda t: in_section(*t)),
        st.tuples(st.sampled_from(valid_leaves), NAMES).map(lambda t: under_leaf(*t)),
    )


# --- files and folders that are not there, or cannot be read or written -----------------------------------------------


@dataclass
class Places:
    """Paths made once per module that each fail in their own way."""

    missing: Path
    folder: Path
    file: Path
    dangling: Path
    loop: Path
    fifo: Path
    not_utf8: Path
    locked_file: Path  # mode 000: unreadable, except to root
    locked_folder: Path  # mode 000 (and 555 to write): unlistable and unwritable, except to root

    def unreadable_files(self) -> list[Path]:
        found = [self.folder, self.file / "below", self.dangling, self.loop, self.fifo]
        return found if ROOT else [*found, self.locked_file]

    def unwritable_folders(self) -> list[str]:
        found = [str(self.file), str(self.file / "below"), "/proc/atlas-fuzz/out", "/sys/atlas-fuzz"]
        return found if ROOT else [*found, str(self.locked_folder / "out")]


def make_places(root: Path) -> Places:
    root.mkdir(parents=True, exist_ok=True)
    places = Places(
        missing=root / "missing",
        folder=root / "a-folder",
        file=root / "a-file.txt",
        dangling=root / "dangling",
        loop=root / "loop",
        fifo=root / "fifo",
        not_utf8=root / "latin1.txt",
        locked_file=root / "locked.pt",
        locked_folder=root / "locked",
    )
    places.folder.mkdir()
    places.file.write_text("not a model\n")
    places.dangling.symlink_to(root / "nowhere")
    places.loop.symlink_to(root / "loop")
    os.mkfifo(places.fifo)
    places.not_utf8.write_bytes("caf\xe9\nna\xefve\n".encode("latin-1"))
    places.locked_file.write_bytes(b"x")
    places.locked_file.chmod(0)
    places.locked_folder.mkdir()
    places.locked_folder.chmod(0)
    return places


def file_faults(places: Places, keys: tuple[str, ...] = FILE_KEYS) -> st.SearchStrategy[Fault]:
    missing = st.builds(lambda name: places.missing / name, NAMES)
    readable = {
        "model.weights": st.one_of(missing, st.sampled_from(places.unreadable_files())),
        "model.classes": st.one_of(missing, st.sampled_from([*places.unreadable_files(), places.not_utf8])),
        "layout.coords": st.one_of(missing, st.sampled_from(places.unreadable_files())),
    }
    options = [v.map(lambda p, key=key: Fault(key, str(p), (key,), "path")) for key, v in readable.items() if key in keys]
    if "scheduler.upload" in keys:
        upload = st.one_of(missing, st.sampled_from(places.unreadable_files()))
        options.append(upload.map(lambda p: Fault("scheduler.upload", [str(p)], ("scheduler.upload",), "path")))
    if "images.source" in keys:
        folders = [places.file, places.file / "below", places.loop] + ([] if ROOT else [places.locked_folder])
        source = st.one_of(missing, st.sampled_from(folders))
        options.append(source.map(lambda p: Fault("images.source", str(p), ("images.source",), "path")))
    if "output.dir" in keys:
        options.append(st.sampled_from(places.unwritable_folders()).map(lambda p: Fault("output.dir", p, ("output.dir",), "path")))
    return st.one_of(*options)


# --- valid settings around the faults ---------------------------------------------------------------------------------

VALID: dict[str, st.SearchStrategy[Any]] = {  # small values, so nothing they add together can exhaust anything
    "model.input_size": st.integers(32, 128),
    "collect.n_images": st.integers(1, 50),
    "collect.positions_per_image": st.one_of(st.integers(1, 8), st.just("all")),
    "collect.batch_size": st.integers(1, 64),
    "collect.shard_size": st.integers(1, 64),
    "collect.attribution": st.booleans(),
    "layout.fit_sample": st.integers(1, 1000),
    "layout.n_neighbors": st.integers(2, 30),
    "layout.min_dist": st.floats(0, 1),
    "layout.metric": st.sampled_from(UMAP_METRICS),
    "grid.sizes": st.lists(st.integers(1, 8), min_size=1, max_size=3),
    "grid.min_count": st.integers(1, 5),
    "render.steps": st.integers(1, 16),
    "render.icon_size": st.integers(8, 64),
    "render.precision": st.sampled_from(["fp32", "bf16"]),
    "render.batch_size": st.one_of(st.integers(1, 64), st.just("auto")),
    "tiles.format": st.sampled_from(["jpg", "webp"]),
    "tiles.quality": st.integers(1, 100),
    "device": st.sampled_from(["cpu", "auto"]),
    "seed": st.integers(0, 2**32 - 1),
}
VALID_EXPERIMENT: dict[str, st.SearchStrategy[Any]] = {
    **VALID,
    "train.architecture": st.sampled_from(["vgg", "resnet", "vit"]),
    "train.epochs": st.integers(1, 3),
    "train.learning_rate": st.floats(1e-5, 1.0),
    "train.width": st.integers(1, 32),
    "compare.alignment_window": st.integers(1, 5),
}


@dataclass
class Case:
    """One generated command line: faults and valid settings, delivered as a YAML file or --set values."""

    faults: list[Fault]
    settings: dict[str, Any]
    as_file: bool
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.names = tuple(name for f in self.faults for name in f.names)

    def assignments(self) -> list[tuple[str, Any]]:
        """Key and value pairs for the file or YAML-text --set values (raw ones go separately, see ``raw``)."""
        faulty = {f.key: f.value for f in self.faults if not f.raw} | {k: v for f in self.faults for k, v in f.also}
        sections = [k for k in faulty if k in EXPERIMENT_LEAVES and EXPERIMENT_LEAVES[k].kind == "section"]
        pairs = [(k, v) for k, v in self.settings.items() if k not in faulty] + list(faulty.items())
        # A section set to a scalar replaces the keys inside it: keep it the last word on that section.
        inside = [(k, v) for k, v in pairs if not any(k.startswith(f"{s}.") for s in sections)]
        return inside

    def raw(self) -> list[str]:
        return [f"{f.key}={f.value}" for f in self.faults if f.raw]

    def touches(self, prefix: str) -> bool:
        return any(k == prefix or k.startswith(f"{prefix}.") for k, _ in self.assignments()) or any(
            f.key == prefix or f.key.startswith(f"{prefix}.") for f in self.faults
        )


def yaml_text(value: Any) -> str:
    """``value`` as the YAML text a user types after ``--set KEY=``; it reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=2**30)
    text = text.removesuffix("\n").removesuffix("\n...")
    assert same(yaml.safe_load(text), value), (value, text)
    return text


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def tree_of(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in pairs:
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    return tree


def case_strategy(faults: st.SearchStrategy[Fault], valid: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Case]:
    chosen = st.lists(faults, min_size=1, max_size=3, unique_by=lambda f: f.key)
    around = (
        st.dictionaries(st.sampled_from(sorted(valid)), st.none(), max_size=4).flatmap(
            lambda keys: st.fixed_dictionaries({k: valid[k] for k in keys})
        )
        if valid
        else st.just({})
    )
    return st.builds(Case, chosen, around, st.booleans())


# --- running one case -------------------------------------------------------------------------------------------------


class Tripwire(Exception):
    """Raised where a run's work would begin: a case got past every check (the CLI catches only AtlasError, so the test sees it)."""


TALLY: Counter[str] = Counter()
PASSED: Counter[str] = Counter()
KINDS: Counter[str] = Counter()
UNTOUCHED: list[int] = []  # files and folders of the bundle, at each check that found every one unchanged
STARTED = time.perf_counter()


def check_one_line(command: str, code: int, err: str, names: tuple[str, ...]) -> None:
    """Exit 2, one stderr line 'atlas: error: ...' naming a faulty key and the fix, no traceback."""
    TALLY[command] += 1
    lines = err.splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1, err[-2000:]
    line = lines[0]
    assert line.startswith("atlas: error: ") and "Traceback" not in line, line
    assert any(name in line for name in names), (names, line)
    assert any(word in line for word in FIX_WORDS), line
    assert len(line) < 1200, line
    PASSED[command] += 1


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def argv_for(command: list[str], case: Case, folder: Path, bundle_flags: list[str]) -> list[str]:
    """The case's command line: its config as a file or as --set values (values always as YAML text)."""
    pairs = case.assignments()
    if case.as_file or command[0] in ("train", "compare"):
        path = folder / "case.yaml"
        path.write_text(yaml.safe_dump(tree_of(pairs), allow_unicode=True, width=2**30), encoding="utf-8")
        argv = [command[0], str(path), *command[1:]]
    else:
        argv = [*command]
        for key, value in pairs:
            argv += ["--set", f"{key}={yaml_text(value)}"]
    for text in case.raw():
        argv += ["--set", text]
    return argv + bundle_flags


# --- fixtures ---------------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under ``root``: size, mtime (ns) and content hash (folders: their listing)."""
    found: dict[str, tuple[int, int, str]] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode):
            digest = hashlib.sha256("\n".join(sorted(os.listdir(path))).encode()).hexdigest()
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, digest)
    return found


@dataclass
class Bench:
    bundle: Path
    before: dict[str, tuple[int, int, str]]
    places: Places
    work: Path

    def flags(self) -> list[str]:
        """Point a run at the bundle (in process, a case that got past every check would stop at the tripwire)."""
        return ["--out", str(self.bundle.parent), "--name", self.bundle.name, "--scheduler", "sync"]

    def assert_untouched(self) -> None:
        after = snapshot(self.bundle)
        changed = sorted(k for k in set(self.before) | set(after) if self.before.get(k) != after.get(k))
        assert not changed, f"the fuzz cases wrote into the bundle: {changed[:10]}"
        UNTOUCHED.append(len(after))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """One real bundle, built once; then tripwires where work would begin, and a working folder of our own."""
    out = tmp_path_factory.mktemp("fuzz-bundle")
    assert main(["run", "--out", str(out), "--name", BUNDLE_NAME, "--scheduler", "sync", *BUNDLE_SETTINGS]) == 0
    bundle = out / BUNDLE_NAME
    assert (bundle / "manifest.json").is_file()
    work = tmp_path_factory.mktemp("fuzz-work")
    places = make_places(tmp_path_factory.mktemp("fuzz-places"))

    def trip(what: str) -> Callable[..., Any]:
        def tripped(*args: Any, **kwargs: Any) -> Any:
            raise Tripwire(f"a fuzz case got past every check and reached {what}")

        return tripped

    patch = pytest.MonkeyPatch()
    patch.setattr(atlas_pipelines.commands.run, "bundle_lock", trip("the bundle lock of atlas run"))
    patch.setattr(atlas_pipelines.commands.classes, "bundle_lock", trip("the bundle lock of atlas classes"))
    patch.setattr(atlas_pipelines.commands.train, "load_training_data", trip("the training data"))
    patch.setattr(atlas.models, "list_layers", trip("atlas layers' listing"))
    patch.chdir(work)  # output.dir defaults to ./outputs: keep it out of the repository
    yield Bench(bundle, snapshot(bundle), places, work)
    patch.undo()
    for path in (places.locked_folder, places.locked_file):
        path.chmod(0o700)


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    yield
    if TALLY:
        cases, passed = sum(TALLY.values()), sum(PASSED.values())
        per = ", ".join(f"{cmd} {n}" for cmd, n in sorted(TALLY.items()))
        seconds = time.perf_counter() - STARTED
        kept = (
            f"bundle unchanged ({max(UNTOUCHED)} files and folders, bytes and mtimes) at {len(UNTOUCHED)} checks"
            if UNTOUCHED
            else "bundle not checked"
        )
        print(f"\nfuzz: {cases} cases ({per}), {passed} exit 2 with one line naming the key and the fix; {kept}; {seconds:.0f} s")
        print("fuzz: faults by kind: " + ", ".join(f"{k} {n}" for k, n in KINDS.most_common()))


# --- the tests --------------------------------------------------------------------------------------------------------


def fuzz_run(bench: Bench, capsys: pytest.CaptureFixture[str], case: Case) -> None:
    flags = [] if case.touches("output") else bench.flags()[:4]  # --out/--name would override an output fault
    flags += [] if case.touches("scheduler") else ["--scheduler", "sync"]
    code, err = run_cli(argv_for(["run"], case, bench.work, flags), capsys)
    KINDS.update(f.kind for f in case.faults)
    check_one_line("run", code, err, case.names)


def run_faults(places: Places) -> st.SearchStrategy[Fault]:
    values = value_faults(ATLAS_LEAVES)
    exhausting = st.one_of(values.pop("exhausts memory or disk"), CANVAS, SHARD)
    return weighted(*values.values(), exhausting, unknown_keys(AtlasConfig), file_faults(places))


def _run_cases(bench: Bench, capsys: pytest.CaptureFixture[str], examples: int) -> None:
    @fuzz_settings(examples)
    @given(case=case_strategy(run_faults(bench.places), VALID))
    def one(case: Case) -> None:
        fuzz_run(bench, capsys, case)

    one()
    bench.assert_untouched()


def test_atlas_run_refuses_every_generated_fault_in_one_line(bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    _run_cases(bench, capsys, DEFAULT_EXAMPLES["run"])


def _layers_cases(bench: Bench, capsys: pytest.CaptureFixture[str], examples: int) -> None:
    model_leaves = {k: leaf for k, leaf in ATLAS_LEAVES.items() if k.startswith("model.")}
    faults = weighted(
        *value_faults(model_leaves).values(),
        unknown_keys(AtlasConfig, "model."),
        file_faults(bench.places, ("model.weights", "model.classes")),
    )

    @fuzz_settings(examples)
    @given(
        case=case_strategy(faults, {"model.input_size": st.integers(32, 128), "model.pretrained": st.booleans()}),
        spec=st.sampled_from(["efficientnet-lite0", "torchvision:resnet18"]),
    )
    def one(case: Case, spec: str) -> None:
        case.as_file = False  # atlas layers takes --set only
        code, err = run_cli(argv_for(["layers", spec], case, bench.work, []), capsys)
        KINDS.update(f.kind for f in case.faults)
        check_one_line("layers", code, err, case.names)

    one()


def test_atlas_layers_refuses_every_generated_fault_in_one_line(bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    _layers_cases(bench, capsys, DEFAULT_EXAMPLES["layers"])


def _experiment_cases(bench: Bench, capsys: pytest.CaptureFixture[str], examples: int) -> None:
    values = value_faults(EXPERIMENT_LEAVES)
    exhausting = st.one_of(values.pop("exhausts memory or disk"), CANVAS, SHARD)
    faults = weighted(*values.values(), exhausting, unknown_keys(ExperimentConfig), file_faults(bench.places))

    @fuzz_settings(examples)
    @given(case=case_strategy(faults, VALID_EXPERIMENT), command=st.sampled_from(["train", "compare"]))
    def one(case: Case, command: str) -> None:
        code, err = run_cli(argv_for([command], case, bench.work, []), capsys)
        KINDS.update(f.kind for f in case.faults)
        check_one_line(command, code, err, case.names)

    one()


def test_atlas_train_and_compare_refuse_every_generated_fault_in_one_line(bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    _experiment_cases(bench, capsys, DEFAULT_EXAMPLES["experiment"])


def _classes_cases(bench: Bench, capsys: pytest.CaptureFixture[str], examples: int) -> None:
    faults = weighted(*value_faults(ATLAS_LEAVES, "classes.").values(), unknown_keys(AtlasConfig, "classes."))

    @fuzz_settings(examples)
    @given(case=case_strategy(faults, {}))
    def one(case: Case) -> None:
        case.as_file = False
        code, err = run_cli(argv_for(["classes", str(bench.bundle)], case, bench.work, []), capsys)
        KINDS.update(f.kind for f in case.faults)
        check_one_line("classes", code, err, case.names)

    one()
    bench.assert_untouched()


def test_atlas_classes_refuses_every_generated_fault_in_one_line(bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    _classes_cases(bench, capsys, DEFAULT_EXAMPLES["classes"])


# Faults that only the loaded model shows: a preprocessing list of the wrong length for its channels, a std that is
# not positive, a channel count its first convolution does not take, a layer it does not have, a source that is no source.
TOP_LAYERS = {"blocks", "classifier", "conv_stem", "conv_head", "bn1", "bn2", "global_pool", "act1", "act2"}  # EfficientNet-Lite0's
AFTER_LOADING = st.one_of(
    st.lists(st.floats(-2, 2), min_size=2, max_size=2).map(lambda v: Fault("model.mean", v, ("model.mean",), "fits only the model")),
    st.integers(4, 12).map(lambda n: Fault("model.mean", [0.5] * n, ("model.mean",), "fits only the model")),
    st.just(Fault("model.mean", [0.5] * 100_000, ("model.mean",), "fits only the model")),
    st.lists(st.floats(0.1, 2), min_size=2, max_size=2).map(lambda v: Fault("model.std", v, ("model.std",), "fits only the model")),
    st.sampled_from([[0.0], [-1.0], [1.0, 0.0, 1.0]]).map(lambda v: Fault("model.std", v, ("model.std",), "fits only the model")),
    st.just(Fault("model.channels", 1, ("model.channels",), "fits only the model")),
    st.one_of(WORDS.filter(lambda w: w not in TOP_LAYERS), st.sampled_from(["", "blocks.99", "blocks.4.", "blocks..4", " blocks.4"])).map(
        lambda v: Fault("model.layer", v, ("model.layer",), "fits only the model")
    ),
    st.one_of(st.builds("builtin:{}".format, WORDS), st.builds("torchvision:{}".format, WORDS)).map(
        lambda v: Fault("images.source", v, ("images.source",), "fits only the model")
    ),
)


def _after_loading_cases(bench: Bench, capsys: pytest.CaptureFixture[str], examples: int) -> None:
    @fuzz_settings(examples)
    @given(fault=AFTER_LOADING, as_file=st.booleans())
    def one(fault: Fault, as_file: bool) -> None:
        case = Case([fault], {"model.input_size": 64}, as_file)
        fuzz_run(bench, capsys, case)

    one()
    bench.assert_untouched()


def test_faults_found_after_loading_the_model_leave_the_bundle_alone(bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    _after_loading_cases(bench, capsys, DEFAULT_EXAMPLES["model"])


def test_no_traceback_reaches_a_real_terminal(bench: Bench) -> None:
    """A few faults through a real ``python -m atlas_pipelines.commands.cli`` process: what a user's terminal shows."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    experiment = str(REPO / "configs" / "compare_activations.yaml")
    cases = {
        "run": (["run", *bench.flags(), "--set", "grid.sizes=[100000000]"], "grid.sizes"),
        "run-mean": (["run", *bench.flags(), "--set", "model.mean=[0.5, 0.5]", "--set", "model.input_size=64"], "model.mean"),
        "layers": (["layers", "efficientnet-lite0", "--set", "model.input_size=1e9"], "model.input_size"),
        "train": (["train", experiment, "--set", "train.learning_rate=.nan"], "train.learning_rate"),
        "compare": (["compare", experiment, "--set", f"output.dir={bench.places.file}"], "output.dir"),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "atlas_pipelines.commands.cli", *argv], cwd=bench.work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, (argv, _) in cases.items()
    }  # fmt: skip
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert "Traceback" not in err, err
        check_one_line(f"{name.split('-')[0]} (process)", proc.returncode, err, (cases[name][1],))
    bench.assert_untouched()


def test_shipped_configs_still_load() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        schema = ExperimentConfig if path.name.startswith(("compare", "train")) else AtlasConfig
        assert load_config(path, schema=schema).output.name == path.stem


def test_every_number_has_an_upper_bound() -> None:
    """A new size or count key without a bound would let a typo exhaust the machine: each one says its limit."""
    unbounded = [
        k
        for k, leaf in EXPERIMENT_LEAVES.items()
        if (leaf.kind == "int" and leaf.le is None and k not in ("seed", "train.seed"))
        or (leaf.kind == "tuple" and leaf.max_len is None and leaf.item is not None and leaf.item.kind in ("int", "float"))
    ]
    unbounded = [k for k in unbounded if k not in ("model.mean", "model.std")]  # their length is checked against the model
    assert not unbounded, unbounded
    assert MAX_CANVAS == 65_536 and MAX_SHARD_ROWS == 1 << 20


@pytest.mark.faults
def test_many_more_generated_faults(bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    """Five times the default suite's cases (about 6,800; -m faults, which .ci/run runs)."""
    _run_cases(bench, capsys, FAULTS_EXAMPLES["run"])
    _layers_cases(bench, capsys, FAULTS_EXAMPLES["layers"])
    _experiment_cases(bench, capsys, FAULTS_EXAMPLES["experiment"])
    _classes_cases(bench, capsys, FAULTS_EXAMPLES["classes"])
    _after_loading_cases(bench, capsys, FAULTS_EXAMPLES["model"])
    bench.assert_untouched()
