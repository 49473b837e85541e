"""Examples stage: the dataset patch around every example position a cell shows, cut from the real images.

Patch tasks read a chunk of images back from the source on a worker and write
one JPEG per (image, position), shared by every cell and grid that shows it.
The stage ends by removing patches no cell shows any more and writing the list
of those it wrote; the assemble step links them from ``cells.json``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tqdm.auto import tqdm

from atlas.bundle import EXAMPLES, Bundle, BundleWriter, patch_named
from atlas.images.source import ImageSource
from atlas.tiles import PATCH_STRIDES, save_patches
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall

IMAGES_PER_PATCH_TASK = 64


def wanted_patches(bundle: Bundle, sizes: tuple[int, ...], per_cell: int) -> dict[int, set[tuple[int, int]]]:
    """Image id -> the (y, x) positions whose patch some cell shows (its first ``per_cell`` examples)."""
    wanted: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for size in sizes:
        for cell in bundle.grid_cells(size):
            for example in cell.examples[:per_cell]:
                wanted[example.image_id].add((example.y, example.x))
    return wanted


def patch_task(
    bundle: BundleWriter,
    source: ImageSource,
    positions: dict[int, list[tuple[int, int]]],
    layer_hw: tuple[int, int],
    input_size: int,
    channels: int,
) -> list[str]:
    """Runs on a worker: read a chunk of images back and write their patches; unreadable images give none."""
    written: list[str] = []
    for record in source.read_ids(positions):
        if record.image is not None:
            written += save_patches(bundle, record.image, record.image_id, positions[record.image_id], layer_hw, input_size, channels)
    return written


def cut_patches(run: RunInputs, wanted: dict[int, set[tuple[int, int]]], desc: str) -> set[str]:
    """The patch of every wanted (image, position), cut by Dask tasks over chunks of images; the bundle paths written."""
    written: set[str] = set()
    if not wanted:
        return written
    prep = run.model.preprocessing
    ex = run.executor()
    source = ex.scatter(run.source)
    ids = sorted(wanted)
    futures = [
        ex.submit(
            patch_task, run.bundle, source, {image_id: sorted(wanted[image_id]) for image_id in ids[start : start + IMAGES_PER_PATCH_TASK]},
            run.layer_hw, prep.input_size, prep.channels,
        )
        for start in range(0, len(ids), IMAGES_PER_PATCH_TASK)
    ]  # fmt: skip
    for future in tqdm(ex.as_completed(futures), total=len(futures), desc=desc, unit="task"):
        written.update(future.result())
    return written


def examples(call: StageCall) -> Report:
    run = call.run
    per_cell = run.config.tiles.examples_per_cell
    written = cut_patches(run, wanted_patches(run.bundle, run.config.grid.sizes, per_cell), "examples")
    _remove_stale_patches(run.bundle, written)
    run.bundle.write_patch_list(sorted(written))
    return {
        "examples": {
            "folder": f"{EXAMPLES}/",
            "per_cell": per_cell,
            "count": len(written),
            "crop": (
                f"square of {PATCH_STRIDES:g} strides (input_size / layer size) centred on ((y + 0.5) * S / H,"
                " (x + 0.5) * S / W) in the model's resized, centre-cropped input frame; shifted to stay inside it"
                + ("; a class-token row (y = x = -1): the whole frame, resized to that square" if run.config.collect.class_token else "")
            ),
        }
    }


def _remove_stale_patches(bundle: BundleWriter, written: set[str]) -> None:
    folder = bundle.path(EXAMPLES)
    if not folder.is_dir():
        return
    for path in folder.glob("*.jpg"):
        if patch_named(path.name) not in written:
            path.unlink(missing_ok=True)


def examples_settings(run: RunInputs) -> Any:
    return [run.config.tiles.examples_per_cell]


STAGE = Stage("examples", reads=("grid",), settings=examples_settings, work=examples)
