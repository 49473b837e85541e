"""``model.layers``: one atlas per layer of the same rows, the main one at the bundle and the others under layers/.

One small real run of the default model at two layers (blocks.4 and blocks.2, whose grids differ by two), read
back: the same images in the same order at the mapped positions, a second run that reuses every stage, and the
one-line errors of the keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import atlas
from atlas.bundle import Bundle
from atlas.collect.sampling import map_positions
from atlas.config import load_config
from atlas.errors import AtlasError
from atlas_pipelines.commands.cli import main

LAYERS = ["blocks.4", "blocks.2"]
SETTINGS: dict[str, Any] = {
    "model.input_size": 64,  # blocks.4: 4 x 4 positions, blocks.2: 8 x 8
    "collect.positions_per_image": 3,
    "collect.shard_size": 8,
    "layout.fit_sample": 60,
    "layout.n_neighbors": 8,
    "layout.min_dist": 0.99,
    "grid.sizes": [2],
    "grid.min_count": 1,
    "render.steps": 4,
    "render.icon_size": 16,
    "render.probe_cells": 4,
    "tiles.examples_per_cell": 2,
}


def run_layers(images: Path, out: Path, layer: list[str] | str = LAYERS) -> Bundle:
    return atlas.run(images=str(images), layer=layer, settings=SETTINGS, out=out, name="layers", scheduler="sync", log=lambda _: None)


@pytest.fixture(scope="module")
def two_layers(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path, Path]:
    out = tmp_path_factory.mktemp("layers")
    return run_layers(photo_folder, out), photo_folder, out


def test_two_layers_make_two_atlases_of_the_same_rows(two_layers: tuple[Bundle, Path, Path]) -> None:
    main_bundle = two_layers[0]
    entry = main_bundle.manifest["layers"]
    assert [b["layer"] for b in entry["bundles"]] == LAYERS and entry["main"] == "." and entry["layer"] == "blocks.4"
    assert [b["folder"] for b in entry["bundles"]] == [".", "layers/blocks.2"]
    assert [b["grid"] for b in entry["bundles"]] == [[4, 4], [8, 8]] and "centre" in entry["rule"]
    other = main_bundle.layer_bundle("blocks.2")
    assert other.root == main_bundle.root / "layers" / "blocks.2"
    assert other.manifest.layer == "blocks.2" and other.manifest["layers"]["main"] == "../.." and other.manifest["layers"]["same_rows"]
    assert other.manifest.channels != main_bundle.manifest.channels  # 40 against 112: read at its own layer
    assert other.grids == [2] and (other.root / "tiles" / "2.dzi").is_file() and (other.root / "index.html").is_file()
    assert list(other.layers()) == LAYERS and other.layers()["blocks.4"].root == main_bundle.root  # reachable both ways

    main_rows, other_rows = main_bundle.rows(), other.rows()
    assert len(main_rows) == len(other_rows) > 0
    assert np.array_equal(main_rows.image_id, other_rows.image_id) and np.array_equal(main_rows.label, other_rows.label)
    # the rule, spelled out: the position of the 8 x 8 grid holding the centre of the 4 x 4 grid's position
    assert np.array_equal(other_rows.y, 2 * main_rows.y + 1) and np.array_equal(other_rows.x, 2 * main_rows.x + 1)
    assert not np.array_equal(main_rows.activation[:, :8], other_rows.activation[:, :8])
    assert main_bundle.coords().shape == other.coords().shape


def test_a_second_run_reuses_every_stage_of_every_layer(two_layers: tuple[Bundle, Path, Path]) -> None:
    first, images, out = two_layers
    again = run_layers(images, out)
    for bundle in again.layers().values():
        assert all(stage["cached"] for stage in bundle.manifest["stages"].values()), bundle.manifest["stages"]
    assert np.array_equal(again.layer_bundle("blocks.2").coords(), first.layer_bundle("blocks.2").coords())


def test_a_bundle_of_one_layer_is_its_own_only_layer(two_layers: tuple[Bundle, Path, Path]) -> None:
    main_bundle = two_layers[0]
    with pytest.raises(AtlasError, match=r"^layer 'blocks\.3': this run has atlases of 'blocks\.4', 'blocks\.2'; open one"):
        main_bundle.layer_bundle("blocks.3")


def test_an_unknown_layer_in_the_list_is_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "run",
        "--layer",
        "blocks.4",
        "--layer",
        "blokcs.2",
        "--out",
        str(tmp_path),
        "--scheduler",
        "sync",
        "--images",
        "builtin:photos",
    ]
    assert main([*args, "--set", "model.input_size=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.layers 'blokcs.2' is not a layer of efficientnet-lite0; closest: blocks.2" in err, err
    assert not list(tmp_path.rglob("layers")), "refused before any bundle folder of a layer was made"


def test_the_keys_combine_one_way_and_say_so_in_one_line() -> None:
    config = load_config(None, values=[("model.layers", ["blocks.2", "blocks.4"])])
    assert config.model.layer == "blocks.2", "model.layer left out: the first listed is the main one"
    assert load_config(None, values=[("model.layer", "blocks.4"), ("model.layers", ["blocks.2", "blocks.4"])]).model.layer == "blocks.4"
    assert load_config(None).model.layers is None
    with pytest.raises(AtlasError, match=r"^config: model.layers \['blocks.2', 'blocks.5'\] does not list model.layer 'blocks.4'"):
        load_config(None, values=[("model.layer", "blocks.4"), ("model.layers", ["blocks.2", "blocks.5"])])
    with pytest.raises(
        AtlasError, match=r"^config key 'model.layers' = \['blocks.2', 'blocks.2'\] is invalid: layer 'blocks.2' is listed twice"
    ):
        load_config(None, values=[("model.layers", ["blocks.2", "blocks.2"])])


def test_positions_map_to_the_other_grid_by_their_centre() -> None:
    positions = np.array([[0, 0], [3, 2], [-1, -1]], dtype=np.int32)
    assert map_positions(positions, (4, 4), (8, 8)).tolist() == [[1, 1], [7, 5], [-1, -1]]  # class-token row kept
    assert map_positions(positions, (4, 4), (2, 2)).tolist() == [[0, 0], [1, 1], [-1, -1]]
    assert map_positions(np.array([[13, 0]]), (14, 14), (7, 7)).tolist() == [[6, 0]]
    assert map_positions(np.array([[1, 4]]), (3, 5), (14, 14)).tolist() == [[7, 12]]  # (1.5 / 3, 4.5 / 5) of 14
