"""Issue 22's icon target on a transformer: the trained tiny ViT's ``blocks.2`` atlas with default render settings.

Its icons must reach their cells as a CNN's do (top-1 >= 0.9 on the coarsest grid, >= 0.7 on the finer, mean
cosine >= 0.8), read from the fidelity the render stage itself records in the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atlas_pipelines.commands.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vit_atlas(trained_tiny_vit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The atlas of 5,000 Fashion-MNIST test images (4 patch tokens each, the default) on grids 5 and 10; render as
    configured by default."""
    out = tmp_path_factory.mktemp("vit-atlas")
    code = main([
        "run", "--model", str(trained_tiny_vit), "--layer", "blocks.2", "--images", "torchvision:FashionMNIST?split=test",
        "--out", str(out), "--name", "vit", "--scheduler", "sync", "--until", "render",
        "--set", "collect.n_images=5000", "--set", "grid.sizes=[5,10]",
    ])  # fmt: skip
    assert code == 0
    return out / "vit"


def test_the_tiny_vits_icons_reach_their_cells_with_default_settings(vit_atlas: Path) -> None:
    manifest = json.loads((vit_atlas / "manifest.json").read_text())
    assert manifest["layer_layout"]["name"] == "tokens" and manifest["n_images"] == 5000
    coarse, fine = ({**level["fidelity"], "grid": level["grid"]} for level in manifest["levels"])
    assert (coarse["grid"], fine["grid"]) == (5, 10)
    assert coarse["top1"] >= 0.9, coarse
    assert fine["top1"] >= 0.7, fine
    assert min(coarse["mean_cosine"], fine["mean_cosine"]) >= 0.8, (coarse, fine)
