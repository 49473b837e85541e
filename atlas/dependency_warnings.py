"""Warnings raised inside dependencies about their own code, which a user of atlas can do nothing about.

Each filter names one message and the module that raises it, so every other warning (about the user's images,
settings or model) still shows. Installed at process start-up: by the command and by each worker process.
"""

from __future__ import annotations

import warnings

# (message regex, category, raising module regex)
DEPENDENCY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # PyTorch's forward-mode AD (attribution) scripts its own decompositions the first time it runs.
    (r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit\._script"),
)


def silence_dependency_warnings() -> None:
    """Hide exactly the warnings in :data:`DEPENDENCY_WARNINGS`; calling it again adds nothing (the same filters)."""
    for message, category, module in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
