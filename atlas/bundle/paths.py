"""Every path of a bundle, format ``activation-atlas/1``: the one module that spells them.

Paths are relative to the bundle folder; the stage that writes each file is named beside it
(docs/architecture.md describes every file). Sub-bundles (``atlas classes``) are bundles of the
same contract inside their parent, so their paths are these under :func:`class_folder` or
:func:`pair_folder`.
"""

from __future__ import annotations

import re

__all__ = [  # what `from atlas.bundle.paths import *` (atlas.bundle) re-exports
    "ACTIVATIONS",
    "CELL_BLOCK",
    "CLASSES",
    "CLASS_INDEX",
    "COORDS",
    "DICTIONARY",
    "DICTIONARY_ARRAYS",
    "DICTIONARY_ATTRIBUTION",
    "DICTIONARY_CURVE",
    "DICTIONARY_FEATURES",
    "DICTIONARY_MAP",
    "EXAMPLES",
    "FORMAT",
    "IMAGES",
    "IMAGE_INDEX",
    "IMAGE_INDEX_NAME",
    "LAYERS",
    "LEVELS",
    "LISTING_SKIPS",
    "LISTING_SKIPS_NAME",
    "MANIFEST",
    "PAIRS",
    "PARENT_ROWS",
    "PATCH_LIST",
    "PATCH_RESULTS",
    "RENDER_FRAME",
    "RENDER_PROBE",
    "RENDER_SPECTRUM",
    "ROWS",
    "STAGES",
    "TILES",
    "VIEWER",
    "VIEWER_ASSETS",
    "WHITENING",
    "alpha_file",
    "attribution_file",
    "canvas_file",
    "cell_block_file",
    "cell_block_pattern",
    "cell_blocks_folder",
    "cell_features_file",
    "cell_index_file",
    "cells_file",
    "class_folder",
    "dictionary_array",
    "dictionary_icon",
    "directions_file",
    "dzi_file",
    "feature_heat_file",
    "fidelity_file",
    "full_view_file",
    "grid_cells_file",
    "icon_batch_marker",
    "icon_file",
    "layer_folder",
    "level_dir",
    "pair_folder",
    "pair_folder_named",
    "pair_results",
    "patch_file",
    "patch_named",
    "path_check_file",
    "poster_file",
    "stage_marker",
    "sub_manifest",
    "tiles_folder",
    "tiles_marker",
    "view_canvas_file",
    "view_dzi_file",
    "view_tiles_folder",
]

FORMAT = "activation-atlas/1"

# Paths relative to the bundle folder, with the stage that writes each.
MANIFEST = "manifest.json"  # assemble
VIEWER = "index.html"  # assemble (with VIEWER_ASSETS/)
VIEWER_ASSETS = "viewer"
ACTIVATIONS = "activations"  # collect: the store (its own files inside, see atlas.collect.store)
LEVELS = "levels"  # grid, render, examples, path, assemble: levels/<g>/, one folder per grid
ROWS = f"{ACTIVATIONS}/rows.zarr"  # the store's arrays (atlas.collect.store.ActivationStore.ROWS)
IMAGES = "images"  # the image source's listing, written when the run plans its shards
IMAGE_INDEX_NAME = "images.txt"  # the folder source writes both into the folder it plans in: IMAGES
LISTING_SKIPS_NAME = "skipped_listing.txt"
IMAGE_INDEX = f"{IMAGES}/{IMAGE_INDEX_NAME}"  # a folder source's files, one per line: image id = line number
LISTING_SKIPS = f"{IMAGES}/{LISTING_SKIPS_NAME}"  # files the listing passed over without opening
COORDS = "layout/coords.npy"  # layout
WHITENING = "layout/whitening.npy"  # layout
RENDER_SPECTRUM = "render/spectrum.npy"  # render (render.param: maco): the run's images' mean Fourier magnitude at icon size
RENDER_FRAME = "render/frame.json"  # render: the icons' frame (canvas, icon size, whether full views were kept)
RENDER_PROBE = "render/probe.json"  # render: the settings its probe chose, under the stage key (absent without 'auto')
EXAMPLES = "examples"  # examples: one patch per (image, position)
PATCH_LIST = "examples/patches.json"  # examples: the patches it wrote
TILES = "tiles"  # tiles
STAGES = ".stages"  # the stage loop: one marker per stage
CLASSES = "classes"  # atlas classes: classes/<class>/, one sub-bundle of this contract per class atlas
PAIRS = "pairs"  # atlas classes: pairs/<A>__<B>/, one sub-bundle per two-class comparison
CLASS_INDEX = f"{CLASSES}/index.json"  # atlas classes: every class with its row count, and what has been built
PATCH_RESULTS = "patch.json"  # atlas classes, in a pair's sub-bundle: the patch experiment
DICTIONARY = "dictionary"  # dictionary: the sparse dictionary of the layer (optional: a config's dictionary section)
DICTIONARY_ARRAYS = ("encoder", "encoder_bias", "decoder", "decoder_bias")  # dictionary: one float32 .npy each
DICTIONARY_CURVE = f"{DICTIONARY}/curve.json"  # dictionary: the training curve
DICTIONARY_FEATURES = f"{DICTIONARY}/features.json"  # dictionary: one record per feature
DICTIONARY_MAP = f"{DICTIONARY}/map"  # dictionary: the feature map, a sub-bundle of this contract (its cells hold features)
DICTIONARY_ATTRIBUTION = f"{DICTIONARY}/attribution.npy"  # dictionary: float16 [F, K], activation-weighted mean attribution
LAYERS = "layers"  # model.layers: layers/<layer>/, one sub-bundle of this contract per layer besides the main one
PARENT_ROWS = "parent_rows.npy"  # collect, in a sub-bundle: row k here is row parent_rows[k] of the parent's store


def dictionary_array(name: str) -> str:
    """dictionary: one of the saved arrays (DICTIONARY_ARRAYS), e.g. ``dictionary/encoder.npy``."""
    return f"{DICTIONARY}/{name}.npy"


def dictionary_icon(feature: int) -> str:
    """dictionary: a feature's icon, rendered towards its decoder direction (its full view under dictionary/views/)."""
    return f"{DICTIONARY}/icons/{feature}.png"


def class_folder(name: str) -> str:
    """atlas classes: the sub-bundle of one class's atlas (``name``: the class's folder-safe name)."""
    return f"{CLASSES}/{name}"


def pair_folder(a: str, b: str) -> str:
    """atlas classes: the sub-bundle of the comparison of classes ``a`` and ``b`` (folder-safe names)."""
    return pair_folder_named(f"{a}__{b}")


def pair_folder_named(name: str) -> str:
    """atlas classes: a pair sub-bundle's folder from its own folder name (``<A>__<B>``)."""
    return f"{PAIRS}/{name}"


def layer_folder(layer: str) -> str:
    """model.layers: the sub-bundle of one more layer's atlas; a character outside letters, digits, '.', '_' and '-'
    (none in torch's dotted module names, which forbid only '.' inside a part) becomes '_'."""
    return f"{LAYERS}/{re.sub(r'[^A-Za-z0-9._-]', '_', layer)}"


def sub_manifest(folder: str) -> str:
    """A sub-bundle's manifest: it exists once the sub-bundle has been assembled."""
    return f"{folder}/{MANIFEST}"


def pair_results(folder: str) -> str:
    """The patch experiment's results of the pair sub-bundle ``folder``."""
    return f"{folder}/{PATCH_RESULTS}"


def level_dir(grid: int) -> str:
    return f"{LEVELS}/{grid}"


def cells_file(grid: int) -> str:
    """assemble: the contract's cells, grid's summary joined with render's fidelity and the examples' patches."""
    return f"{level_dir(grid)}/cells.json"


CELL_BLOCK = 16  # cells per side of one block of the viewer's per-region cell files


def cell_blocks_folder(grid: int) -> str:
    """assemble: the viewer's per-region cell files of one grid."""
    return f"{level_dir(grid)}/blocks"


def cell_block_file(grid: int, block_i: int, block_j: int) -> str:
    """assemble: the cells.json entries of cells i in [16 bi, 16 bi + 16), j likewise, for the viewer to load by region."""
    return f"{cell_blocks_folder(grid)}/{block_i}_{block_j}.json"


def cell_block_pattern(grid: int) -> str:
    """The block files' names with ``{bi}`` and ``{bj}`` for the viewer to fill in."""
    return f"{cell_blocks_folder(grid)}/{{bi}}_{{bj}}.json"


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


def feature_heat_file(grid: int) -> str:
    """dictionary: float16 [n_cells, features], Fortran order, each feature's mean activation over each cell's rows."""
    return f"{level_dir(grid)}/feature_heat.npy"


def cell_features_file(grid: int) -> str:
    """dictionary: per cell, in cell order, its features of highest mean activation ({feature, activation, active})."""
    return f"{level_dir(grid)}/cell_features.json"


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


def view_dzi_file(grid: int, view: str) -> str:
    """tiles: the Deep Zoom pyramid of a grid's other view (``examples``: its real example patches; ``both``: the icon
    and its best example side by side in each cell), in a folder of its own beside the icons' pyramid."""
    return f"{TILES}/{view}/{grid}.dzi"


def view_tiles_folder(grid: int, view: str) -> str:
    return f"{TILES}/{view}/{grid}_files"


def view_canvas_file(grid: int, view: str) -> str:
    """tiles: the temporary canvas of a grid's other view, deleted once its pyramid is cut."""
    return f"{TILES}/.canvas-{grid}-{view}.tif"


def canvas_file(grid: int) -> str:
    """tiles: the temporary full-resolution canvas, deleted once the pyramid and poster are cut."""
    return f"{TILES}/.canvas-{grid}.tif"


def tiles_marker(grid: int) -> str:
    return f"{TILES}/.{grid}.json"


def patch_file(image_id: int, y: int, x: int) -> str:
    """examples: one file per (image, position), shared by every cell and grid that shows it."""
    return patch_named(f"{image_id}_{y}_{x}.jpg")


def patch_named(name: str) -> str:
    """examples: the path of the patch file called ``name`` (one listed in the examples folder)."""
    return f"{EXAMPLES}/{name}"


def stage_marker(name: str) -> str:
    return f"{STAGES}/{name}.json"
