"""The icon library the render stage calls: a probe samples the run's own cells, framing crops, renders as saved."""

from __future__ import annotations

import numpy as np
import torch

from atlas.bundle import Cell, patch_file
from atlas.featurevis import derive_seed
from atlas.featurevis.framing import IconFrame
from atlas.featurevis.icons import cell_batch
from atlas.featurevis.probe import PROBE_MIN_RATIO, as_saved, sample_cells, worth_probing
from atlas.featurevis.receptive import ReceptiveField


def _cells(count: int) -> list[Cell]:
    examples = [{"row": 0, "image_id": 7, "y": 1, "x": 2}]
    return [
        Cell.from_json(
            {"i": k % 5, "j": k // 5, "count": 1, "top_classes": [], "icon": f"icon-{k}.png", "examples": examples if k % 2 else []}
        )
        for k in range(count)
    ]


def test_a_cell_batch_is_seeded_as_the_run_seeds_its_cells_and_starts_from_their_best_example() -> None:
    cells = _cells(6)
    batch = cell_batch(cells, 4, [1, 2], seed=3)
    assert batch.grid == 4 and batch.rows == (1, 2)
    assert batch.seeds == (derive_seed(3, 4, 1, 0), derive_seed(3, 4, 2, 0))
    assert batch.starts == (patch_file(7, 1, 2), None)


def test_the_probe_samples_both_ends_of_the_grids_only_when_the_atlas_is_large_enough() -> None:
    assert not worth_probing(PROBE_MIN_RATIO * 8 - 1, 8) and worth_probing(PROBE_MIN_RATIO * 8, 8)
    assert not worth_probing(1000, 0), "probe_cells 0: no probe"
    grids = {2: _cells(4), 4: _cells(12), 8: _cells(40)}
    sample = sample_cells(grids, 8, seed=0)
    assert [cells.grid for cells in sample] == [2, 8] and [len(cells.rows) for cells in sample] == [4, 4]
    for cells in sample:
        assert cells == cell_batch(grids[cells.grid], cells.grid, cells.rows, 0), "a probe render is the run's own render"
    assert [len(cells.rows) for cells in sample_cells({8: _cells(40)}, 8, seed=0)] == [8], "one grid: all of the probe"


def test_renders_are_scored_as_the_saved_pngs_hold_them() -> None:
    images = torch.tensor([0.0, 0.1234, 0.5, 1.0]).view(1, 1, 2, 2)
    assert np.array_equal(as_saved(images) * 255.0, np.round(images.numpy() * 255.0))


def test_a_frame_crops_to_the_field_and_keeps_the_full_view_whenever_it_shows_something_else() -> None:
    canvas = torch.rand(2, 3, 16, 16)
    assert not IconFrame(16, 16).keeps_views and torch.equal(IconFrame(16, 16).shown(canvas), canvas)
    field = ReceptiveField(size=6, top=4, left=5, image_size=16, mass=0.9)
    cropped = IconFrame(16, 6, field)
    assert cropped.crops and cropped.keeps_views and torch.equal(cropped.shown(canvas), canvas[:, :, 4:10, 5:11])
    scaled = IconFrame(16, 32)
    assert scaled.keeps_views and scaled.shown(canvas).shape == (2, 3, 32, 32)
    assert scaled.to_json() == {"canvas": 16, "icon": 32, "views": True}
