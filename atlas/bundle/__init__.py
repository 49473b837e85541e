"""The bundle: the one definition of every file an atlas run writes, and the public way to read one.

Format ``activation-atlas/1`` (docs/architecture.md describes every file). ``paths`` alone spells
bundle paths; ``records`` types the JSON files; ``reader`` is what users get, ``writer`` what the
stages write through; ``mirror`` copies a bundle on a store for the viewer.

    bundle = atlas.open_bundle("outputs/default")
    rows = bundle.rows()                      # activations, attribution, image ids, positions, labels
    level = bundle.level(bundle.grids[-1])    # cells (atlas.bundle.Cell), directions, icons
    patches = bundle.examples(level.cells[0]) # the dataset patches of one cell
    table = level.to_dataframe()              # in a notebook: the cells as pandas, bundle.poster(g) as PIL,
    bundle.show()                             # and the viewer inline (atlas.viewer.inline)
"""

from __future__ import annotations

from atlas.bundle.dictionary import SavedDictionary
from atlas.bundle.mirror import copy_for_viewing
from atlas.bundle.paths import *  # noqa: F403 -- every path, as atlas.bundle.NAME
from atlas.bundle.paths import FORMAT
from atlas.bundle.reader import Bundle, Example, Level, open_bundle, open_image
from atlas.bundle.records import Cell, CellExample, LevelSummary, Manifest, Score, TopClass
from atlas.bundle.writer import BundleWriter

__all__ = [
    "FORMAT",
    "Bundle",
    "BundleWriter",
    "Cell",
    "CellExample",
    "Example",
    "Level",
    "LevelSummary",
    "Manifest",
    "SavedDictionary",
    "Score",
    "TopClass",
    "copy_for_viewing",
    "open_bundle",
    "open_image",
]
