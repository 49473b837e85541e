"""The links between a dictionary's features and the activation atlas's cells, on a small real run: the saved links
recomputed with numpy alone from the store rows and the saved arrays, and both links in headless Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_viewer_browser import Visit, atlas_serve, browser  # noqa: F401 -- browser: the shared fixture

from atlas.bundle import open_bundle
from atlas.grid.cells import cell_index
from atlas.io import read_json
from atlas_pipelines.commands.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [
    "--set", "model.input_size=96",
    "--set", "collect.n_images=40",
    "--set", "collect.positions_per_image=6",
    "--set", "collect.shard_size=20",
    "--set", "layout.fit_sample=200",
    "--set", "layout.n_neighbors=8",
    "--set", "grid.sizes=[2, 4]",
    "--set", "grid.min_count=2",
    "--set", "render.steps=4",
    "--set", "render.icon_size=32",
    "--set", "render.probe_cells=0",
    "--set", "dictionary.steps=150",
    "--set", "dictionary.batch_size=64",
    "--set", "dictionary.features=64",
]  # fmt: skip


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0's blocks.4 on 40 built-in photos (240 rows), with a 64-feature dictionary, in one run."""
    out = tmp_path_factory.mktemp("dictionary-links")
    assert main(["run", "--out", str(out), "--name", "photos", "--scheduler", "sync", *SMALL]) == 0
    return out / "photos"


def numpy_features(x: np.ndarray, arrays: dict[str, np.ndarray], k: int, scale: float) -> np.ndarray:
    """The manifest's forward, written out again with numpy alone: each row's feature activations."""
    pre = np.maximum(((x / scale) - arrays["decoder_bias"]) @ arrays["encoder"] + arrays["encoder_bias"], 0.0)
    threshold = -np.sort(-pre, axis=1)[:, k - 1 : k]
    return np.where(pre >= threshold, pre, 0.0)


def test_cell_links_recompute_from_the_store_rows(linked: Path) -> None:
    manifest = read_json(linked / "manifest.json")
    entry = manifest["dictionary"]
    assert "mean activation" in entry["links"]["heat"]
    arrays = {name: np.load(linked / path) for name, path in entry["arrays"].items()}
    bundle = open_bundle(linked)
    z = numpy_features(bundle.rows().activation.astype(np.float64), arrays, entry["k"], entry["scale"])
    coords = bundle.coords()
    checked = 0
    for level in manifest["levels"]:
        size = level["grid"]
        assert level["feature_heat"] == f"levels/{size}/feature_heat.npy"
        cells = read_json(linked / level["cells"]) if "cells" in level else read_json(linked / f"levels/{size}/cells.json")
        heat, tops = bundle.feature_heat(size), bundle.cell_features(size)
        assert heat.dtype == np.float16 and heat.shape == (len(cells), entry["features"]) and np.isfortran(heat)
        assert len(tops) == len(cells)
        i, j = cell_index(coords, size)
        for n, cell in enumerate(cells):
            members = (i == cell["i"]) & (j == cell["j"])
            assert members.sum() == cell["count"]
            mean, share = z[members].mean(axis=0), (z[members] > 0).mean(axis=0)
            np.testing.assert_allclose(heat[n].astype(np.float64), mean, rtol=2e-3, atol=2e-3)
            stored = tops[n]
            assert [t["activation"] for t in stored] == pytest.approx(mean[[t["feature"] for t in stored]], rel=1e-4, abs=1e-5)
            assert [t["active"] for t in stored] == pytest.approx(share[[t["feature"] for t in stored]], abs=1e-5)
            order = np.argsort(-mean, kind="stable")
            ranked = [int(f) for f in order[: len(stored)] if mean[f] > 0]
            values = mean[order]
            if len(stored) < len(values) and values[len(stored) - 1] - values[len(stored)] > 1e-4:  # no tie at the cut
                assert [t["feature"] for t in stored] == ranked
                checked += 1
    assert checked >= 5


def test_a_cell_lists_its_features_and_a_feature_lights_up_its_cells(browser: Any, linked: Path) -> None:  # noqa: F811
    bundle = open_bundle(linked)
    cells = read_json(linked / "levels/4/cells.json")
    tops, heat = bundle.cell_features(4), bundle.feature_heat(4).astype(np.float64)
    records = bundle.dictionary().features
    n = max(range(len(cells)), key=lambda c: (len(tops[c]), cells[c]["count"]))  # a cell with features listed
    cell, top = cells[n], tops[n]
    assert top, "some cell has a feature firing on its rows"
    with atlas_serve(linked) as url:
        visit = Visit(browser, url, viewport={"width": 1200, "height": 760})
        page = visit.page
        page.select_option("#grid-select", "4")
        page.click("#home")
        visit.settle()
        spot = page.evaluate(f"window.atlas.cellCenter(4, {cell['i']}, {cell['j']})")

        # Hovering a cell lists its strongest features in the label.
        page.mouse.move(spot["x"], spot["y"])
        page.wait_for_function("document.getElementById('tip').innerText.includes('features: feature')")
        assert f"features: feature {top[0]['feature']} (" in page.inner_text("#tip")

        # Clicking it lists them in the panel, in order, each with its icon and its record's density.
        page.mouse.click(spot["x"], spot["y"])
        page.locator("#panel-features").wait_for(state="visible")
        listed = page.eval_on_selector_all("#panel-feature-list .feature-link", "bs => bs.map(b => +b.dataset.feature)")
        assert listed == [t["feature"] for t in top]
        first = records[top[0]["feature"]]
        assert "density" in page.inner_text("#panel-feature-list") and first["icon"]
        page.wait_for_function("[...document.querySelectorAll('#panel-feature-list img')].every(i => i.complete && i.naturalWidth > 0)")
        assert visit.requested(first["icon"])

        # Choosing a feature lights up the cells where it fires: one column of feature_heat.npy, by Range.
        page.click(f"#panel-feature-list .feature-link[data-feature='{top[0]['feature']}']")
        page.wait_for_function(f"window.atlas.heat() && window.atlas.heat().feature === {top[0]['feature']}")
        shown = page.evaluate("window.atlas.heat()")
        assert shown["grid"] == 4 and shown["values"] == pytest.approx(heat[:, top[0]["feature"]].tolist(), rel=1e-3, abs=1e-6)
        assert f"feature {top[0]['feature']}" in page.inner_text("#legend")
        assert visit.requested("/levels/4/feature_heat.npy")
        painted = page.evaluate(
            "(() => { const c = document.getElementById('overlay'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let k = 3; k < d.length; k += 4) if (d[k] > 0) n++; return n / (d.length / 4); })()"
        )
        assert painted > 0.05, "cells are shaded by the feature's mean activation"

        # The link keeps it; clearing removes it; the search box names a feature too.
        page.wait_for_function("location.hash.includes('class=feature')")
        page.click("#legend-clear")
        page.locator("#legend").wait_for(state="hidden")
        assert page.evaluate("window.atlas.heat()") is None
        other = top[-1]["feature"]
        page.fill("#class-search", f"feature {other}")
        page.keyboard.press("Enter")
        page.wait_for_function(f"window.atlas.heat() && window.atlas.heat().feature === {other}")
        page.keyboard.press("Escape")  # closes the panel first
        page.keyboard.press("Escape")
        page.locator("#legend").wait_for(state="hidden")
        visit.assert_clean()
        visit.close()


def test_the_feature_map_bins_every_feature_once_densest_first(linked: Path) -> None:
    entry = read_json(linked / "manifest.json")["dictionary"]
    records = read_json(linked / entry["features_file"])
    root = linked / entry["map"]["folder"]
    manifest = read_json(root / "manifest.json")
    assert manifest["subset"]["kind"] == "features" and manifest["subset"]["parent"] == "../.."
    coords = np.load(root / "layout/coords.npy")
    assert coords.shape == (len(records), 2) and coords.min() >= 0 and coords.max() <= 1
    density = np.array([r["density"] for r in records])
    for level in manifest["levels"]:
        size = level["grid"]
        assert (root / level["dzi"]).is_file()
        cells = read_json(root / f"levels/{size}/cells.json")
        i, j = cell_index(coords, size)
        held = sorted(f for cell in cells for f in cell["features"])
        assert held == list(range(len(records))), "every feature in exactly one cell"
        for cell in cells:
            features = cell["features"]
            assert all((i[f], j[f]) == (cell["i"], cell["j"]) for f in features)
            assert features == sorted(features, key=lambda f: (-density[f], f)), "densest first"
            densest = records[features[0]]
            assert cell["count"] == len(features) and cell["feature"] == features[0]
            assert (root / cell["icon"]).read_bytes() == (linked / densest["icon"]).read_bytes()
            assert [c["label"] for c in cell["top_classes"]] == [c["label"] for c in densest["top_classes"]]
            for example in cell["examples"]:
                assert (root / example["patch"]).resolve() == (linked / "examples" / Path(example["patch"]).name).resolve()


def test_the_feature_map_opens_in_the_same_viewer(browser: Any, linked: Path) -> None:  # noqa: F811
    root = linked / "dictionary/map"
    cells = read_json(root / "levels/2/cells.json")
    cell = max(cells, key=lambda c: c["count"])
    with atlas_serve(linked) as url:
        visit = Visit(browser, url, viewport={"width": 1200, "height": 760})
        page = visit.page
        page.locator("#feature-map").wait_for(state="visible")
        page.click("#feature-map")
        page.wait_for_url("**/dictionary/map/index.html**")
        page.wait_for_function("window.atlas && window.atlas.ready && window.atlas.firstTileMs !== null", timeout=30_000)
        assert page.inner_text("#title").startswith("Feature map:")
        page.select_option("#grid-select", "2")
        page.click("#home")
        visit.settle()
        spot = page.evaluate(f"window.atlas.cellCenter(2, {cell['i']}, {cell['j']})")
        page.mouse.move(spot["x"], spot["y"])
        page.wait_for_function("document.getElementById('tip').innerText.includes('density')")
        tip = page.inner_text("#tip")
        assert f"feature {cell['feature']}: density" in tip and f"{cell['count']} dictionary feature" in tip
        page.mouse.click(spot["x"], spot["y"])
        page.locator("#panel").wait_for(state="visible")
        page.wait_for_function("[...document.querySelectorAll('#panel-examples img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#panel-examples img").count() == len([e for e in cell["examples"] if e["patch"]]) > 0
        assert page.locator("#back").is_visible()
        visit.assert_clean()
        visit.close()
