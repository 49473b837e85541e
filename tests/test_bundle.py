"""Reading a bundle back with ``atlas.open_bundle``, and a grid that keeps no cells, on a small real run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from test_viewer_browser import CHROMIUM, atlas_serve, browser  # noqa: F401 (a fixture)

import atlas
from atlas.bundle import Cell, Manifest, Score
from atlas.config import ModelConfig
from atlas.errors import AtlasError
from atlas.grid import build_grid
from atlas.images import load_image
from atlas.images.preprocess import to_tensor
from atlas.io import read_json
from atlas.models import load_model, resolve_layer, run_to_layer
from atlas_pipelines.commands.cli import main

ARGS = [
    "--scheduler", "sync",
    "--set", "model.input_size=96",
    "--set", "collect.positions_per_image=3",
    "--set", "collect.shard_size=8",
    "--set", "layout.n_neighbors=8",
    "--set", "layout.min_dist=0.99",  # spread the 51 points: no cell of a 40 x 40 grid holds 3
    "--set", "grid.sizes=[2,40]",
    "--set", "grid.min_count=3",
    "--set", "render.steps=8",
    "--set", "render.icon_size=32",
    "--set", "tiles.examples_per_cell=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of a dozen photos at grid 40 with grid.min_count 3: the run a new user tries first."""
    out = tmp_path_factory.mktemp("bundle")
    assert main(["run", "--images", str(photo_folder), "--out", str(out), "--name", "read", *ARGS]) == 0
    return out / "read"


def test_rows_are_the_collected_activations(run_dir: Path) -> None:
    bundle = atlas.open_bundle(run_dir)
    rows = bundle.rows()
    assert len(rows) == bundle.manifest["n_activations"] == 17 * 3
    assert rows.activation.shape == (51, 112) and rows.attribution.shape == (51, 1000)

    # The same rows as the store holds, its per-shard padding and `valid` mask resolved.
    group = zarr.open_group(run_dir / "activations" / "rows.zarr", mode="r")
    valid = group["valid"][:]
    assert len(valid) > len(rows), "the store is padded per shard"
    for name in ("activation", "attribution", "image_id", "y", "x", "label"):
        np.testing.assert_array_equal(getattr(rows, name), group[name][:][valid])

    # And they are what the model computes at those images and positions.
    model = load_model(ModelConfig(input_size=96))
    layer = resolve_layer(model, "blocks.4")
    names = (run_dir / "images" / "images.txt").read_text().splitlines()
    for r in (0, 25, 50):
        path = Path(bundle.manifest["config"]["images"]["source"]) / names[rows.image_id[r]]
        image, error = load_image(path, 89_478_485, size_hint=96)  # as collection decodes it (reduced JPEG scale)
        assert error is None
        with torch.no_grad():
            feature = run_to_layer(model.module, layer, to_tensor(image, model.preprocessing)[None])
        np.testing.assert_allclose(rows.activation[r], feature[0, :, rows.y[r], rows.x[r]].numpy(), rtol=1e-3, atol=1e-3)


def test_levels_icons_and_examples_read_back(run_dir: Path) -> None:
    bundle = atlas.open_bundle(run_dir)
    assert bundle.grids == [2, 40]
    assert bundle.coords().shape == (51, 2)
    level = bundle.level(2)
    assert [cell.to_json() for cell in level.cells] == read_json(run_dir / "levels" / "2" / "cells.json") and level.cells
    assert level.directions.shape == (len(level.cells), 112)
    assert all(isinstance(icon, Image.Image) and icon.size == (32, 32) for icon in level.icons)
    assert all(cell.fidelity is not None for cell in level.cells)
    examples = bundle.examples(level.cells[0])
    assert [e.row for e in examples] == [e.row for e in level.cells[0].examples]
    with_patch = [e for e in examples if e.patch is not None]
    assert len(with_patch) == min(2, len(examples)) and all(e.patch.size == (48, 48) for e in with_patch)  # 3 strides of 16 px
    with pytest.raises(AtlasError, match=r"no grid 7; this bundle has grids 2, 40"):
        bundle.level(7)
    with pytest.raises(AtlasError, match="no manifest.json"):
        atlas.open_bundle(run_dir / "levels")


def test_a_grid_without_cells_is_a_valid_level(run_dir: Path) -> None:
    manifest = atlas.open_bundle(run_dir).manifest
    empty = next(level for level in manifest["levels"] if level["grid"] == 40)
    assert empty["n_cells"] == 0 and empty["dzi"] is None and "grid.min_count = 3" in empty["note"]
    assert empty["fidelity"] is None
    assert read_json(run_dir / "levels" / "40" / "cells.json") == []
    assert np.load(run_dir / "levels" / "40" / "directions.npy").shape == (0, 112)
    assert np.load(run_dir / "levels" / "40" / "attribution.npy").shape == (0, 1000)
    assert not (run_dir / "tiles" / "40.dzi").exists()
    level = atlas.open_bundle(run_dir).level(40)
    assert level.cells == [] and level.icons == []
    assert all(stage["cached"] is False for stage in manifest["stages"].values())


def test_reads_a_bundle_without_this_version_s_intermediate_files(run_dir: Path, tmp_path: Path) -> None:
    """Bundles written before the bundle module kept everything in cells.json; the reader needs nothing else."""
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    shutil.rmtree(old / ".stages")
    for name in ("grid.json", "fidelity.json"):
        for path in old.glob(f"levels/*/{name}"):
            path.unlink()
    (old / "examples" / "patches.json").unlink()
    new, before = atlas.open_bundle(run_dir), atlas.open_bundle(old)
    assert before.level(2).cells == new.level(2).cells
    np.testing.assert_array_equal(before.level(2).directions, new.level(2).directions)
    assert [e.patch is not None for e in before.examples(before.level(2).cells[0])] == [
        e.patch is not None for e in new.examples(new.level(2).cells[0])
    ]
    np.testing.assert_array_equal(before.rows().activation, new.rows().activation)


def test_every_record_s_json_round_trip_equals_the_file(run_dir: Path) -> None:
    """One JSON form per record: reading a real bundle's files into records and writing them back changes nothing."""
    assert Manifest.from_json(read_json(run_dir / "manifest.json")).to_json() == read_json(run_dir / "manifest.json")
    for name in ("cells.json", "grid.json"):
        cells = read_json(run_dir / "levels" / "2" / name)
        assert cells and [Cell.from_json(cell).to_json() for cell in cells] == cells
    fidelity = read_json(run_dir / "levels" / "2" / "fidelity.json")
    assert [Score.from_json(record).to_json() for record in fidelity] == fidelity
    checked = read_json(run_dir / "levels" / "2" / "path.json")
    assert [None if r is None else Score.from_json(r).to_json() for r in checked] == checked


@pytest.fixture(scope="module")
def served(run_dir: Path) -> Iterator[str]:
    with atlas_serve(run_dir) as url:
        yield url


def test_the_viewer_says_which_grids_are_empty(browser: Any, served: str) -> None:  # noqa: F811
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served)
    page.wait_for_function("window.atlas && window.atlas.ready", timeout=30_000)
    assert page.evaluate("window.atlas.emptyGrids") == [40]
    assert page.evaluate("window.atlas.levels.map(l => l.grid)") == [2]
    option = page.locator("#grid-select option[value='empty-40']")
    assert option.inner_text() == "40 \u00d7 40 (no cells)" and option.is_disabled()
    assert page.evaluate("window.atlas.errors") == [] and errors == []
    page.close()


def test_the_streamed_grid_stage_equals_the_in_memory_grid(run_dir: Path) -> None:
    """The grid stage read the store in chunks (shards of 8 images); the in-memory grid over rows() gives the same levels."""
    bundle = atlas.open_bundle(run_dir)
    rows, coords = bundle.rows(), bundle.coords()
    labels = bundle.manifest["labels"]
    config = bundle.manifest["config"]["grid"]
    for size in (2, 40):
        reference = build_grid(
            coords, rows.activation, rows.attribution, rows.image_id, rows.y, rows.x, size, config["min_count"], labels,
            config["top_classes"], config["examples"],
        )  # fmt: skip
        written = bundle.grid_cells(size)
        assert [(c.i, c.j, c.count) for c in written] == [(c["i"], c["j"], c["count"]) for c in reference.cells]
        assert [[t.index for t in c.top_classes] for c in written] == [[t["index"] for t in c["top_classes"]] for c in reference.cells]
        assert [[e.to_json() for e in c.examples] for c in written] == [c["examples"] for c in reference.cells]
        np.testing.assert_allclose(bundle.directions(size), reference.directions.reshape(-1, 112), rtol=1e-5, atol=1e-6)
        if reference.cells:
            np.testing.assert_allclose(bundle.attribution(size), reference.mean_attribution, rtol=2e-3, atol=1e-3)  # stored as float16
