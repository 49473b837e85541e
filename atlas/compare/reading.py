"""A comparison read from Python: ``atlas.open_comparison(root)`` on what ``atlas compare`` wrote.

``compare.json`` holds every measure; this names the ones people ask for (the CKA matrices, the probes, a member's
bundle) so a notebook does not walk the JSON by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlas.bundle import Bundle, open_bundle
from atlas.compare.similarity import matrix_of
from atlas.errors import AtlasError


@dataclass(frozen=True)
class Comparison:
    """``root``: the experiment folder; ``result``: its ``compare.json``."""

    root: Path
    result: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> Comparison:
        path = Path(root) / "compare.json"
        try:
            result = json.loads(path.read_text())
        except FileNotFoundError:
            raise AtlasError(f"{root}: no compare.json here; point at the folder atlas compare wrote (outputs/NAME)") from None
        return cls(Path(root), result)

    def _group(self, group: int) -> dict[str, Any]:
        groups = self.result["groups"]
        if not 0 <= group < len(groups):
            raise AtlasError(f"group {group}: this comparison has {len(groups)} group(s), 0 to {len(groups) - 1}")
        found: dict[str, Any] = groups[group]
        return found

    @property
    def names(self) -> list[str]:
        """The members of the first group (the models, or the trained variants), in order."""
        return [panel["name"] for panel in self._group(0)["panels"]]

    def cka(self, group: int = 0) -> tuple[list[str], np.ndarray]:
        """Linear CKA between the group's members on their matched rows: their names and the matrix."""
        return matrix_of(self._group(group)["cka"])

    def depth_cka(self, model: str) -> tuple[list[str], np.ndarray]:
        """Linear CKA across one model's ``layers`` (``compare.models.NAME.layers``): the layers and the matrix."""
        depth = (self.result.get("depth") or {}).get("models", {})
        if model not in depth:
            raise AtlasError(f"{model!r} has no layers compared across depth; give compare.models.{model}.layers")
        return matrix_of(depth[model]["cka"])

    def probes(self, group: int = 0) -> dict[str, dict[str, Any] | None]:
        """Each member's linear probe (held-out accuracy, the majority-class share, rows, classes)."""
        return {panel["name"]: panel.get("probe") for panel in self._group(group)["panels"]}

    def bundle(self, name: str, group: int = 0) -> Bundle:
        """A member's atlas bundle."""
        for panel in self._group(group)["panels"]:
            if panel["name"] == name:
                return open_bundle(self.root / panel["bundle"])
        raise AtlasError(f"{name!r} is not in group {group}; its members are {', '.join(p['name'] for p in self._group(group)['panels'])}")


def open_comparison(root: str | Path) -> Comparison:
    """What ``atlas compare`` wrote at ``root`` (``outputs/NAME``)."""
    return Comparison.open(root)


__all__ = ["Comparison", "open_comparison"]
