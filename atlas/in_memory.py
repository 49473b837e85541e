"""Objects a Python caller hands to a run (a model, a dataset), kept by their spec string in this process.

The spec (``memory:Net@1a2b3c4d5e6f7a8b``) travels through the config, the stage keys and the manifest like any other
spec, and names the object by its content, so a re-run with the same object is cached and a changed one is not. The
object itself is registered here: by the run in the caller's process (the object itself, never a copy), and once in
each Dask worker by the run's worker plugin. A spec nobody registered in this process is one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from atlas.errors import AtlasError

MEMORY_PREFIX = "memory:"
_OBJECTS: dict[str, Any] = {}


def is_memory_spec(text: str) -> bool:
    return text.strip().startswith(MEMORY_PREFIX)


def memory_spec(kind: str, parts: Iterable[bytes]) -> str:
    """``memory:KIND@DIGEST``: what the object is called (its class name, for people) and a hash of its content."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())  # each part hashed alone, so parts never run into each other
    return f"{MEMORY_PREFIX}{kind}@{digest.hexdigest()[:16]}"


def register(spec: str, value: Any) -> None:
    _OBJECTS[spec] = value


def forget(spec: str) -> None:
    _OBJECTS.pop(spec, None)


def registered(spec: str, key: str) -> Any:
    """The object behind ``spec``; ``key`` is the config key that names it, for the message."""
    try:
        return _OBJECTS[spec.strip()]
    except KeyError:
        raise AtlasError(
            f"{key} {spec!r} names an object given to atlas.run in another process; pass the object itself to atlas.run"
        ) from None
