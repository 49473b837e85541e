"""Class atlases, two-class comparisons and the patch experiment, on a small real bundle (EfficientNet-Lite0, real photos)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas.bundle import Bundle, open_bundle
from atlas.classes import ClassRef, class_counts, difference_axis, pair_rows, paste, resolve_class, select_rows, wilson_interval
from atlas.classes.patches import PATCH_KINDS, resize_patch, run_patch_experiment
from atlas.errors import AtlasError
from atlas_pipelines.commands.cli import main

SMALL = [
    "--set", "collect.n_images=60",
    "--set", "model.input_size=96",
    "--set", "collect.positions_per_image=4",
    "--set", "collect.shard_size=20",
    "--set", "layout.fit_sample=300",
    "--set", "layout.n_neighbors=8",
    "--set", "grid.sizes=[3]",
    "--set", "grid.min_count=1",
    "--set", "render.steps=6",
    "--set", "render.icon_size=32",
    "--set", "tiles.examples_per_cell=2",
]  # fmt: skip
CLASSES_SMALL = [
    "--set", "scheduler.address=sync",
    "--set", "classes.min_rows=3",
    "--set", "classes.n_neighbors=5",
    "--set", "classes.grid=3",
    "--set", "classes.pair_grid=4",
    "--set", "classes.min_count=1",
    "--set", "classes.patch.n_images=12",
    "--set", "classes.patch.sizes=[0.3, 0.5]",
    "--set", "classes.patch.icons=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """An atlas of the built-in photos (60 of them; the other 926 are the patch experiment's held-out images)."""
    out = tmp_path_factory.mktemp("classes")
    assert main(["run", "--out", str(out), "--name", "photos", "--scheduler", "sync", *SMALL]) == 0
    return open_bundle(out / "photos")


def top_two(parent: Bundle) -> tuple[ClassRef, ClassRef]:
    store = parent.store()
    counts = class_counts(store, store.layout().n_classes)
    first, second = np.argsort(-counts, kind="stable")[:2]
    labels = parent.manifest["labels"]
    return ClassRef(int(first), labels[first]), ClassRef(int(second), labels[second])


@pytest.fixture(scope="module")
def built(parent: Bundle) -> tuple[Bundle, ClassRef, ClassRef]:
    a, b = top_two(parent)
    args = ["classes", str(parent.root), "--class", a.name, "--class", str(b.index), "--compare", a.name, b.name, *CLASSES_SMALL]
    assert main(args) == 0
    return parent, a, b


def test_class_counts_and_selection_follow_the_top_attribution(parent: Bundle) -> None:
    rows = parent.rows()
    n_classes = rows.attribution.shape[1]
    top = rows.attribution.astype(np.float32).argmax(axis=1)
    store = parent.store()
    assert class_counts(store, n_classes).tolist() == np.bincount(top, minlength=n_classes).tolist()
    a, b = top_two(parent)
    assert select_rows(store, a).tolist() == np.flatnonzero(top == a.index).tolist()
    assert pair_rows(store, a, b).tolist() == np.flatnonzero((top == a.index) | (top == b.index)).tolist()
    best = select_rows(store, a, "top_k", k=7)
    column = rows.attribution[:, a.index].astype(np.float32)
    assert len(best) == 7 and column[best].min() >= np.sort(column)[-7]


def test_classes_resolve_by_name_or_index_and_fail_in_one_line() -> None:
    labels = ["T-shirt/top", "Trouser", "Shirt"]
    assert resolve_class("shirt", labels, 3) == ClassRef(2, "Shirt")
    assert resolve_class(1, labels, 3) == ClassRef(1, "Trouser")
    assert ClassRef(0, "T-shirt/top").folder == "T-shirt_top"
    with pytest.raises(AtlasError) as info:
        resolve_class("Sneaker", labels, 3)
    assert "'Sneaker'" in str(info.value) and "0 to 2" in str(info.value) and "\n" not in str(info.value)


def test_difference_axis_scales_by_the_99th_percentile_and_clips() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    x, scale = difference_axis(a, b)
    assert scale == pytest.approx(np.percentile(np.abs(a - b), 99))
    assert x.min() == -1.0 and x.max() == 1.0 and np.mean(np.abs(x) == 1.0) == pytest.approx(0.01, abs=0.002)
    assert np.all(np.sign(x) == np.sign(a - b))  # right (positive) favours a


def test_class_atlas_is_an_ordinary_bundle_of_that_class(built: tuple[Bundle, ClassRef, ClassRef]) -> None:
    parent, a, b = built
    top = parent.rows().attribution.astype(np.float32).argmax(axis=1)
    for ref in (a, b):
        sub = open_bundle(parent.root / "classes" / ref.folder)
        manifest = sub.manifest
        assert manifest["subset"]["kind"] == "class" and manifest["subset"]["classes"] == [{"index": ref.index, "name": ref.name}]
        assert manifest["n_activations"] == int(np.sum(top == ref.index))
        assert manifest["levels"][0]["grid"] == 3 and (sub.root / "index.html").is_file() and (sub.root / "tiles" / "3.dzi").is_file()
        parent_rows = np.load(sub.root / "parent_rows.npy")
        assert np.array_equal(sub.rows().activation, parent.store().take(parent_rows, ("activation",))["activation"])
        assert np.array_equal(sub.whitening(), parent.whitening())
        level = sub.level(3)
        assert sum(cell.count for cell in level.cells) == manifest["n_activations"]
        assert all(icon is not None for icon in level.icons)
    index = json.loads((parent.root / "classes" / "index.json").read_text())
    assert index["classes"][a.index]["folder"] == f"classes/{a.folder}" and index["classes"][a.index]["rows"] == int(np.sum(top == a.index))
    assert sum(1 for c in index["classes"] if c["folder"]) == 2
    assert index["pairs"][0]["folder"] == f"pairs/{a.folder}__{b.folder}"


def test_pair_puts_the_attribution_difference_on_x(built: tuple[Bundle, ClassRef, ClassRef]) -> None:
    parent, a, b = built
    sub = open_bundle(parent.root / "pairs" / f"{a.folder}__{b.folder}")
    rows = sub.rows()
    top = rows.attribution.astype(np.float32).argmax(axis=1)
    assert set(top.tolist()) <= {a.index, b.index}
    x, scale = difference_axis(rows.attribution[:, a.index], rows.attribution[:, b.index])
    coords = sub.coords()
    assert np.allclose(coords[:, 0], (x + 1) / 2, atol=1e-6)
    assert np.all(coords[top == a.index, 0] >= 0.5)  # a row whose top class is a has attribution a > b: right half
    assert np.all(coords[top == b.index, 0] <= 0.5)
    pair = sub.manifest["pair"]
    assert pair["a"]["name"] == a.name and pair["b"]["name"] == b.name and pair["scale"] == pytest.approx(scale)
    assert sub.manifest["levels"][0]["grid"] == 4


def test_patch_json_reports_every_kind_with_wilson_intervals(built: tuple[Bundle, ClassRef, ClassRef]) -> None:
    parent, a, b = built
    report = json.loads((parent.root / "pairs" / f"{a.folder}__{b.folder}" / "patch.json").read_text())
    # the 926 crops past the 60 collected come from other photos: none may look like a, and then the collected ones are used
    assert (report["held_out"], report["first_image_id"]) in {(True, 60), (False, 0)}
    n = report["n_images"]
    assert 0 < n <= 12
    for kind in PATCH_KINDS:
        assert [s["size"] for s in report[kind]["sizes"]] == report["sizes"] == [29, 48]
        for entry in report[kind]["sizes"]:
            for rule in ("corner", "best_corner"):
                count = entry[rule]
                assert count["n"] == n and count["interval"] == list(wilson_interval(count["flips"], n))
            assert entry["best_corner"]["flips"] >= entry["corner"]["flips"]


def test_too_few_rows_fails_in_one_line_with_the_counts(built: tuple[Bundle, ClassRef, ClassRef], capsys: pytest.CaptureFixture) -> None:
    parent, a, _ = built
    assert main(["classes", str(parent.root), "--class", a.name, *CLASSES_SMALL, "--set", "classes.min_rows=100000"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "classes.min_rows = 100000" in line and f"class {a.name!r}" in line and "top_k" in line


def test_a_class_atlas_of_an_older_parent_renders_as_the_parent_did(tmp_path: Path) -> None:
    """A parent from before render recorded contrast and tries rendered without either: its class atlases do too,
    taking every 'auto' from the parent, so none runs a probe of its own."""
    from atlas.config import AtlasConfig
    from atlas_pipelines.commands.classes import inherited_render

    chosen = {"whiten": "full", "cossim_power": 4.0, "learning_rate": 0.05}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "activation-atlas/1", "render": chosen}))
    render = inherited_render(AtlasConfig(), Bundle(tmp_path))
    assert (render.whiten, render.contrast, render.tries) == ("full", False, 1) and not render.probes()


def test_wilson_interval_matches_known_values() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_patch_experiment_is_seeded_and_pastes_where_it_says() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 5, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)
    )
    images = torch.rand(20, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    icons = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(k)) for k in range(4)]

    def experiment(seed: int) -> dict:
        return run_patch_experiment(model, images, icons[:2], icons[2:], 1, [6, 12], "bottom_right", seed, batch_size=7).to_json()

    first = experiment(3)
    assert first == experiment(3)
    assert all(first[kind]["sizes"][0]["corner"]["n"] == 20 for kind in PATCH_KINDS)
    patch = torch.ones(3, 6, 6)
    pasted = paste(images[:2], patch, "bottom_right")
    assert torch.equal(pasted[:, :, -6:, -6:], torch.ones(2, 3, 6, 6)) and torch.equal(pasted[:, :, :-6], images[:2, :, :-6])
    covering = run_patch_experiment(
        model, images, icons[:1], icons[1:], int(model(resize_patch(icons[0], 24)[None]).argmax()), [24], seed=0
    )
    assert covering.count("icon", 24, "corner").flips == 20  # a patch over the whole image is all the model sees
