"""The path check: each icon is processed, at earlier layers, like its cell's real example patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.bundle import RENDER_FRAME, Bundle, full_view_file
from atlas.config import ModelConfig
from atlas.errors import AtlasError
from atlas.featurevis.pathcheck import choose_layers, early_vectors, path_check
from atlas.models import LoadedModel, ModelView, load_model, resolve_layer
from atlas_pipelines.commands.cli import main
from atlas_pipelines.stages.path import cell_patches

ARGS = [
    "--scheduler", "sync",
    "--set", "model.input_size=128",
    "--set", "collect.positions_per_image=3",
    "--set", "grid.sizes=[2,4]",
    "--set", "grid.min_count=2",
    "--set", "layout.n_neighbors=8",
    "--set", "render.steps=48",
    "--set", "render.icon_size=64",
]  # fmt: skip


# --- the scoring, on constructed vectors ------------------------------------------------------------------------------


def test_own_cell_nearest_ranks_zero_and_a_closer_neighbour_ranks_one() -> None:
    icons = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.0, 0.1]])
    examples = [np.array([[1.0, 0.0, 0.0], [0.8, 0.0, 0.2]]), np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, 1.0]])]
    result = path_check(icons, examples, block=2)  # blocks smaller than the cells: the rank must not depend on them
    assert result.rank.tolist() == [0, 0, 1]  # icon 2 sits nearer cell 0's examples than its own
    mean0 = np.array([0.9, 0.0, 0.1])
    assert result.cosine[0] == pytest.approx(0.9 / np.linalg.norm(mean0), abs=1e-6)
    assert result.cosine[2] == pytest.approx(0.1 / np.linalg.norm(mean0), abs=1e-6)
    assert result.top1 == pytest.approx(2 / 3) and result.cells == 3


def test_cells_without_examples_are_null_and_left_out_of_the_summary() -> None:
    icons = np.eye(3)
    examples = [np.eye(3)[[0]], np.zeros((0, 3)), np.array([[np.nan, 0.0, 1.0]])]  # no patch; an unreadable one
    result = path_check(icons, examples)
    assert result.checked.tolist() == [True, False, False]
    assert result.records() == [{"cosine": 1.0, "rank": 0}, None, None]
    assert result.cells == 1 and result.top1 == 1.0 and result.mean_cosine == pytest.approx(1.0)
    empty = path_check(np.zeros((2, 3)), [np.zeros((0, 3)), np.zeros((0, 3))])
    assert empty.cells == 0 and empty.top1 == 0.0 and empty.mean_cosine == 0.0


def test_a_non_finite_icon_scores_no_match_rather_than_a_perfect_one() -> None:
    icons = np.eye(4)
    icons[2] = np.nan  # NaN compares false with everything: a naive rank would be 0
    icons[3, 0] = np.inf
    result = path_check(icons, [row[None] for row in np.eye(4)])
    assert result.nonfinite == 2
    assert result.rank.tolist() == [0, 0, 3, 3] and result.cosine.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert result.top1 == 0.5 and np.isfinite(result.mean_cosine)


# --- choosing and feeding the early layers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(ModelConfig(input_size=128))


def test_auto_layers_come_before_the_atlas_layer_and_a_wrong_name_is_one_line(model: LoadedModel) -> None:
    assert choose_layers(model, "blocks.4") == ["blocks.0", "blocks.2"]
    assert choose_layers(model, "blocks.4", ["blocks.1"]) == ["blocks.1"]
    with pytest.raises(AtlasError, match=r"^path_check.layers 'blokcs.1' is not a layer of efficientnet-lite0; closest: blocks.1"):
        choose_layers(model, "blocks.4", ["blokcs.1"])


def test_early_vectors_feed_each_size_and_weigh_layers_equally(model: LoadedModel) -> None:
    layers = [resolve_layer(model, name) for name in ("blocks.0", "blocks.2")]
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.rand(3, 64, 64, generator=generator),
        torch.rand(3, 40, 40, generator=generator),
        torch.rand(3, 64, 64, generator=generator),
    ]
    vectors = early_vectors(ModelView.of(model, "blocks.4"), layers, images, batch_size=1)
    assert vectors.shape == (3, 16 + 40)  # blocks.0 has 16 channels, blocks.2 40
    assert np.allclose(np.linalg.norm(vectors[:, :16], axis=1), 1.0) and np.allclose(np.linalg.norm(vectors[:, 16:], axis=1), 1.0)
    one = early_vectors(ModelView.of(model, "blocks.4"), layers, images[1:2])
    assert np.allclose(one[0], vectors[1], atol=1e-5), "batched by size equals one at a time"


# --- a real run ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checked(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("path")
    assert main(["run", "--images", str(photo_folder), "--out", str(out), "--name", "path", *ARGS]) == 0
    return out / "path"


def _vectors(bundle: Bundle, names: list[str], model: LoadedModel, layers: list[torch.nn.Module]) -> np.ndarray:
    images = [torch.from_numpy(np.asarray(bundle.image(n).convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0) for n in names]
    return early_vectors(ModelView.of(model, "blocks.4"), layers, images)


def test_every_level_has_its_path_check_in_manifest_and_cells(checked: Path) -> None:
    manifest = json.loads((checked / "manifest.json").read_text())
    assert manifest["stages"]["path"]["cached"] is False
    for level in manifest["levels"]:
        records = json.loads((checked / "levels" / str(level["grid"]) / "path.json").read_text())
        cells = json.loads((checked / level["cells"]).read_text())
        assert len(records) == len(cells) and [c["path_check"] for c in cells] == records
        summary = level["path_check"]
        assert summary["layers"] == ["blocks.0", "blocks.2"]
        scored = [r for r in records if r is not None]
        assert summary["cells"] == len(scored) > 0
        assert summary["top1"] == pytest.approx(np.mean([r["rank"] == 0 for r in scored]), abs=1e-4)
        assert summary["mean_cosine"] == pytest.approx(np.mean([r["cosine"] for r in scored]), abs=1e-3)
        statistics = level["image_statistics"]  # the icons' spectrum and colour beside their examples'
        assert statistics["icons"]["images"] == len(cells) and statistics["examples"]["images"] > 0
        for side in ("icons", "examples"):
            assert 0.0 < statistics[side]["spectral_slope"] < 6.0 and statistics[side]["colourfulness"] >= 0.0
    assert Bundle(checked).path_check(manifest["levels"][0]["grid"]) is not None


def test_examples_are_nearer_their_own_cell_and_icons_nearer_them_than_noise(checked: Path, model: LoadedModel) -> None:
    bundle = Bundle(checked)
    manifest = bundle.manifest
    per_cell, written = manifest["examples"]["per_cell"], bundle.patches()
    for level in manifest["levels"]:
        layers = [resolve_layer(model, name) for name in level["path_check"]["layers"]]
        cells = bundle.grid_cells(level["grid"])
        patches = [cell_patches(cell, per_cell, written) for cell in cells]
        halves = [(names[: len(names) // 2], names[len(names) // 2 :]) for names in patches if len(names) >= 2]
        first = np.stack([_vectors(bundle, a, model, layers).mean(axis=0) for a, _ in halves])
        second = [_vectors(bundle, b, model, layers) for _, b in halves]
        split = path_check(first, second)
        chance = np.mean([1.0 / len(halves)])
        print(
            f"grid {level['grid']}: examples' half against half top-1 {split.top1:.2f} (chance {chance:.2f}), cosine {split.mean_cosine:.3f}"
        )
        if level["grid"] == max(lv["grid"] for lv in manifest["levels"]):  # a 2 x 2 grid's quadrants mix their content
            assert len(halves) >= 5 and split.top1 >= 2 * chance, "a cell's own examples are nearer each other than other cells'"

        examples = [_vectors(bundle, names, model, layers) if names else np.zeros((0, 56)) for names in patches]
        icons = _vectors(bundle, [bundle.fed_image(c.icon) for c in cells], model, layers)
        size = Image.open(bundle.path(cells[0].icon)).size[0]
        noise = list(torch.rand(len(cells), 3, size, size, generator=torch.Generator().manual_seed(0)))
        noisy = path_check(early_vectors(ModelView.of(model, "blocks.4"), layers, noise), examples)
        icon_check = path_check(icons, examples)
        recorded = [r.cosine for r in bundle.path_check(level["grid"]) or [] if r is not None]
        assert icon_check.mean_cosine == pytest.approx(np.mean(recorded), abs=1e-3), "the stage scores what the model sees"
        print(f"grid {level['grid']}: icons cosine {icon_check.mean_cosine:.3f} top-1 {icon_check.top1:.2f}; noise {noisy.mean_cosine:.3f}")
        assert icon_check.mean_cosine > noisy.mean_cosine + 0.05, "the check tells an icon from noise"


def test_the_full_view_is_what_is_checked_when_render_kept_one(checked: Path) -> None:
    """Render records once whether its icons have full views (render/frame.json); fidelity, the path check and the
    cells all ask the bundle, which reads that record. A bundle from before the record is looked up on disk."""
    cell = Bundle(checked).grid_cells(4)[0]
    frame = Bundle(checked).render_frame
    assert frame is not None and isinstance(frame["views"], bool)
    recorded = full_view_file(cell.icon) if frame["views"] else cell.icon
    assert Bundle(checked).fed_image(cell.icon) == recorded
    assert (checked / recorded).is_file(), "what the record names was written"
    record = checked / RENDER_FRAME
    saved_record = record.read_bytes()
    record.unlink()  # as a bundle rendered before the record existed
    view = checked / full_view_file(cell.icon)
    kept = view.read_bytes() if view.is_file() else None
    try:
        view.unlink(missing_ok=True)
        assert Bundle(checked).fed_image(cell.icon) == cell.icon, "without a full view, the icon itself"
        view.parent.mkdir(exist_ok=True)
        if kept is None:
            Image.new("RGB", (96, 96), (128, 64, 32)).save(view)
        else:
            view.write_bytes(kept)
        assert Bundle(checked).fed_image(cell.icon) == full_view_file(cell.icon) == f"levels/4/views/{view.name}"
    finally:
        record.write_bytes(saved_record)
        if kept is None:
            view.unlink(missing_ok=True)


def test_other_layers_rerun_the_path_stage_and_the_probe_and_a_wrong_one_fails_first(photo_folder: Path, checked: Path) -> None:
    """With render settings left to a probe, the probe scores the path check too (issue 25), so render is keyed by
    the path layers as well; everything before render stays cached."""
    argv = ["run", "--images", str(photo_folder), "--out", str(checked.parent), "--name", "path", *ARGS]
    assert main([*argv, "--set", "path_check.layers=[blocks.1]"]) == 0
    manifest = json.loads((checked / "manifest.json").read_text())
    assert manifest["stages"]["path"]["cached"] is False and manifest["stages"]["render"]["cached"] is False
    assert all(manifest["stages"][name]["cached"] for name in ("collect", "layout", "grid", "examples"))
    assert all(level["path_check"]["layers"] == ["blocks.1"] for level in manifest["levels"])
    before = (checked / "manifest.json").read_bytes()
    assert main([*argv, "--set", "path_check.layers=[blocks.9]"]) == 2
    assert (checked / "manifest.json").read_bytes() == before, "refused before any work"
