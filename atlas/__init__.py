"""atlas: activation atlases for trained PyTorch CNNs.

``atlas.open_bundle(path)`` reads a bundle written by ``atlas run`` (see :mod:`atlas.bundle`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version lives (pyproject.toml reads it)

if TYPE_CHECKING:
    from atlas.bundle import Bundle, open_bundle

__all__ = ["Bundle", "__version__", "open_bundle"]


def __getattr__(name: str) -> Any:
    """``open_bundle`` and ``Bundle`` load on first use, so ``import atlas`` (and every command) starts fast."""
    if name in ("open_bundle", "Bundle"):
        from atlas import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")
