"""Completion markers: the one way atlas decides that work already done can be reused.

A piece of work (a stage, a batch of icons, a grid's tiles, a trained variant,
an aligned layout) writes its outputs atomically, then a small JSON marker
holding the key of its inputs. It counts as done only when the marker holds the
same key and every output it names still exists; a run killed in between
leaves no marker, so that piece is simply redone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from atlas.io import write_json
from atlas.storage import Location


def read_marker(path: Location) -> dict[str, Any] | None:
    """The marker's contents, or None when it is missing or unreadable (a torn write counts as missing)."""
    try:
        text = path.read_text()
    except OSError:  # FileNotFoundError included, on every store
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"key": text.strip()}  # markers written before they were JSON held the bare key
    return value if isinstance(value, dict) else None


def is_fresh(path: Location, key: str, outputs: Iterable[Location] = ()) -> bool:
    """Whether the work behind ``path`` was done for ``key`` and its ``outputs`` are all still there."""
    marker = read_marker(path)
    return marker is not None and marker.get("key") == key and all(p.exists() for p in outputs)


def write_marker(path: Location, key: str, **extra: Any) -> None:
    """Mark work done for ``key``; call it only after every output is in place."""
    write_json(path, {"key": key, **extra})


def clear_marker(path: Location) -> None:
    """From here until the next ``write_marker`` the outputs on disk are not one finished piece of work."""
    path.unlink(missing_ok=True)
