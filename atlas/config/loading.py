"""From a YAML file and ``--set KEY=VALUE`` overrides to one validated config."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from atlas.config.messages import describe_error
from atlas.config.schema import AtlasConfig
from atlas.errors import AtlasError


def parse_assignment(text: str) -> tuple[str, Any]:
    """``'collect.batch_size=16'`` -> ``('collect.batch_size', 16)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise AtlasError(f"--set {text!r}: expected KEY=VALUE, for example --set collect.n_images=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise AtlasError(f"--set {key.strip()!r}: the value nests too deeply; give a plain value or a flat list") from None
    return key.strip(), value


def apply_assignment(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted ``key`` in a raw config tree, making sections on the way; a key under a plain value is a user error."""
    node = tree
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1], start=1):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            holder = ".".join(parts[:depth])
            raise AtlasError(f"config key {key!r}: {part!r} is a value, not a section; use {holder}=VALUE, not keys under it")
        node = child
    node[parts[-1]] = value


# A value set on top of a file (--set, a setting, a flag) is taken as it is: the file's rule that would change it is
# dropped, unless that rule is set too. The packaged default's rules then never override what a user asked for.
RULES_OVER = {"collect.positions_per_image": "collect.target_rows", "grid.sizes": "grid.fit_to_rows"}


def drop_rules_under_explicit_values(tree: dict[str, Any], given: set[str]) -> None:
    """Remove from the file's ``tree`` each rule whose value ``given`` names and whose rule it does not."""
    for value_key, rule_key in RULES_OVER.items():
        if value_key in given and rule_key not in given:
            section, _, leaf = rule_key.partition(".")
            node = tree.get(section)
            if isinstance(node, dict):
                node.pop(leaf, None)


def validate_tree(tree: dict[str, Any], schema: type[BaseModel]) -> Any:
    """The tree as ``schema``; anything wrong is one line naming the first bad key."""
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise AtlasError(describe_error(err, schema)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's raw tree; a file that cannot be read or is not a YAML mapping is one line saying which."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise AtlasError(f"config file {path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise AtlasError(f"config file {path}: not UTF-8 text (byte {err.start}); save it as UTF-8 YAML") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise AtlasError(f"config file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise AtlasError(f"config file {path}: nests too deeply; a config is a mapping of sections of plain values") from None
    if not isinstance(tree, dict):
        raise AtlasError(f"config file {path}: expected a mapping of sections at the top level")
    return tree


def packaged_default_config() -> Path:
    """The default config that ships inside the package (``configs/default.yaml`` in the repository links to it)."""
    return Path(str(resources.files("atlas").joinpath("configs", "default.yaml")))


def load_config(
    path: Path | None,
    assignments: Sequence[str] = (),
    schema: type[BaseModel] = AtlasConfig,
    values: Sequence[tuple[str, Any]] = (),
) -> Any:
    """Read a YAML file (or start from defaults), apply ``--set`` overrides, then ``values`` as given; validate once.

    ``--set KEY=VALUE`` is read as YAML (``grid.sizes=[10,20]``); ``values`` are already typed, like command-line
    flags whose value is a string whatever it looks like.
    """
    tree = read_yaml(path) if path is not None else {}
    given = [parse_assignment(text) for text in assignments] + list(values)
    drop_rules_under_explicit_values(tree, {key for key, _ in given})
    for key, value in given:
        apply_assignment(tree, key, value)
    config = validate_tree(tree, schema)
    if path is not None and isinstance(config, AtlasConfig) and config.output.name is None:
        config = config.model_copy(update={"output": config.output.model_copy(update={"name": Path(path).stem})})
    return config
