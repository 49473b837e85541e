"""A one-channel 28 px CNN given as package.module:factory plus a weights file, on Fashion-MNIST."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas.images import open_source
from atlas_pipelines.commands.cli import main


def test_factory_model_on_fashion_mnist(fashion_weights: tuple[Path, Path], tmp_path: Path) -> None:
    weights, root = fashion_weights
    code = main([
        "run", "--model", "atlas.models.zoo:fashion_cnn", "--layer", "features.act5",
        "--images", "torchvision:FashionMNIST?split=test", "--out", str(tmp_path), "--name", "fashion",
        "--scheduler", "sync", "--set", f"model.weights={weights}", "--set", f"images.root={root}",
        "--set", "collect.n_images=400", "--set", "collect.shard_size=100", "--set", "collect.batch_size=100",
        "--set", "collect.positions_per_image=1", "--set", "grid.sizes=[4,8]", "--set", "layout.n_neighbors=10",
        "--set", "render.steps=16", "--set", "render.icon_size=28",
    ])  # fmt: skip
    assert code == 0
    run_dir = tmp_path / "fashion"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["input_size"] == 28 and manifest["input_channels"] == 1 and manifest["channels"] == 128
    assert manifest["n_images"] == 400 and manifest["n_activations"] == 400
    assert manifest["labels"][9] == "Ankle boot"

    # The attribution of a briefly trained classifier already points at the true class more often than chance.
    import zarr

    rows = zarr.open_group(run_dir / "activations" / "rows.zarr", mode="r")
    attribution, label = rows["attribution"][:], rows["label"][:]
    assert set(np.unique(label)) <= set(range(10))
    assert (attribution.argmax(axis=1) == label).mean() > 0.3
    cells = json.loads((run_dir / "levels" / "8" / "cells.json").read_text())
    assert {c["top_classes"][0]["label"] for c in cells} <= set(manifest["labels"])


STRIDED_NET = '''
import torch
from torch import nn


def make() -> nn.Module:
    """Not the comparison's VGG plan: a 5x5 stem, strided 3x3s, GELU, no pooling, 48 channels at the atlas layer."""
    return nn.Sequential(
        nn.Conv2d(1, 24, 5, padding=2), nn.GELU(),
        nn.Conv2d(24, 48, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv2d(48, 48, 3, padding=1), nn.GELU(),
        nn.Conv2d(48, 96, 3, stride=2, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10),
    )
'''


@pytest.fixture(scope="module")
def strided_net(
    fashion_weights: tuple[Path, Path], one_epoch: Callable[..., torch.nn.Module], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[str], Path]]:
    """Another architecture, trained briefly on the same real images, as a user's package.module:factory."""
    import importlib
    import sys

    _, root = fashion_weights
    folder = tmp_path_factory.mktemp("strided")
    (folder / "strided_net.py").write_text(STRIDED_NET)
    sys.path.insert(0, str(folder))
    dataset = open_source("torchvision:FashionMNIST", root=root).dataset()  # type: ignore[attr-defined]
    images = dataset.data[:6144].float().div(255).sub(0.5).div(0.5).unsqueeze(1)
    targets = dataset.targets[:6144]
    torch.manual_seed(0)
    model = one_epoch(importlib.import_module("strided_net").make(), images, targets)
    weights = folder / "strided.pt"
    torch.save(model.state_dict(), weights)
    yield ["--model", "strided_net:make", "--layer", "5", "--set", f"model.weights={weights}", "--set", f"images.root={root}"], root
    sys.path.remove(str(folder))


def test_default_render_settings_are_faithful_on_another_architecture(strided_net: tuple[list[str], Path], tmp_path: Path) -> None:
    """Default render settings (probe, the model's own input size, receptive-field crop) on a model nobody tuned them
    for. Issue 14 asks for top-1 >= 0.9 at the coarsest grid and >= 0.7 at the finer one with mean cosine >= 0.8.
    Neighbouring cells of this 48-channel layer point within a few degrees of each other, so a plain direction
    objective reached the right region but not the right cell (top-1 0.52 / 0.43). The probe now adds the retrieval
    term and, as its top-1 stays below 0.9, four tries: measured 0.92 / 0.90 top-1, cosine 0.94 / 0.97. The coarse
    grid has 25 cells, so 0.9 is 23 of them; the bar below sits two cells lower so that another CPU's rounding in 128
    chaotic optimisation steps cannot fail CI, and still fails if the retrieval term or the tries step stops working
    (0.52 without them)."""
    args, _ = strided_net
    code = main([
        "run", *args, "--images", "torchvision:FashionMNIST?split=test", "--out", str(tmp_path), "--name", "strided",
        "--scheduler", "sync", "--set", "collect.n_images=1500", "--set", "collect.shard_size=500",
        "--set", "collect.positions_per_image=2", "--set", "grid.sizes=[8,16]",
    ])  # fmt: skip
    assert code == 0
    manifest = json.loads((tmp_path / "strided" / "manifest.json").read_text())
    render = manifest["render"]
    assert render["chosen_by"] == "probe" and render["steps"] == 128 and render["icon_size"] == 80
    assert render["coarse_steps"] == 0, "a 28 px canvas is too small to halve: 128 full-size steps"
    field = render["receptive_field"]
    # rendered at the model's own 28 px; the field of a 5x5 and three 3x3s, one strided before the layer: 11 px
    assert render["frame"] == {"canvas": 28, "icon": 80, "views": True} and field["crops"] and field["size"] == 11
    coarse, fine = (level["fidelity"] for level in manifest["levels"])
    assert coarse["mean_cosine"] >= 0.8 and fine["mean_cosine"] >= 0.8, render
    assert coarse["top1"] >= 21 / 25 and fine["top1"] >= 0.7, render
    assert (tmp_path / "strided" / "levels" / "16" / "views").is_dir()
