"""`atlas compare --model ...` on two models a user saved, of different architectures: a CNN (a factory plus a
state dict) read at a 14 x 14 map and a ViT (a pickled module) read at its 7 x 7 patch tokens, on real Fashion-MNIST
test images. The rows must pair across the two grids, and every measure must be computed from them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_viewer_browser import CHROMIUM, CHROMIUM_ARGS, atlas_serve

from atlas.bundle import Bundle
from atlas.collect.sampling import map_positions
from atlas.compare.similarity import cka_matrix, linear_probe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def user_vit(
    fashion_weights: tuple[Path, Path], one_epoch: Callable[..., torch.nn.Module], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A small ViT trained one epoch on 4,096 Fashion-MNIST images and saved whole with torch.save, as a user would."""
    from atlas.images import open_source
    from atlas.models.zoo import TinyViT

    _, root = fashion_weights
    dataset = open_source("torchvision:FashionMNIST", root=root).dataset()  # type: ignore[attr-defined]
    images = dataset.data[:4096].float().div(255).sub(0.5).div(0.5).unsqueeze(1)
    torch.manual_seed(0)
    vit = one_epoch(TinyViT(activation="gelu", width=8, depth=2), images, dataset.targets[:4096])
    path = tmp_path_factory.mktemp("user-models") / "vit.pt"
    torch.save(vit.eval(), path)
    return path


@pytest.fixture(scope="module")
def compared(fashion_weights: tuple[Path, Path], user_vit: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    weights, root = fashion_weights
    out = tmp_path_factory.mktemp("compare-models")
    settings = [
        f"compare.models.cnn.weights={weights}", "compare.models.cnn.layers=[features.act2, features.act4]",
        "compare.models.vit.trust_pickle=true", "compare.models.vit.layers=[blocks.0, blocks.1]",
        "compare.models.vit.input_size=28", "compare.models.vit.channels=1", "compare.models.vit.mean=[0.5]", "compare.models.vit.std=[0.5]",
        "images.source=torchvision:FashionMNIST?split=test", f"images.root={root}", f"output.dir={out}",
        "collect.n_images=300", "collect.shard_size=150", "collect.positions_per_image=1", "grid.sizes=[4, 8]",
        "layout.n_neighbors=10", "render.steps=16", "render.icon_size=28", "tiles.examples_per_cell=2", "scheduler.address=sync",
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "atlas_pipelines.commands.cli", "compare",
        "--model", "cnn=atlas.models.zoo:fashion_cnn:features.act4", "--model", f"vit={user_vit}:blocks.1",
        *[a for s in settings for a in ("--set", s)],
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "compare", proc.stdout


def _rows(root: Path, result: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: Bundle(root / p["bundle"]).rows() for p in result["groups"][0]["panels"]}


def test_the_models_read_the_same_images_at_the_same_points_of_the_input(compared: tuple[Path, str]) -> None:
    root, _ = compared
    result = json.loads((root / "compare.json").read_text())
    group = result["groups"][0]
    assert result["mode"] == "models" and [p["name"] for p in group["panels"]] == ["cnn", "vit"]
    assert group["rows"]["match"] == "nearest" and group["rows"]["reference"] == "cnn" and group["rows"]["count"] == 300
    rows = _rows(root, result)
    cnn, vit = rows["cnn"], rows["vit"]
    assert np.array_equal(cnn.image_id, vit.image_id)
    # The CNN sampled positions of its 14 x 14 map; the ViT read the patch covering each one's centre on its 7 x 7.
    assert cnn.y.max() > 6 and np.array_equal(np.stack([vit.y, vit.x], 1), map_positions(np.stack([cnn.y, cnn.x], 1), (14, 14), (7, 7)))
    assert cnn.activation.shape[1] == 64 and vit.activation.shape[1] == 32
    for panel in group["panels"]:  # every model has a finished atlas at the shared, aligned layout
        bundle = Bundle(root / panel["bundle"])
        assert [level.grid for level in bundle.manifest.levels] == [4, 8]
        assert bundle.manifest["config"]["layout"]["coords"].endswith(f"{panel['name']}.npy")


def test_cka_and_probes_are_the_measures_of_those_rows(compared: tuple[Path, str]) -> None:
    root, _ = compared
    result = json.loads((root / "compare.json").read_text())
    rows = _rows(root, result)
    expected = cka_matrix([rows["cnn"].activation, rows["vit"].activation])
    cka = result["groups"][0]["cka"]
    assert cka["cnn"]["cnn"] == 1.0 and cka["vit"]["cnn"] == cka["cnn"]["vit"] == pytest.approx(expected[0, 1], abs=1e-4)
    assert 0.05 < cka["cnn"]["vit"] < 0.99  # two trained networks share some, not all, of their representation
    table = {row["variant"]: row for row in result["metrics"]}
    for name, panel in zip(("cnn", "vit"), result["groups"][0]["panels"], strict=True):
        probe = linear_probe(rows[name].activation, rows[name].label, seed=0, test_fraction=0.3)
        assert panel["probe"] == probe and table[name]["probe_accuracy"] == probe["accuracy"]
        assert probe["accuracy"] > probe["chance"] + 0.1  # a trained layer states the class better than the majority guess
        assert panel["trustworthiness"] > 0.5 and panel["statistics"]["std"] > 0 and panel["class_purity"]["8"] is not None
        assert table[name]["test_accuracy"] is None  # atlas did not train these: it does not know their accuracy


def test_depth_gives_each_models_layers_and_the_matched_depths(compared: tuple[Path, str]) -> None:
    root, _ = compared
    result = json.loads((root / "compare.json").read_text())
    depth = result["depth"]
    assert list(depth["models"]) == ["cnn", "vit"]
    cnn = depth["models"]["cnn"]
    assert cnn["layers"] == ["features.act2", "features.act4"] and cnn["cka"]["features.act4"]["features.act4"] == 1.0
    assert set(cnn["probes"]) == {"features.act2", "features.act4"}
    # The depth layer's rows are the compared layer's images, at the same input points of its own 28 x 28 map.
    early = Bundle(root / "depth" / "cnn" / "features.act2").rows()
    main = _rows(root, result)["cnn"]
    assert np.array_equal(early.image_id, main.image_id)
    assert np.array_equal(np.stack([early.y, early.x], 1), map_positions(np.stack([main.y, main.x], 1), (14, 14), (28, 28)))
    assert cnn["cka"]["features.act2"]["features.act4"] == pytest.approx(cka_matrix([early.activation, main.activation])[0, 1], abs=1e-4)
    assert [m["layers"] for m in depth["matched"]] == [
        {"cnn": "features.act2", "vit": "blocks.0"},
        {"cnn": "features.act4", "vit": "blocks.1"},
    ]


def test_the_page_shows_the_measures(compared: tuple[Path, str]) -> None:
    root, stdout = compared
    html = (root / "index.html").read_text()
    assert 'id="cka-0"' in html and 'id="depth-cnn"' in html and "linear probe" in html
    result = json.loads((root / "compare.json").read_text())
    for path in result["figures"].values():
        assert (root / path).stat().st_size > 1000
    assert {"cka", "cka_depth", "histograms"} <= set(result["figures"])
    assert "atlas compare: 2 models" in stdout


def test_a_model_option_without_a_layer_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "atlas_pipelines.commands.cli", "compare", "--model", "a=efficientnet-lite0", "--model", "b=x:y"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "NAME=SPEC:LAYER" in proc.stderr


def test_the_models_page_in_chromium(compared: tuple[Path, str]) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install Debian's chromium package for the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed: pip install -e '.[test]'")
    errors: list[str] = []
    with atlas_serve(compared[0]) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        page.goto(url)
        page.wait_for_function(
            "window.compare && window.compare.ready && window.compare.groups.every(g => g.views.every(v => v.loaded))", timeout=60_000
        )
        assert page.locator("section.group .panel").count() == 2  # the CNN's atlas beside the ViT's
        assert page.locator("#metrics tbody tr").count() == 2 and "linear probe" in page.locator("#metrics thead").inner_text()
        assert page.locator("#cka-0 tbody tr").count() == 2 and page.locator("#matched-1").count() == 1
        browser.close()
    assert not errors, errors


def test_the_shipped_cnn_against_vit_config_validates_and_names_its_models() -> None:
    from atlas.config import ExperimentConfig, load_config

    config = load_config(REPO / "configs" / "compare_cnn_vit.yaml", [], ExperimentConfig)
    assert config.output.name == "compare_cnn_vit" and config.compare.models is not None
    cnn, vit = config.compare.models["cnn_relu"], config.compare.models["vit_gelu"]
    assert cnn.spec == "outputs/compare_activations/train/relu" and vit.spec == "outputs/compare_activations_vit/train/gelu"
    assert len(cnn.layers or ()) == len(vit.layers or ()) == 3  # matched depth needs as many layers on each side
    assert cnn.layer in (cnn.layers or ()) and vit.layer in (vit.layers or ())
