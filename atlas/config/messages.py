"""A pydantic ValidationError as the one line a user reads: the key as typed, the value, and what to give instead."""

from __future__ import annotations

import reprlib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxlevel = 80, 80, 6, 6, 4, 3


def short_repr(value: Any) -> str:
    """``repr`` cut to one readable line: a value pasted by mistake (a megabyte list, a long text) stays short."""
    return _SHORT.repr(value)


def describe_error(err: ValidationError, schema: type[BaseModel]) -> str:
    """The first error as one line: the key as typed, the value cut short, what to give instead and what its bound protects."""
    errors = err.errors()
    first = errors[0]
    if not first["loc"]:  # a check across sections (AtlasConfig._fits_a_machine): its message names the keys
        return f"config: {first['msg'].removeprefix('Value error, ')}"
    loc = _field_path(schema, first["loc"])
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        key = ".".join(str(p) for p in first["loc"])
        parent = _section_at(schema, first["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return f"config key {short_repr(key)} is unknown; valid keys here: {valid}"
    # A union (say, an integer or 'all') reports one error per variant: say them all.
    messages = dict.fromkeys(_message(e) for e in errors if _field_path(schema, e["loc"]) == loc)
    why = _description(schema, loc)
    return f"config key {key!r} = {short_repr(first.get('input'))} is invalid: {' or '.join(messages)}" + (f"; {why}" if why else "")


# pydantic's wording where it does not say what to give instead.
_MESSAGES = {
    "path_type": "Input should be a path (text)",
    "recursion_loop": "Input should not contain itself",
}


def _message(error: Any) -> str:
    if error["type"] == "missing" and error["loc"] and isinstance(error["loc"][-1], int):  # a pair of one
        return f"Input should have an item at position {error['loc'][-1] + 1}"
    return str(_MESSAGES.get(error["type"], error["msg"])).removeprefix("Value error, ")


def _description(schema: type[BaseModel], loc: tuple[str, ...]) -> str | None:
    """The key's description, which says what its bounds protect (None for a section or a key without one)."""
    section = _section_at(schema, loc[:-1]) if loc else None
    field = section.model_fields.get(loc[-1]) if section is not None else None
    if field is None:
        return None
    if field.description:
        return field.description
    for inner in getattr(field.annotation, "__args__", ()):  # tuple[GridSide, ...] or Count | None: the item's own
        described = [m.description for m in getattr(inner, "__metadata__", ()) if getattr(m, "description", None)]
        if described:
            return described[0]
    return None


def _field_path(schema: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The config-key part of a pydantic error location (drops union variant tags and list indices)."""
    path: list[str] = []
    current: type[BaseModel] | None = schema
    for part in loc:
        if current is None or str(part) not in current.model_fields:
            break
        path.append(str(part))
        annotation = current.model_fields[str(part)].annotation
        current = _section_type(annotation)
    if not path and loc:
        path.append(str(loc[0]))
    return tuple(path)


def _section_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: type[BaseModel] = schema
    for part in loc:
        field = current.model_fields.get(str(part))
        section = None if field is None else _section_type(field.annotation)
        if section is None:
            return None
        current = section
    return current


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section a key holds: its own type, or the section of an optional one (``dictionary: ... | None``)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
