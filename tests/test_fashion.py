"""A one-channel 28 px CNN given as package.module:factory plus a weights file, on Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas.config import ImagesConfig
from atlas.images import open_source
from atlas.models.zoo import fashion_cnn
from pipelines.cli import main


@pytest.fixture(scope="module")
def fashion_weights(fashion_available: bool, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Briefly train the zoo CNN on real Fashion-MNIST images and save its state dict."""
    if not fashion_available:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    root = tmp_path_factory.mktemp("datasets")
    dataset = open_source(ImagesConfig(source="torchvision:FashionMNIST", root=root)).dataset()  # type: ignore[attr-defined]
    images = dataset.data[:4096].float().div(255).sub(0.5).div(0.5).unsqueeze(1)
    targets = dataset.targets[:4096]
    torch.manual_seed(0)
    model = fashion_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for start in range(0, len(images), 64):
        loss = torch.nn.functional.cross_entropy(model(images[start : start + 64]), targets[start : start + 64])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    weights = root / "fashion_cnn.pt"
    torch.save(model.state_dict(), weights)
    return weights, root


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
