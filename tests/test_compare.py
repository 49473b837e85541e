"""Training variants per activation function and comparing their atlases, on real Fashion-MNIST.

The end-to-end fixture runs `atlas compare` as a user would, on a quick
setting of configs/compare_activations.yaml (three activations, one short
epoch on 2,000 images, 300 test images, small grids, few render steps).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_viewer_browser import CHROMIUM, CHROMIUM_ARGS, atlas_serve, child_env

from atlas.bundle import Bundle
from atlas.compare.align import alignment_error, independent_layouts, neighbour_agreement
from atlas.compare.similarity import cka_matrix, linear_probe, matrix_of
from atlas.config import ALL_ACTIVATIONS, LayoutConfig, ModelConfig, TrainConfig
from atlas.errors import AtlasError
from atlas.models import load_model, resolve_layer
from atlas.models.zoo import ARCHITECTURES, build_classifier
from atlas.train.data import to_model_input
from atlas.train.trainer import CHECKPOINT, train_variant
from atlas_pipelines.commands.train import schedule_of, training_data, variant_for
from atlas_pipelines.stages.layout import layout_estimator

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "train.activations=[relu, tanh, sigmoid]",
    "train.epochs=1",
    "train.limit_train_images=2000",
    "train.limit_test_images=600",
    "compare.layers=[features.act2, features.act5]",
    "collect.n_images=300",
    "collect.shard_size=150",
    "grid.sizes=[4, 8]",
    "render.steps=16",
    "tiles.examples_per_cell=2",
    "dictionary.steps=300",  # a sparse dictionary per variant (issue 24): quick, and without feature icons
    "dictionary.batch_size=128",
    "dictionary.icons=false",
]


@pytest.fixture(scope="module")
def fashion(fashion_available: bool) -> None:
    if not fashion_available:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")


def small_config(**overrides: Any) -> TrainConfig:
    return TrainConfig(**{"limit_train_images": 512, "limit_test_images": 256, "epochs": 2, "batch_size": 64, **overrides})


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_activation_builds_and_trains_a_step(fashion: None, architecture: str) -> None:
    data = training_data(small_config(limit_train_images=64, limit_test_images=8))
    x = to_model_input(data.train.images[:64], data.preprocessing)
    y = torch.from_numpy(data.train.labels[:64])
    for name in (*ALL_ACTIVATIONS, "Hardswish", "CELU"):
        torch.manual_seed(0)
        model = build_classifier(architecture, name, num_classes=10, in_channels=1, width=8, batch_norm=False)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), name
        changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert changed == len(before), f"{architecture}/{name}: {changed} of {len(before)} parameters moved"
    with pytest.raises(AtlasError, match="valid names: relu, leaky_relu"):
        build_classifier(architecture, "swishy")


def test_same_seed_trains_identically_and_a_killed_run_resumes(fashion: None, tmp_path: Path) -> None:
    config = small_config()
    data = training_data(config)
    variant = variant_for(config, "gelu", data)
    first = train_variant(variant, data, schedule_of(config), tmp_path / "a")
    second = train_variant(variant, data, schedule_of(config), tmp_path / "b")
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "images_per_second")} for e in h]  # noqa: E731
    assert strip(first["history"]) == strip(second["history"])
    a = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(message: str) -> None:
        if "epoch 1/" in message:
            raise Killed

    with pytest.raises(Killed):
        train_variant(variant, data, schedule_of(config), tmp_path / "c", log=kill_after_first_epoch)
    assert (tmp_path / "c" / CHECKPOINT).exists() and not (tmp_path / "c" / "weights.pt").exists()
    messages: list[str] = []
    resumed = train_variant(variant, data, schedule_of(config), tmp_path / "c", log=messages.append)
    assert any("resuming after epoch 1" in m for m in messages)
    assert [m for m in messages if "epoch 1/" in m] == []  # epoch 1 was not trained again
    c = torch.load(tmp_path / "c" / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert strip(resumed["history"]) == strip(first["history"])


def test_dead_units_are_counted_where_the_gradient_is_zero(fashion: None, tmp_path: Path) -> None:
    """A ReLU unit whose bias pushes it below zero everywhere is dead; the same unit under Leaky ReLU is not."""
    config = small_config(epochs=1)
    data = training_data(config)
    metrics = {}
    for name in ("relu", "leaky_relu"):
        metrics[name] = train_variant(variant_for(config, name, data), data, schedule_of(config), tmp_path / name)
    assert metrics["leaky_relu"]["units"]["dead_fraction"] == 0.0
    from atlas.train.units import activation_layers, unit_statistics

    model = load_model(ModelConfig(spec=str(tmp_path / "relu"), layer="features.act5")).module
    with torch.no_grad():
        model.features.conv5.bias[:3] = -1e6  # three units that can never fire
    layers = activation_layers(model, torch.nn.ReLU)
    stats = unit_statistics(model, layers, [to_model_input(data.test.images, data.preprocessing)], 1e-3)
    last = stats["layers"][-1]
    assert last["layer"] == "features.act5"
    assert last["dead_fraction"] >= 3 / last["units"]
    assert last["never_positive_fraction"] >= 3 / last["units"]


@pytest.fixture(scope="module")
def compared(fashion: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`atlas compare configs/compare_activations.yaml` on the quick setting, as a command."""
    out = tmp_path_factory.mktemp("compare")
    sets = [a for s in [*QUICK, f"output.dir={out}"] for a in ("--set", s)]
    command = [sys.executable, "-m", "atlas_pipelines.commands.cli", "compare", "configs/compare_activations.yaml", *sets]
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "compare_activations", proc.stdout


def check_claim_verdicts(result: dict[str, Any], root: Path) -> None:
    """Each claim's verdict is what its stated rule gives on the numbers this run recorded, worked out here.

    The numbers come from compare.json (its metrics table, each claim's ``measured`` text) and from each trained
    variant's metrics.json, never from atlas.compare.claims; a claim whose variants were not all trained must say
    "not tested" (None), not guess.
    """
    trained = set(result["activations"])
    table = {row["variant"]: row for row in result["metrics"]}
    variant = {n: json.loads((root / "train" / n / "metrics.json").read_text()) for n in result["activations"]}
    for n in trained:  # the table and the variant's own record agree, so either may be used below
        assert table[n]["dead_fraction"] == variant[n]["units"]["dead_fraction"], n
    claims = {c["claim"]: c for c in result["claims"]}
    assert len(claims) == 6, list(claims)

    def find(words: str) -> dict[str, Any]:
        (claim,) = [c for text, c in claims.items() if words in text]
        assert set(claim) >= {"claim", "measure", "measured", "rule", "held"}
        return claim

    def verdict(claim: dict[str, Any], needed: set[str], expected: bool | None = None) -> None:
        if not needed <= trained:
            assert claim["held"] is None and claim["rule"] == "", claim
        else:
            assert claim["rule"] and claim["held"] is expected, (claim, expected)

    # ReLU cheaper than sigmoid and tanh: median time ratio over the stated margin and lower quartile over 1, for
    # both. The ratios are printed to 2 decimals, so a figure on the threshold at that precision decides nothing.
    cost = find("cheaper to compute")
    if {"relu", "sigmoid", "tanh"} <= trained:
        ratios = {n: (float(m), float(lo)) for n, m, lo in re.findall(r"(\w+) (\d+\.\d+)x \((\d+\.\d+)-\d+\.\d+\)", cost["measured"])}
        assert set(ratios) == {"sigmoid", "tanh"}, cost["measured"]
        margin = float(re.search(r"over (\d+\.\d+)x ReLU's time", cost["rule"]).group(1))
        assert "lower quartile above 1" in cost["rule"], cost["rule"]
        half = 0.005
        if all(m - half > margin and lo - half > 1.0 for m, lo in ratios.values()):
            verdict(cost, {"relu", "sigmoid", "tanh"}, True)
        elif any(m + half <= margin or lo + half <= 1.0 for m, lo in ratios.values()):
            verdict(cost, {"relu", "sigmoid", "tanh"}, False)
        else:
            assert isinstance(cost["held"], bool), cost
    else:
        verdict(cost, {"relu", "sigmoid", "tanh"})

    # Dead units: ReLU has some, Leaky ReLU, ELU and GELU have none.
    dead = find("dead units")
    free = ("leaky_relu", "elu", "gelu")
    if {"relu", *free} <= trained:
        fraction = {n: table[n]["dead_fraction"] for n in ("relu", *free)}
        verdict(dead, {"relu", *free}, fraction["relu"] > 0 and all(fraction[n] == 0 for n in free))
    else:
        verdict(dead, {"relu", *free})
        assert dead["measured"] == "not trained: " + ", ".join(n for n in ("relu", *free) if n not in trained), dead

    # Sigmoid's gradients vanish: its first-conv / classifier gradient-norm ratio over the first steps is under a
    # tenth of ReLU's. The norms are per weight layer in depth order, first conv first, classifier last.
    vanish = find("vanish with depth")
    if {"relu", "sigmoid"} <= trained:
        decay = {}
        for n in ("relu", "sigmoid"):
            norms = variant[n]["history"][0]["grad_norms_first_steps"]
            assert len(norms) >= 2 and norms[-1] > 0, norms
            decay[n] = norms[0] / norms[-1]
        assert f"sigmoid {decay['sigmoid']:.2g}, ReLU {decay['relu']:.2g}" in vanish["measured"], (vanish, decay)
        assert "under a tenth of ReLU's" in vanish["rule"], vanish["rule"]
        verdict(vanish, {"relu", "sigmoid"}, decay["sigmoid"] < decay["relu"] / 10)
    else:
        verdict(vanish, {"relu", "sigmoid"})

    # GELU over ReLU in a transformer: only a ViT experiment with both tests it, by test accuracy over a margin.
    transformer = find("transformer default")
    if result["architecture"] == "vit" and {"relu", "gelu"} <= trained:
        margin = float(re.search(r"by more than (\d+\.\d+)", transformer["rule"]).group(1))
        verdict(transformer, {"relu", "gelu"}, variant["gelu"]["test_accuracy"] - variant["relu"]["test_accuracy"] > margin)
    else:
        assert transformer["held"] is None and transformer["rule"] == "", transformer

    # The smooth trio alike, unlike ReLU: from the CKA matrix of the variants' group, recorded in compare.json.
    smooth = find("smooth ReLU-likes")
    cka = result["groups"][0]["cka"]
    if {"relu", "gelu", "silu", "mish"} <= trained:
        trio = ("gelu", "silu", "mish")
        among = [cka[a][b] for a in trio for b in trio if a < b]
        verdict(smooth, {"relu", *trio}, min(among) > max(cka[a]["relu"] for a in trio))
    else:
        assert smooth["held"] is None and smooth["rule"] == "", smooth

    # Zero-centred: each unit's |mean| / std, averaged over the units of a layer and then over the layers, is under
    # 1/2 for tanh and not for sigmoid.
    centred = find("zero-centred")
    if {"tanh", "sigmoid"} <= trained:
        centring = {}
        for n in ("tanh", "sigmoid"):
            layers = variant[n]["units"]["layers"]
            centring[n] = float(np.mean([layer["centring"] for layer in layers]))
        assert f"tanh {centring['tanh']:.2f}, sigmoid {centring['sigmoid']:.2f}" in centred["measured"], (centred, centring)
        assert "|mean| < std / 2" in centred["rule"], centred["rule"]
        verdict(centred, {"tanh", "sigmoid"}, centring["tanh"] < 0.5 and not centring["sigmoid"] < 0.5)
    else:
        verdict(centred, {"tanh", "sigmoid"})


def test_compare_writes_a_bundle_per_variant_and_compare_json(compared: tuple[Path, str]) -> None:
    root, printed = compared
    result = json.loads((root / "compare.json").read_text())
    assert result["activations"] == ["relu", "tanh", "sigmoid"]
    assert [row["variant"] for row in result["metrics"]] == ["relu", "tanh", "sigmoid"]
    for row in result["metrics"]:
        assert 0.0 < row["test_accuracy"] <= 1.0 and 0.0 <= row["dead_fraction"] <= 1.0
        assert 0.0 < row["trustworthiness"] <= 1.0 and 0.0 < row["class_purity"] <= 1.0
    assert len(result["claims"]) == 6
    check_claim_verdicts(result, root)
    assert [g["kind"] for g in result["groups"]] == ["activations", "layers"]
    for name in ("relu", "tanh", "sigmoid"):
        bundle = root / "variants" / name
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["format"] == "activation-atlas/1"
        assert manifest["model"] == str(root / "train" / name)  # a trained variant is a model spec
        assert manifest["layer"] == "features.act5"
        for level in manifest["levels"]:
            assert (bundle / level["dzi"]).exists() and (bundle / level["cells"]).exists()
    image_ids = [np.asarray(json.loads((root / "variants" / n / "manifest.json").read_text())["n_activations"]) for n in ("relu", "tanh")]
    assert image_ids[0] == image_ids[1] == 300
    for figure in result["figures"].values():
        assert (root / figure).stat().st_size > 5_000
    assert "dictionaries" in result["figures"]
    assert "atlas serve" in printed


def test_every_group_has_the_cka_of_its_rows_and_every_panel_a_probe(compared: tuple[Path, str]) -> None:
    """Issue 26: the variants' CKA matrix (and the layers', across depth) and each layer's probe, from the rows."""
    root, _ = compared
    result = json.loads((root / "compare.json").read_text())
    for group in result["groups"]:
        rows = [Bundle(root / p["bundle"]).rows() for p in group["panels"]]
        names, matrix = matrix_of(group["cka"])
        assert names == [p["name"] for p in group["panels"]]
        assert np.allclose(matrix, cka_matrix([r.activation for r in rows]), atol=1e-4)
        assert group["rows"]["match"] == ("same" if group["kind"] == "activations" else "nearest") and group["rows"]["count"] == 300
        for panel, r in zip(group["panels"], rows, strict=True):
            assert panel["probe"] == linear_probe(r.activation, r.label, seed=0, test_fraction=0.3)
    assert {"cka"} <= set(result["figures"]) and "linear CKA" in (root / "index.html").read_text()


def test_every_variant_gets_a_dictionary_of_one_shape_and_its_figures_in_the_table(compared: tuple[Path, str]) -> None:
    """Issue 24 item 6: one dictionary per variant, the same width and k, its quality in the measurements and page."""
    root, _ = compared
    result = json.loads((root / "compare.json").read_text())
    entries = {n: json.loads((root / "variants" / n / "manifest.json").read_text())["dictionary"] for n in result["activations"]}
    assert len({(e["features"], e["k"]) for e in entries.values()}) == 1, {n: (e["features"], e["k"]) for n, e in entries.items()}
    assert next(iter(entries.values()))["k"] == 64 // 8  # features.act5 has 64 channels: k = channels / 8
    for row in result["metrics"]:
        entry = entries[row["variant"]]
        quality = entry["quality"]
        assert row["sae_variance_explained"] == quality["variance_explained"] and 0.0 < quality["variance_explained"] <= 1.0
        assert row["sae_dead_fraction"] == quality["dead_fraction"]
        records = json.loads((root / "variants" / row["variant"] / entry["features_file"]).read_text())
        density = float(np.mean([record["density"] for record in records]))  # each feature's share of rows where active
        assert row["sae_mean_density"] == pytest.approx(density, rel=1e-3, abs=1e-6)
    page = (root / "index.html").read_text()
    assert "SAE variance explained" in page and "figures/dictionaries.png" in page
    # The layers group trains one per layer too, each at its own channels' shape.
    for layer in ("features.act2", "features.act5"):
        manifest = json.loads((root / "layers" / layer / "manifest.json").read_text())
        assert manifest["dictionary"]["k"] == max(1, manifest["channels"] // 8), layer


def test_aligned_layouts_keep_the_same_images_together(compared: tuple[Path, str]) -> None:
    """Aligned: the same rows sit near each other across variants, far more than with one UMAP per variant."""
    from atlas.collect import ActivationStore

    root, _ = compared
    names = ["relu", "tanh", "sigmoid"]
    aligned = [np.load(root / "variants" / ".aligned" / f"{n}.npy") for n in names]
    for n, coords in zip(names, aligned):
        assert np.array_equal(np.load(root / "variants" / n / "layout" / "coords.npy"), coords)
    activations = [ActivationStore(root / "variants" / n / "activations").read().activation for n in names]
    unaligned = independent_layouts(activations, layout_estimator(LayoutConfig(), seed=0))
    assert alignment_error(aligned) < 0.6 * alignment_error(unaligned), (alignment_error(aligned), alignment_error(unaligned))
    # Alignment moves rows, it does not rebuild each layout: local structure stays about as it was.
    assert neighbour_agreement(aligned) > 0.5 * neighbour_agreement(unaligned)


def test_a_trained_variant_runs_like_any_model(compared: tuple[Path, str]) -> None:
    root, _ = compared
    model = load_model(ModelConfig(spec=str(root / "train" / "tanh"), layer="features.act5"))
    assert model.labels is not None and model.labels[0] == "T-shirt/top"
    assert isinstance(resolve_layer(model, "features.act5"), torch.nn.Tanh)
    with pytest.raises(AtlasError, match="without model.json"):
        load_model(ModelConfig(spec=str(root / "variants"), layer="x"))


@pytest.fixture(scope="module")
def compare_url(compared: tuple[Path, str]) -> Iterator[str]:
    with atlas_serve(compared[0]) as url:
        yield url


def test_comparison_page_in_chromium(compared: tuple[Path, str], compare_url: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install Debian's chromium package for the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed: pip install -e '.[test]'")
    errors: list[str] = []
    failed: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(compare_url)
        page.wait_for_function(
            "window.compare && window.compare.ready && window.compare.groups.every(g => g.views.every(v => v.loaded))", timeout=60_000
        )
        groups = page.locator("section.group")
        assert groups.count() == 2
        assert groups.nth(0).locator(".panel").count() == 3  # one atlas per variant
        assert groups.nth(1).locator(".panel").count() == 2  # one per compared layer
        assert page.locator("#metrics tbody tr").count() == 3
        assert page.locator("#metrics thead th").count() >= 12
        assert page.locator("#claims tbody tr").count() == 6

        # Hovering one atlas outlines the same cell in every atlas of the group and says what each holds.
        box = groups.nth(0).locator(".osd").nth(0).bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        page.wait_for_function("window.compare.groups[0].hovered !== null")
        infos = groups.nth(0).locator(".info").all_inner_texts()
        assert all(re.search(r"activations|empty cell", text) for text in infos), infos
        shown = "window.compare.groups[0].views.filter(v => v.mark.isConnected && getComputedStyle(v.mark).display !== 'none').length"
        assert page.evaluate(shown) == 3

        # Zooming one pans and zooms the others with it.
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(800)
        zooms = page.evaluate("window.compare.groups[0].views.map(v => v.viewer.viewport.getZoom())")
        assert zooms[0] > 1.1 and max(zooms) - min(zooms) < 1e-6 * max(zooms), zooms
        page.screenshot(path=str(compared[0] / "screenshot.png"), full_page=True)
        page.mouse.move(2, 2)  # leaving the atlas takes the outline away again
        page.wait_for_function("window.compare.groups[0].hovered === null")
        assert page.evaluate(shown) == 0
        link = groups.nth(0).locator(".panel h3 a").nth(1)
        assert link.get_attribute("href") == "variants/tanh/"
        assert page.request.get(compare_url + "variants/tanh/").ok  # each panel opens its atlas's own viewer
        assert page.evaluate("window.compare.errors") == []
        browser.close()
    assert errors == [] and failed == [], (errors, failed)


def test_atlas_train_command_skips_trained_variants_and_names_bad_activations(
    fashion: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from atlas_pipelines.commands.cli import main

    sets = [
        "train.activations=[relu, elu]", "train.epochs=1", "train.limit_train_images=256", "train.limit_test_images=64",
        f"output.dir={tmp_path}", "scheduler.address=sync",
    ]  # fmt: skip
    args = ["train", "configs/compare_activations.yaml", *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0
    for name in ("relu", "elu"):
        folder = tmp_path / "compare_activations" / "train" / name
        assert {"weights.pt", "model.json", "metrics.json", "checkpoint.pt"} <= {p.name for p in folder.iterdir()}
    capsys.readouterr()
    assert main(args) == 0
    assert "already trained (cached)" in capsys.readouterr().out
    assert main([*args, "--set", "train.activations=[relu, swishy]"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "swishy" in error and "leaky_relu" in error
