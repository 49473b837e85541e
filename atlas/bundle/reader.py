"""Reading a bundle: what ``atlas.open_bundle`` returns. It has no way to write.

The manifest is read once per reader (on an object store each read is a GET); a reader of a bundle
that is being rewritten sees the manifest as it was when first read. Readers resolve the store's
padding, so a reader never sees the ``valid`` mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from atlas.bundle.dictionary import SavedDictionary, read_dictionary
from atlas.bundle.paths import (
    ACTIVATIONS,
    COORDS,
    FORMAT,
    MANIFEST,
    PAIRS,
    PATCH_LIST,
    RENDER_FRAME,
    RENDER_PROBE,
    RENDER_SPECTRUM,
    WHITENING,
    attribution_file,
    cell_features_file,
    cells_file,
    directions_file,
    feature_heat_file,
    fidelity_file,
    full_view_file,
    grid_cells_file,
    pair_folder_named,
    path_check_file,
    poster_file,
    sub_manifest,
)
from atlas.bundle.records import Cell, Manifest, Score
from atlas.errors import AtlasError
from atlas.io import read_json, read_npy
from atlas.storage import Location, location

if TYPE_CHECKING:
    import pandas

    from atlas.collect.store import ActivationStore, Rows


@dataclass(frozen=True)
class Example:
    """One dataset example of a cell, loaded: the row it came from and, when the examples stage cut it, its patch."""

    row: int
    image_id: int
    y: int
    x: int
    patch: Image.Image | None


@dataclass(frozen=True)
class Level:
    """One grid of a bundle; ``icons`` load on first use (a 320 grid holds tens of thousands)."""

    bundle: Bundle
    grid: int
    cells: list[Cell]
    directions: np.ndarray

    def icon(self, cell: Cell) -> Image.Image | None:
        path = self.bundle.path(cell.icon)
        return open_image(path) if path.is_file() else None

    @cached_property
    def icons(self) -> list[Image.Image | None]:
        """Every cell's icon in ``cells`` order (None where render has not run)."""
        return [self.icon(cell) for cell in self.cells]

    def to_dataframe(self) -> pandas.DataFrame:
        """The kept cells as a pandas table, one row per cell in ``cells`` order (atlas.bundle.table)."""
        from atlas.bundle.table import cells_table

        return cells_table(self.cells)


class Bundle:
    """A bundle folder, read: typed records and arrays for each of its files."""

    def __init__(self, root: Location | str) -> None:
        self.root = location(root)  # a local folder, or a URL every worker can reach (atlas.storage)

    def path(self, relative: str) -> Location:
        return self.root / relative

    # --- manifest -------------------------------------------------------------------------------

    @cached_property
    def manifest(self) -> Manifest:
        path = self.path(MANIFEST)
        if not path.is_file():
            raise AtlasError(f"{self.root}: no {MANIFEST}; is this a bundle folder written by `atlas run`?")
        return Manifest.from_json(read_json(path))

    @property
    def grids(self) -> list[int]:
        return self.manifest.grids

    # --- activations and layout -----------------------------------------------------------------

    def store(self) -> ActivationStore:
        from atlas.collect.store import ActivationStore  # zarr and the collect package load only for bundles read this far

        return ActivationStore(self.path(ACTIVATIONS))

    def rows(self) -> Rows:
        """Every collected row (valid rows only, store order): activation, attribution, image_id, y, x, label."""
        return self.store().read()

    def coords(self) -> np.ndarray:
        return read_npy(self.path(COORDS))

    def whitening(self) -> np.ndarray:
        return read_npy(self.path(WHITENING))

    def render_spectrum(self) -> np.ndarray | None:
        path = self.path(RENDER_SPECTRUM)
        return read_npy(path) if path.is_file() else None

    def render_probe(self) -> dict[str, Any] | None:
        path = self.path(RENDER_PROBE)
        return read_json(path) if path.is_file() else None

    # --- levels ---------------------------------------------------------------------------------

    def dictionary(self) -> SavedDictionary:
        """The layer's sparse dictionary (``atlas dictionary``): weights, quality figures and one record per feature."""
        return read_dictionary(self.root, self.manifest.get("dictionary"))

    def grid_cells(self, grid: int) -> list[Cell]:
        """The grid stage's cells (before render, examples and path add theirs)."""
        return [Cell.from_json(cell) for cell in read_json(self.path(grid_cells_file(grid)))]

    def directions(self, grid: int) -> np.ndarray:
        return read_npy(self.path(directions_file(grid)))

    def attribution(self, grid: int) -> np.ndarray:
        return read_npy(self.path(attribution_file(grid)))

    def feature_heat(self, grid: int) -> np.ndarray:
        """float16 [n_cells, features]: each dictionary feature's mean activation over each cell's rows (cell order)."""
        return read_npy(self._dictionary_link(feature_heat_file(grid)))

    def cell_features(self, grid: int) -> list[list[dict[str, Any]]]:
        """Per cell (cell order), its dictionary features of highest mean activation: {feature, activation, active}."""
        return list(read_json(self._dictionary_link(cell_features_file(grid))))

    def _dictionary_link(self, relative: str) -> Location:
        path = self.path(relative)
        if not path.is_file():
            raise AtlasError(f"{self.root}: no {relative}; add the dictionary and its links with: atlas dictionary {self.root}")
        return path

    def fidelity(self, grid: int) -> list[Score] | None:
        path = self.path(fidelity_file(grid))
        return [Score.from_json(record) for record in read_json(path)] if path.is_file() else None

    def path_check(self, grid: int) -> list[Score | None] | None:
        """The path check of each icon against its cell's examples (None: the bundle predates it)."""
        path = self.path(path_check_file(grid))
        return [Score.maybe_from_json(record) for record in read_json(path)] if path.is_file() else None

    def image(self, relative: str) -> Image.Image:
        """An icon or patch of this bundle, loaded (wherever the bundle lives)."""
        return open_image(self.path(relative))

    @cached_property
    def render_frame(self) -> dict[str, Any] | None:
        """The icons' frame as render recorded it ({canvas, icon, views}); None before render (or in an older bundle)."""
        path = self.path(RENDER_FRAME)
        return read_json(path) if path.is_file() else None

    def full_view(self, icon: str) -> str | None:
        """The whole render kept behind an icon (cropped to its receptive field or scaled), or None where the icon is
        what the model was fed. Render decides once for all icons and records it (``render/frame.json``); only a
        bundle from before that record is looked up on disk."""
        view = full_view_file(icon)
        if self.render_frame is not None:
            return view if self.render_frame.get("views") else None
        return view if self.path(view).is_file() else None

    def fed_image(self, icon: str) -> str:
        """The image the model was fed for a cell (what fidelity and the path check score)."""
        return self.full_view(icon) or icon

    def cells(self, grid: int) -> list[Cell]:
        """The contract's cells of one grid (cells.json; grid.json's where a grid has no cells.json yet), also in a
        bundle whose first run has not written its manifest yet."""
        entry = self.manifest.level(grid) if "manifest" in self.__dict__ or self.path(MANIFEST).is_file() else None
        path = self.path((entry.cells if entry is not None else None) or cells_file(grid))
        return [Cell.from_json(cell) for cell in read_json(path)] if path.is_file() else self.grid_cells(grid)

    def level(self, grid: int) -> Level:
        entry = self.manifest.level(grid)
        if entry is None:
            raise AtlasError(f"{self.root}: no grid {grid}; this bundle has grids {', '.join(map(str, self.grids)) or 'none'}")
        return Level(self, grid, self.cells(grid), read_npy(self.path(entry.directions or directions_file(grid))))

    def poster(self, grid: int, max_side: int | None = 4096) -> Image.Image:
        """The grid's poster (every icon laid out, as the tiles stage cut it), scaled down to ``max_side`` pixels on its
        longer side: a 320 grid's poster is far past what PIL opens by default. ``max_side=None`` keeps full size."""
        entry = self.manifest.level(grid)
        if entry is None:
            raise AtlasError(f"{self.root}: no grid {grid}; this bundle has grids {', '.join(map(str, self.grids)) or 'none'}")
        path = self.path(entry.document.get("poster") or poster_file(grid))
        if not path.is_file():
            raise AtlasError(
                f"{path}: grid {grid} has no poster yet; the tiles stage has not run (run `atlas run` again to finish the bundle)"
            )
        from atlas.tiles.pyramid import read_poster  # libvips loads only for a poster

        return read_poster(path.read_bytes(), max_side)

    def pair_bundles(self) -> list[str]:
        """The folders of the two-class comparisons (sub-bundles) assembled inside this bundle."""
        root = self.path(PAIRS)
        manifests: list[Location] = sorted(root.glob(sub_manifest("*")), key=str) if root.is_dir() else []
        return [pair_folder_named(manifest.parent.name) for manifest in manifests]

    def layers(self) -> dict[str, Bundle]:
        """Every layer's atlas of this run (``model.layers``), by layer name in the viewer's order, from the main bundle
        or any layer's: the same rows at each layer. A run of one layer: just this bundle."""
        entry = self.manifest.get("layers")
        if not entry:
            return {str(self.manifest.layer): self}
        main = self.root if entry.get("main", ".") == "." else self.root.parent.parent  # assemble writes "." or "../.."
        return {b["layer"]: self if b["layer"] == entry.get("layer") else Bundle(main if b["folder"] == "." else main / b["folder"])
                for b in entry["bundles"]}  # fmt: skip

    def layer_bundle(self, layer: str) -> Bundle:
        """The atlas of ``layer`` in this run (``model.layers``); another name is one line listing the layers."""
        bundles = self.layers()
        if layer not in bundles:
            raise AtlasError(f"layer {layer!r}: this run has atlases of {', '.join(map(repr, bundles))}; open one of them")
        return bundles[layer]

    # --- in a notebook --------------------------------------------------------------------------

    def show(self, height: int = 640, max_embedded_bytes: int | None = None) -> None:
        """Display the viewer in the notebook output (IPython.display.HTML). The page carries the bundle's viewer files
        itself, so it shows where the browser is not on the kernel's machine; an atlas past ``max_embedded_bytes`` is
        served from the kernel instead (atlas.viewer.inline says why and how)."""
        try:
            from IPython.display import HTML, display
        except ImportError:
            raise AtlasError(
                "Bundle.show displays in Jupyter: pip install 'activation-atlas[notebook]' (or open it with `atlas serve`)"
            ) from None
        display(HTML(self.inline_html(height, max_embedded_bytes)))

    def _repr_html_(self) -> str:
        return self.inline_html()

    def inline_html(self, height: int = 640, max_embedded_bytes: int | None = None) -> str:
        """The notebook output's HTML: the viewer in an iframe (atlas.viewer.inline)."""
        from atlas.viewer.inline import DEFAULT_MAX_BYTES, inline_html
        from atlas.viewer.serve import local_copy

        root = local_copy(str(self.root)) if not isinstance(self.root, Path) else self.root
        return inline_html(root, height, DEFAULT_MAX_BYTES if max_embedded_bytes is None else max_embedded_bytes)

    # --- examples -------------------------------------------------------------------------------

    def patches(self) -> set[str]:
        path = self.path(PATCH_LIST)
        return set(read_json(path)) if path.is_file() else set()

    def examples(self, cell: Cell) -> list[Example]:
        """A cell's dataset examples, nearest its direction first, each with its patch image where one was cut."""
        found = []
        for example in cell.examples:
            patch = self.path(example.patch) if example.patch is not None else None
            image = open_image(patch) if patch is not None and patch.is_file() else None
            found.append(Example(example.row, example.image_id, example.y, example.x, image))
        return found


def open_bundle(path: Location | str) -> Bundle:
    """Open a finished bundle for reading (any bundle of format activation-atlas/1, old or new)."""
    bundle = Bundle(path)
    found = bundle.manifest.format
    if found != FORMAT:
        raise AtlasError(f"{bundle.root}: format {found!r} is not {FORMAT!r}; this version of atlas reads {FORMAT} bundles")
    return bundle


def open_image(path: Location) -> Image.Image:
    with path.open("rb") as handle, Image.open(handle) as image:
        image.load()
        return image
