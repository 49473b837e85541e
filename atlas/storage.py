"""Where files live: a local folder, or any fsspec URL (``s3://``, ``gs://``, ``abfs://``, ...) that every worker can reach.

A location is a ``pathlib.Path`` for local files (made absolute, so workers in
another working folder find it) or a ``upath.UPath`` for a remote store; both
answer the same path methods (``/``, ``exists``, ``open``, ``glob``, ...), so
the code that reads and writes bundles does not care which it holds.

Endpoints and credentials come from the standard environment of each store
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... for S3) or fsspec's own
config, never from the URL or the config file, so they never reach a manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from upath import UPath

from atlas.errors import AtlasError

Location = Union[Path, UPath]  # noqa: UP007 -- a runtime alias (isinstance and annotations alike)

# Stores whose single-object write is atomic (an object appears whole or not at all): no temporary name is needed.
ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "memory"})
# Listing caches would hide what other workers wrote since; every check must ask the store.
_NO_LISTING_CACHE = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"})


def location(value: str | os.PathLike[str] | UPath) -> Location:
    """A local ``Path`` (absolute) for plain paths and ``file://`` URLs, else a ``UPath`` on the URL's filesystem."""
    if isinstance(value, Path):
        return value.expanduser().absolute()
    if isinstance(value, UPath):
        return value
    text = os.fspath(value)
    protocol = text.split("://", 1)[0].lower() if "://" in text else ""
    if protocol in ("", "file", "local"):
        return Path(text.split("://", 1)[1] if protocol else text).expanduser().absolute()
    options: dict[str, Any] = {"use_listings_cache": False} if protocol in _NO_LISTING_CACHE else {}
    try:
        return UPath(text, **options)
    except (ImportError, ValueError) as err:
        raise AtlasError(
            f"{text}: cannot open this URL ({_first_line(err)}); install the fsspec filesystem for {protocol}:// (s3fs, gcsfs, adlfs)"
        ) from None


def is_remote(path: Location) -> bool:
    """Whether ``path`` lives in a store other than this machine's file system."""
    return not isinstance(path, Path)


def protocol(path: Location) -> str:
    return "file" if isinstance(path, Path) else str(path.protocol)


def url(path: Location) -> str:
    """The string a user would type for this location (no credentials: those live in the environment)."""
    return str(path)


def require_local(path: Location, what: str) -> Path:
    """``path`` as a local Path, or one clear error for commands that only work on this machine's disk."""
    if isinstance(path, Path):
        return path
    raise AtlasError(f"{what} {url(path)}: this command needs a local folder; copy it down first (atlas serve does that for bundles)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
