"""atlas: activation atlases for trained PyTorch CNNs.

``atlas.run(...)`` builds an atlas from Python (a model object, a dataset, your Dask client) and returns its bundle;
``atlas.open_bundle(path)`` reads a bundle written by ``atlas run`` (see :mod:`atlas.bundle`); ``atlas.compare_models(...)``
compares models on the same images and ``atlas.open_comparison(path)`` reads what ``atlas compare`` wrote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version lives (pyproject.toml reads it)

if TYPE_CHECKING:
    from atlas.bundle import Bundle, open_bundle
    from atlas.compare.reading import Comparison, open_comparison
    from atlas.errors import AtlasError

__all__ = ["AtlasError", "Bundle", "Comparison", "__version__", "compare_models", "open_bundle", "open_comparison", "run"]


def __getattr__(name: str) -> Any:
    """``open_bundle``, ``Bundle``, ``run`` and the rest load on first use, so ``import atlas`` (and every command)
    starts fast.

    ``run`` and ``compare_models`` are the orchestration's (``atlas_pipelines.api.run``: stages, Dask, caching), which the library itself
    never uses; this facade is the one place ``atlas`` names ``atlas_pipelines``, declared in the import contract.
    """
    if name in ("open_bundle", "Bundle"):
        from atlas import bundle

        return getattr(bundle, name)
    if name in ("open_comparison", "Comparison"):
        from atlas.compare import reading

        return getattr(reading, name)
    if name in ("run", "compare_models"):
        from atlas_pipelines import api

        return getattr(api, name)
    if name == "AtlasError":
        from atlas.errors import AtlasError

        return AtlasError
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")
