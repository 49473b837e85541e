"""atlas: activation atlases for trained PyTorch CNNs.

``atlas.run(...)`` builds an atlas from Python (a model object, a dataset, your Dask client) and returns its bundle;
``atlas.open_bundle(path)`` reads a bundle written by ``atlas run`` (see :mod:`atlas.bundle`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version lives (pyproject.toml reads it)

if TYPE_CHECKING:
    from atlas.bundle import Bundle, open_bundle
    from atlas.errors import AtlasError

__all__ = ["AtlasError", "Bundle", "__version__", "open_bundle", "run"]


def __getattr__(name: str) -> Any:
    """``open_bundle``, ``Bundle`` and ``run`` load on first use, so ``import atlas`` (and every command) starts fast.

    ``run`` is the orchestration's (``atlas_pipelines.api.run``: stages, Dask, caching), which the library itself
    never uses; this facade is the one place ``atlas`` names ``atlas_pipelines``, declared in the import contract.
    """
    if name in ("open_bundle", "Bundle"):
        from atlas import bundle

        return getattr(bundle, name)
    if name == "run":
        from atlas_pipelines.api import run

        return run
    if name == "AtlasError":
        from atlas.errors import AtlasError

        return AtlasError
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")
