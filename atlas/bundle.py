"""The bundle: the one definition of every file an atlas run writes, and the public way to read one.

Format ``activation-atlas/1`` (docs/architecture.md describes every file). This
module alone spells bundle paths; every artifact has one writer, named beside
its path below. Readers here resolve the store's padding, so a reader never
sees the ``valid`` mask.

    bundle = atlas.open_bundle("outputs/default")
    rows = bundle.rows()                      # activations, attribution, image ids, positions, labels
    level = bundle.level(bundle.grids[-1])    # cells, directions, icons
    patches = bundle.examples(level.cells[0]) # the dataset patches of one cell
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atlas.collect.store import ActivationStore, Rows
from atlas.errors import AtlasError
from atlas.images.folder import INDEX_NAME, SKIPPED_NAME
from atlas.io import read_json, read_npy, write_bytes, write_json, write_npy
from atlas.storage import Location, location

FORMAT = "activation-atlas/1"

# Paths relative to the bundle folder, with the stage that writes each.
MANIFEST = "manifest.json"  # assemble
VIEWER = "index.html"  # assemble (with VIEWER_ASSETS/)
VIEWER_ASSETS = "viewer"
ACTIVATIONS = "activations"  # collect: the store (its own files inside, see atlas.collect.store)
ROWS = f"{ACTIVATIONS}/{ActivationStore.ROWS}"
IMAGES = "images"  # the image source's listing, written when the run plans its shards
IMAGE_INDEX = f"{IMAGES}/{INDEX_NAME}"  # a folder source's files, one per line: image id = line number
LISTING_SKIPS = f"{IMAGES}/{SKIPPED_NAME}"  # files the listing passed over without opening
COORDS = "layout/coords.npy"  # layout
WHITENING = "layout/whitening.npy"  # layout
RENDER_SPECTRUM = "render/spectrum.npy"  # render (render.param: maco): the run's images' mean Fourier magnitude at icon size
RENDER_PROBE = "render/probe.json"  # render: the settings its probe chose, under the stage key (absent without 'auto')
EXAMPLES = "examples"  # examples: one patch per (image, position)
PATCH_LIST = "examples/patches.json"  # examples: the patches it wrote
TILES = "tiles"  # tiles
STAGES = ".stages"  # the stage loop: one marker per stage
CLASSES = "classes"  # atlas classes: classes/<class>/, one sub-bundle of this contract per class atlas
PAIRS = "pairs"  # atlas classes: pairs/<A>__<B>/, one sub-bundle per two-class comparison
CLASS_INDEX = f"{CLASSES}/index.json"  # atlas classes: every class with its row count, and what has been built
PATCH_RESULTS = "patch.json"  # atlas classes, in a pair's sub-bundle: the patch experiment


def level_dir(grid: int) -> str:
    return f"levels/{grid}"


def cells_file(grid: int) -> str:
    """assemble: the contract's cells, grid's summary joined with render's fidelity and the examples' patches."""
    return f"{level_dir(grid)}/cells.json"


CELL_BLOCK = 16  # cells per side of one block of the viewer's per-region cell files


def cell_block_file(grid: int, block_i: int, block_j: int) -> str:
    """assemble: the cells.json entries of cells i in [16 bi, 16 bi + 16), j likewise, for the viewer to load by region."""
    return f"{level_dir(grid)}/blocks/{block_i}_{block_j}.json"


def cell_block_pattern(grid: int) -> str:
    """The block files' names with ``{bi}`` and ``{bj}`` for the viewer to fill in."""
    return f"{level_dir(grid)}/blocks/{{bi}}_{{bj}}.json"


def cell_index_file(grid: int) -> str:
    """assemble: int32 [g, g], the position in cells.json of the cell at row j, column i, or -1 where none was kept."""
    return f"{level_dir(grid)}/cell_index.npy"


def grid_cells_file(grid: int) -> str:
    """grid: each kept cell's position, count, top classes, icon path and example rows."""
    return f"{level_dir(grid)}/grid.json"


def directions_file(grid: int) -> str:
    """grid: float32 [n_cells, C], the mean activation of each cell."""
    return f"{level_dir(grid)}/directions.npy"


def attribution_file(grid: int) -> str:
    """grid: float16 [n_cells, classes], Fortran order, the mean attribution of each cell."""
    return f"{level_dir(grid)}/attribution.npy"


def fidelity_file(grid: int) -> str:
    """render: each icon's cosine to its direction and that direction's rank, in cell order."""
    return f"{level_dir(grid)}/fidelity.json"


def path_check_file(grid: int) -> str:
    """path: each icon's early-layer cosine to its examples' mean and that mean's rank (null: no example), in cell order."""
    return f"{level_dir(grid)}/path.json"


def icon_file(grid: int, i: int, j: int) -> str:
    """render: the icon of cell (i, j)."""
    return f"{level_dir(grid)}/icons/{i}_{j}.png"


def full_view_file(icon: str) -> str:
    """render: the whole rendered image behind an icon that shows only its receptive field (levels/<g>/views/)."""
    folder, _, name = icon.rpartition("/icons/")
    return f"{folder}/views/{name}"


def alpha_file(icon: str) -> str:
    """render (render.alpha): an icon's transparency from its attribution, 8-bit grey (levels/<g>/alpha/)."""
    folder, _, name = icon.rpartition("/icons/")
    return f"{folder}/alpha/{name}"


def icon_batch_marker(grid: int, index: int) -> str:
    """render: written after a batch's icons, so a resumed run renders only unfinished batches."""
    return f"{level_dir(grid)}/icons/.batch-{index:05d}.json"


def dzi_file(grid: int) -> str:
    return f"{TILES}/{grid}.dzi"


def tiles_folder(grid: int) -> str:
    return f"{TILES}/{grid}_files"


def poster_file(grid: int) -> str:
    return f"{TILES}/{grid}.png"


def canvas_file(grid: int) -> str:
    """tiles: the temporary full-resolution canvas, deleted once the pyramid and poster are cut."""
    return f"{TILES}/.canvas-{grid}.tif"


def tiles_marker(grid: int) -> str:
    return f"{TILES}/.{grid}.json"


def patch_file(image_id: int, y: int, x: int) -> str:
    """examples: one file per (image, position), shared by every cell and grid that shows it."""
    return f"{EXAMPLES}/{image_id}_{y}_{x}.jpg"


def stage_marker(name: str) -> str:
    return f"{STAGES}/{name}.json"


@dataclass(frozen=True)
class Example:
    """One dataset example of a cell: the row it came from and, when the examples stage cut it, its patch."""

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
    cells: list[dict[str, Any]]
    directions: np.ndarray

    def icon(self, cell: dict[str, Any]) -> Image.Image | None:
        path = self.bundle.path(cell["icon"])
        return _open_image(path) if path.is_file() else None

    @cached_property
    def icons(self) -> list[Image.Image | None]:
        """Every cell's icon in ``cells`` order (None where render has not run)."""
        return [self.icon(cell) for cell in self.cells]


class Bundle:
    """A bundle folder: typed readers and writers for each of its files."""

    def __init__(self, root: Location | str) -> None:
        self.root = location(root)  # a local folder, or a URL every worker can reach (atlas.storage)

    def path(self, relative: str) -> Location:
        return self.root / relative

    # --- manifest -------------------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        path = self.path(MANIFEST)
        if not path.is_file():
            raise AtlasError(f"{self.root}: no {MANIFEST}; is this a bundle folder written by `atlas run`?")
        return read_json(path)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.path(MANIFEST), manifest)

    @property
    def grids(self) -> list[int]:
        return sorted(int(level["grid"]) for level in self.manifest.get("levels", []))

    # --- activations and layout -----------------------------------------------------------------

    def store(self) -> ActivationStore:
        return ActivationStore(self.path(ACTIVATIONS))

    def rows(self) -> Rows:
        """Every collected row (valid rows only, store order): activation, attribution, image_id, y, x, label."""
        return self.store().read()

    def coords(self) -> np.ndarray:
        return read_npy(self.path(COORDS))

    def write_coords(self, coords: np.ndarray) -> None:
        write_npy(self.path(COORDS), coords)

    def whitening(self) -> np.ndarray:
        return read_npy(self.path(WHITENING))

    def write_whitening(self, matrix: np.ndarray) -> None:
        write_npy(self.path(WHITENING), matrix)

    def render_spectrum(self) -> np.ndarray | None:
        path = self.path(RENDER_SPECTRUM)
        return read_npy(path) if path.is_file() else None

    def write_render_spectrum(self, spectrum: np.ndarray) -> None:
        write_npy(self.path(RENDER_SPECTRUM), spectrum.astype(np.float32))

    def render_probe(self) -> dict[str, Any] | None:
        path = self.path(RENDER_PROBE)
        return read_json(path) if path.is_file() else None

    def write_render_probe(self, record: dict[str, Any]) -> None:
        write_json(self.path(RENDER_PROBE), record)

    # --- levels ---------------------------------------------------------------------------------

    def grid_cells(self, grid: int) -> list[dict[str, Any]]:
        return read_json(self.path(grid_cells_file(grid)))

    def write_grid_cells(self, grid: int, cells: list[dict[str, Any]]) -> None:
        write_json(self.path(grid_cells_file(grid)), cells)

    def directions(self, grid: int) -> np.ndarray:
        return read_npy(self.path(directions_file(grid)))

    def write_directions(self, grid: int, directions: np.ndarray) -> None:
        write_npy(self.path(directions_file(grid)), directions.astype(np.float32))

    def attribution(self, grid: int) -> np.ndarray:
        return read_npy(self.path(attribution_file(grid)))

    def write_attribution(self, grid: int, means: np.ndarray) -> None:
        """float16, Fortran order: each class's column is contiguous, so the viewer reads one class as one slice."""
        limit = float(np.finfo(np.float16).max)
        clipped = np.clip(np.nan_to_num(means, nan=0.0), -limit, limit).astype("<f2")
        buffer = io.BytesIO()
        np.save(buffer, np.asfortranarray(clipped))
        write_bytes(self.path(attribution_file(grid)), buffer.getvalue())

    def fidelity(self, grid: int) -> list[dict[str, Any]] | None:
        path = self.path(fidelity_file(grid))
        return read_json(path) if path.is_file() else None

    def write_fidelity(self, grid: int, records: list[dict[str, Any]]) -> None:
        write_json(self.path(fidelity_file(grid)), records)

    def path_check(self, grid: int) -> list[dict[str, Any] | None] | None:
        """The path check of each icon against its cell's examples (None: the bundle predates it)."""
        path = self.path(path_check_file(grid))
        return read_json(path) if path.is_file() else None

    def write_path_check(self, grid: int, records: list[dict[str, Any] | None]) -> None:
        write_json(self.path(path_check_file(grid)), records)

    def image(self, relative: str) -> Image.Image:
        """An icon or patch of this bundle, loaded (wherever the bundle lives)."""
        return _open_image(self.path(relative))

    def write_icon(self, relative: str, image: np.ndarray) -> None:
        """[C, H, W] in [0, 1] -> 8-bit PNG (RGB, or L for one-channel models)."""
        pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        write_bytes(self.path(relative), buffer.getvalue())

    def cells(self, grid: int) -> list[dict[str, Any]]:
        """The contract's cells of one grid (the grid stage's own, before the bundle is assembled)."""
        path = self.path(self._level_entry(grid).get("cells") or cells_file(grid))
        return read_json(path) if path.is_file() else self.grid_cells(grid)

    def write_cells(self, grid: int, cells: list[dict[str, Any]]) -> None:
        write_json(self.path(cells_file(grid)), cells)

    def write_viewer_cells(self, grid: int, cells: list[dict[str, Any]]) -> dict[str, Any]:
        """The viewer's split of one grid's cells: a block file per 16 x 16 region that has cells, and the cell index.

        The page loads only the blocks it shows and reads the index (4 bytes a cell) for the class heatmap, so a
        320 x 320 grid never has to be parsed whole. Returns the level's manifest entries that point at them.
        """
        index = np.full((grid, grid), -1, np.int32)
        blocks: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for n, cell in enumerate(cells):
            index[cell["j"], cell["i"]] = n
            blocks.setdefault((cell["i"] // CELL_BLOCK, cell["j"] // CELL_BLOCK), []).append({**cell, "n": n})
        folder = self.path(f"{level_dir(grid)}/blocks")
        stale = {p.name for p in folder.glob("*.json")} if folder.is_dir() else set()
        for (bi, bj), members in blocks.items():
            path = self.path(cell_block_file(grid, bi, bj))
            stale.discard(path.name)
            if not path.is_file() or read_json(path) != members:
                write_json(path, members)
        for name in stale:  # blocks of an earlier run's cells
            (folder / name).unlink()
        write_npy(self.path(cell_index_file(grid)), index)
        return {
            "cell_index": cell_index_file(grid),
            "cell_blocks": {"size": CELL_BLOCK, "files": cell_block_pattern(grid), "present": sorted([bi, bj] for bi, bj in blocks)},
        }

    def level(self, grid: int) -> Level:
        if grid not in self.grids:
            raise AtlasError(f"{self.root}: no grid {grid}; this bundle has grids {', '.join(map(str, self.grids)) or 'none'}")
        entry = self._level_entry(grid)
        return Level(self, grid, self.cells(grid), read_npy(self.path(entry.get("directions") or directions_file(grid))))

    def _level_entry(self, grid: int) -> dict[str, Any]:
        if not self.path(MANIFEST).is_file():
            return {}
        return next((level for level in self.manifest.get("levels", []) if int(level["grid"]) == grid), {})

    # --- examples -------------------------------------------------------------------------------

    def write_patch(self, relative: str, jpeg: bytes) -> None:
        write_bytes(self.path(relative), jpeg)

    def patches(self) -> set[str]:
        path = self.path(PATCH_LIST)
        return set(read_json(path)) if path.is_file() else set()

    def write_patch_list(self, names: Sequence[str]) -> None:
        write_json(self.path(PATCH_LIST), sorted(names))

    def examples(self, cell: dict[str, Any]) -> list[Example]:
        """A cell's dataset examples, nearest its direction first, each with its patch image where one was cut."""
        found = []
        for example in cell.get("examples", []):
            patch = self.path(example["patch"]) if "patch" in example else None
            found.append(
                Example(
                    int(example["row"]), int(example["image_id"]), int(example["y"]), int(example["x"]),
                    _open_image(patch) if patch is not None and patch.is_file() else None,
                )
            )  # fmt: skip
        return found


def copy_for_viewing(bundle: Bundle, target: Path) -> int:
    """Mirror what the viewer reads of a bundle on a store into the local folder ``target``; returns files fetched.

    Leaves out activation stores (the bulk of a bundle and of its class atlases; the page never reads them) and
    dot-files (markers).
    A file already there with the same size is not fetched again, so a second call fetches only what changed.
    """
    if isinstance(bundle.root, Path):
        raise TypeError("copy_for_viewing copies a bundle on a store; a local bundle is served where it is")
    fs, base = bundle.root.fs, bundle.root.path.rstrip("/")
    if not fs.exists(f"{base}/{MANIFEST}"):
        raise AtlasError(f"{bundle.root}: no {MANIFEST}; is this a bundle written by `atlas run`?")
    sources, targets = [], []
    for key, info in sorted(fs.find(base, detail=True).items()):
        relative = key[len(base) + 1 :]
        parts = relative.split("/")
        if ACTIVATIONS in parts[:-1] or any(part.startswith(".") for part in parts):  # sub-bundles' stores too
            continue
        local = target.joinpath(*parts)
        if local.is_file() and local.stat().st_size == info.get("size"):
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        sources.append(key)
        targets.append(str(local))
    if sources:
        fs.get(sources, targets)
    return len(sources)


def open_bundle(path: Location | str) -> Bundle:
    """Open a finished bundle for reading (any bundle of format activation-atlas/1, old or new)."""
    bundle = Bundle(path)
    found = bundle.manifest.get("format")
    if found != FORMAT:
        raise AtlasError(f"{bundle.root}: format {found!r} is not {FORMAT!r}; this version of atlas reads {FORMAT} bundles")
    return bundle


def _open_image(path: Location) -> Image.Image:
    with path.open("rb") as handle, Image.open(handle) as image:
        image.load()
        return image
