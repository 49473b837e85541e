"""Writing a bundle: what the stages use. Each file has one writer (named beside its path in paths.py).

A writer is also a reader, so a stage reads what earlier stages wrote through the same object;
writing the manifest drops the one it had read.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from atlas.bundle.paths import (
    CELL_BLOCK,
    CLASS_INDEX,
    COORDS,
    DICTIONARY_ATTRIBUTION,
    DICTIONARY_CURVE,
    DICTIONARY_FEATURES,
    MANIFEST,
    PARENT_ROWS,
    PATCH_LIST,
    PATCH_RESULTS,
    RENDER_FRAME,
    RENDER_PROBE,
    RENDER_SPECTRUM,
    WHITENING,
    attribution_file,
    cell_block_file,
    cell_block_pattern,
    cell_blocks_folder,
    cell_features_file,
    cell_index_file,
    cells_file,
    dictionary_array,
    directions_file,
    feature_heat_file,
    fidelity_file,
    grid_cells_file,
    path_check_file,
)
from atlas.bundle.reader import Bundle
from atlas.bundle.records import Cell, Manifest, Score
from atlas.io import read_json, write_bytes, write_json, write_npy


class BundleWriter(Bundle):
    """A bundle folder being written by a run: every ``write_*``, beside the reads it inherits."""

    def write_manifest(self, manifest: Manifest) -> None:
        write_json(self.path(MANIFEST), manifest.to_json())
        self.__dict__.pop("manifest", None)  # the next read sees what was written

    # --- activations and layout -----------------------------------------------------------------

    def write_coords(self, coords: np.ndarray) -> None:
        write_npy(self.path(COORDS), coords)

    def write_whitening(self, matrix: np.ndarray) -> None:
        write_npy(self.path(WHITENING), matrix)

    def write_render_spectrum(self, spectrum: np.ndarray) -> None:
        write_npy(self.path(RENDER_SPECTRUM), spectrum.astype(np.float32))

    def write_render_frame(self, record: dict[str, Any]) -> None:
        write_json(self.path(RENDER_FRAME), record)
        self.__dict__.pop("render_frame", None)  # the next read sees what was written

    def write_render_probe(self, record: dict[str, Any]) -> None:
        write_json(self.path(RENDER_PROBE), record)

    def write_parent_rows(self, rows: np.ndarray) -> None:
        """A sub-bundle's rows as rows of its parent's store."""
        write_npy(self.path(PARENT_ROWS), rows)

    # --- levels ---------------------------------------------------------------------------------

    def write_grid_cells(self, grid: int, cells: Sequence[Cell]) -> None:
        write_json(self.path(grid_cells_file(grid)), [cell.to_json() for cell in cells])

    def write_directions(self, grid: int, directions: np.ndarray) -> None:
        write_npy(self.path(directions_file(grid)), directions.astype(np.float32))

    def write_attribution(self, grid: int, means: np.ndarray) -> None:
        """float16, Fortran order: each class's column is contiguous, so the viewer reads one class as one slice."""
        self._write_half_columns(attribution_file(grid), means)

    def _write_half_columns(self, relative: str, values: np.ndarray) -> None:
        """float16 clipped to its range, Fortran order: one column is one contiguous HTTP Range for the viewer."""
        limit = float(np.finfo(np.float16).max)
        clipped = np.clip(np.nan_to_num(values, nan=0.0), -limit, limit).astype("<f2")
        buffer = io.BytesIO()
        np.save(buffer, np.asfortranarray(clipped))
        write_bytes(self.path(relative), buffer.getvalue())

    def write_fidelity(self, grid: int, records: Sequence[Score]) -> None:
        write_json(self.path(fidelity_file(grid)), [record.to_json() for record in records])

    def write_path_check(self, grid: int, records: Sequence[Score | None]) -> None:
        write_json(self.path(path_check_file(grid)), [None if record is None else record.to_json() for record in records])

    def write_icon(self, relative: str, image: np.ndarray) -> None:
        """[C, H, W] in [0, 1] -> 8-bit PNG (RGB, or L for one-channel models)."""
        buffer = io.BytesIO()
        icon_picture(image).save(buffer, format="PNG")
        write_bytes(self.path(relative), buffer.getvalue())

    def write_cells(self, grid: int, cells: Sequence[Cell]) -> None:
        """cells.json; a re-run with nothing changed leaves the file (and its modification time) alone."""
        path, document = self.path(cells_file(grid)), [cell.to_json() for cell in cells]
        if not path.is_file() or read_json(path) != document:
            write_json(path, document)

    def write_viewer_cells(self, grid: int, cells: Sequence[Cell]) -> dict[str, Any]:
        """The viewer's split of one grid's cells: a block file per 16 x 16 region that has cells, and the cell index.

        The page loads only the blocks it shows and reads the index (4 bytes a cell) for the class heatmap, so a
        320 x 320 grid never has to be parsed whole. Returns the level's manifest entries that point at them.
        """
        index = np.full((grid, grid), -1, np.int32)
        blocks: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for n, cell in enumerate(cells):
            index[cell.j, cell.i] = n
            blocks.setdefault((cell.i // CELL_BLOCK, cell.j // CELL_BLOCK), []).append({**cell.to_json(), "n": n})
        folder = self.path(cell_blocks_folder(grid))
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

    # --- examples -------------------------------------------------------------------------------

    def write_patch(self, relative: str, jpeg: bytes) -> None:
        write_bytes(self.path(relative), jpeg)

    def write_patch_list(self, names: Sequence[str]) -> None:
        write_json(self.path(PATCH_LIST), sorted(names))

    # --- dictionary -----------------------------------------------------------------------------

    def write_dictionary_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """The saved dictionary (names of paths.DICTIONARY_ARRAYS), float32."""
        for name, array in arrays.items():
            write_npy(self.path(dictionary_array(name)), np.asarray(array, np.float32))

    def write_dictionary_curve(self, curve: dict[str, Any]) -> None:
        write_json(self.path(DICTIONARY_CURVE), curve)

    def write_dictionary_features(self, features: Sequence[dict[str, Any]]) -> None:
        write_json(self.path(DICTIONARY_FEATURES), list(features))

    def write_dictionary_attribution(self, means: np.ndarray) -> None:
        """float16 [F, K], clipped to float16's range like the grids' attribution."""
        limit = float(np.finfo(np.float16).max)
        write_npy(self.path(DICTIONARY_ATTRIBUTION), np.clip(np.nan_to_num(means, nan=0.0), -limit, limit).astype("<f2"))

    def write_feature_heat(self, grid: int, means: np.ndarray) -> None:
        """[n_cells, features]: like a grid's attribution, so the viewer reads one feature's column the same way."""
        self._write_half_columns(feature_heat_file(grid), means)

    def write_cell_features(self, grid: int, cells: Sequence[Sequence[dict[str, Any]]]) -> None:
        write_json(self.path(cell_features_file(grid)), [list(top) for top in cells])

    # --- atlas classes --------------------------------------------------------------------------

    def write_patch_results(self, results: dict[str, Any]) -> None:
        """A pair sub-bundle's patch experiment."""
        write_json(self.path(PATCH_RESULTS), results)

    def write_class_index(self, index: dict[str, Any]) -> None:
        write_json(self.path(CLASS_INDEX), index)


def icon_picture(image: np.ndarray) -> Image.Image:
    """[C, H, W] in [0, 1] -> an 8-bit image, RGB or L (one-channel models): how every rendered image is kept."""
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
