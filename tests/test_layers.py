"""``model.layers``: one atlas per layer of the same rows, the main one at the bundle and the others under layers/.

One small real run of the default model at blocks.4, then blocks.2 added (grids 4 x 4 and 8 x 8), read back: the
main layer's stages reused, the same images in the same order at the mapped positions, a second run that reuses
every stage, the one-line errors of the keys, and the viewer's layer chooser in headless Chromium.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
from test_viewer_browser import Visit, atlas_serve
from test_viewer_browser import browser as browser  # the module's Chromium fixture, shared

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
    """An atlas of blocks.4 as any run makes it, then blocks.2 added to the same run."""
    out = tmp_path_factory.mktemp("layers")
    one = run_layers(photo_folder, out, layer="blocks.4")
    assert "layers" not in one.manifest and not (one.root / "layers").exists()
    return run_layers(photo_folder, out), photo_folder, out


def test_a_layer_added_later_reuses_every_stage_of_the_main_one(two_layers: tuple[Bundle, Path, Path]) -> None:
    main_bundle = two_layers[0]
    assert all(stage["cached"] for stage in main_bundle.manifest["stages"].values()), main_bundle.manifest["stages"]
    assert not any(stage["cached"] for stage in main_bundle.layer_bundle("blocks.2").manifest["stages"].values())


def test_two_layers_make_two_atlases_of_the_same_rows(two_layers: tuple[Bundle, Path, Path]) -> None:
    main_bundle = two_layers[0]
    entry = main_bundle.manifest["layers"]
    assert [b["layer"] for b in entry["bundles"]] == LAYERS and entry["main"] == "." and entry["layer"] == "blocks.4"
    assert [b["folder"] for b in entry["bundles"]] == [".", "layers/blocks.2"]
    assert [b["grid"] for b in entry["bundles"]] == [[4, 4], [8, 8]] and "centre" in entry["rule"]
    other = main_bundle.layer_bundle("blocks.2")
    assert other.root == main_bundle.root / "layers" / "blocks.2"
    assert other.manifest.name == main_bundle.manifest.name == "layers", "one run's atlas, at another layer"
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


# ---- in the browser: the layer chooser ----


def wait_for_layer(visit: Visit, folder: str) -> None:
    visit.page.wait_for_url(re.compile(rf"^http://[^/]+/{re.escape(folder)}index\.html#"), timeout=30_000)
    visit.page.wait_for_function("window.atlas && window.atlas.ready && window.atlas.firstTileMs !== null", timeout=30_000)
    visit.settle()


def hash_view(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).fragment))


def test_the_chooser_opens_the_other_layer_at_the_rows_under_the_centre(browser: Any, two_layers: tuple[Bundle, Path, Path]) -> None:
    main_bundle = two_layers[0]
    other = main_bundle.layer_bundle("blocks.2")
    with atlas_serve(Path(main_bundle.root)) as url:
        visit = Visit(browser, url + "index.html")
        try:
            page = visit.page
            assert page.is_visible("#layer-select")
            options = page.eval_on_selector_all("#layer-select option", "os => os.map(o => [o.value, o.selected])")
            assert options == [["blocks.4", True], ["blocks.2", False]]
            cell = page.evaluate("window.atlas.keptCells(2)[0]")
            x, y = (cell["i"] + 0.5) / 2, (cell["j"] + 0.5) / 2
            page.evaluate(f"location.hash = '#g=2&lock=1&x={x}&y={y}&z=1.5'")
            visit.settle()
            page.wait_for_function("location.hash.includes('z=1.5')")
            rows = [e.row for e in next(c for c in main_bundle.grid_cells(2) if (c.i, c.j) == (cell["i"], cell["j"])).examples][:8]

            page.select_option("#layer-select", "blocks.2")
            wait_for_layer(visit, "layers/blocks.2/")
            view = hash_view(page.url)
            expected = np.median(other.coords()[rows], axis=0)  # where the centre cell's rows landed in blocks.2's layout
            assert view["z"] == "1.500" and view["g"] == "2" and view["lock"] == "1", view
            assert abs(float(view["x"]) - expected[0]) < 2e-4 and abs(float(view["y"]) - expected[1]) < 2e-4, (view, expected)
            assert visit.requested("/layers/blocks.2/tiles/2_files/"), "the other layer's own tiles"
            assert page.eval_on_selector("#layer-select", "s => s.value") == "blocks.2"

            page.reload()  # the URL keeps the choice
            wait_for_layer(visit, "layers/blocks.2/")
            assert page.evaluate("window.atlas.layers()") == [
                {"layer": "blocks.4", "current": False},
                {"layer": "blocks.2", "current": True},
            ]
            page.select_option("#layer-select", "blocks.4")
            wait_for_layer(visit, "")
            assert "/layers/" not in urlsplit(page.url).path and hash_view(page.url)["z"] == "1.500"
            visit.assert_clean()
        finally:
            visit.close()
