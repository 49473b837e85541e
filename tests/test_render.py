"""The render stage: icons for every kept cell, faithful to their cells, reused on re-run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.config import ModelConfig
from atlas.featurevis.fidelity import centre_activations, direction_fidelity
from atlas.models import ModelView, load_model
from atlas_pipelines.commands.cli import main

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


@pytest.fixture(scope="module")
def rendered(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("render")
    assert main(["run", "--images", str(photo_folder), "--out", str(out), "--name", "icons", *ARGS]) == 0
    return out / "icons"


def test_every_kept_cell_has_an_icon_with_its_fidelity(rendered: Path) -> None:
    manifest = json.loads((rendered / "manifest.json").read_text())
    assert manifest["render"]["steps"] == 48 and manifest["render"]["icon_size"] == 64
    for level in manifest["levels"]:
        cells = json.loads((rendered / level["cells"]).read_text())
        assert cells, "every grid keeps some cells"
        for cell in cells:
            icon = Image.open(rendered / cell["icon"])
            assert icon.mode == "RGB" and icon.size == (64, 64)
            assert set(cell["fidelity"]) == {"cosine", "rank"}
        assert level["fidelity"]["top1"] == pytest.approx(np.mean([c["fidelity"]["rank"] == 0 for c in cells]), abs=1e-4)


def test_icons_beat_random_noise(rendered: Path) -> None:
    model = load_model(ModelConfig())
    for size in (2, 4):
        cells = json.loads((rendered / "levels" / str(size) / "cells.json").read_text())
        directions = np.load(rendered / "levels" / str(size) / "directions.npy")
        noise = torch.rand(len(cells), 3, 64, 64, generator=torch.Generator().manual_seed(0))
        baseline = direction_fidelity(centre_activations(ModelView.of(model, "blocks.4"), noise), directions)
        icon_cos = np.mean([c["fidelity"]["cosine"] for c in cells])
        icon_top1 = np.mean([c["fidelity"]["rank"] == 0 for c in cells])
        assert icon_cos > baseline.mean_cosine + 0.15
        assert icon_top1 >= baseline.top1 + 0.25 or icon_top1 == 1.0


def test_rerun_reuses_icons_and_missing_batches_are_redone(photo_folder: Path, rendered: Path) -> None:
    icon = next((rendered / "levels" / "4" / "icons").glob("*.png"))
    before = icon.read_bytes()
    for marker in (rendered / "levels" / "4" / "icons").glob(".batch-*.json"):
        marker.unlink()  # as if a kill had landed before this grid's batches finished
    (rendered / ".stages" / "render.json").unlink()
    assert main(["run", "--images", str(photo_folder), "--out", str(rendered.parent), "--name", "icons", *ARGS]) == 0
    manifest = json.loads((rendered / "manifest.json").read_text())
    assert manifest["stages"]["render"]["cached"] is False
    assert icon.read_bytes() == before, "the same seed renders the same icon"
    assert main(["run", "--images", str(photo_folder), "--out", str(rendered.parent), "--name", "icons", *ARGS]) == 0
    assert json.loads((rendered / "manifest.json").read_text())["stages"]["render"]["cached"] is True


def test_an_icon_that_gives_nan_scores_no_match_rather_than_a_perfect_one() -> None:
    directions = np.eye(4, dtype=np.float32)
    activations = directions.copy()
    activations[2] = np.nan  # NaN compares false with everything, so a naive rank would be 0 (a "perfect" match)
    activations[3, 0] = np.inf
    fidelity = direction_fidelity(activations, directions)
    assert fidelity.nonfinite == 2
    assert fidelity.rank.tolist() == [0, 0, 3, 3] and fidelity.cosine.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert fidelity.top1 == 0.5 and np.isfinite(fidelity.mean_cosine)
