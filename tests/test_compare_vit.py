"""`atlas compare` inside a transformer: configs/compare_activations_vit.yaml validates, and a tiny setting of it
(two activations, one epoch on 1,000 real Fashion-MNIST images, 200 test images, one small grid) runs end to end
(opt-in: pytest -m slow tests/test_compare_vit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atlas.config import ALL_ACTIVATIONS, ExperimentConfig, load_config
from atlas.models.zoo import DEFAULT_LAYERS, build_classifier
from atlas_pipelines.commands.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "compare_activations_vit.yaml"
TINY = [
    "train.activations=[relu, gelu]",
    "train.epochs=1",
    "train.limit_train_images=1000",
    "train.limit_test_images=200",
    "compare.layers=[]",
    "compare.layers_of=null",
    "collect.n_images=200",
    "collect.shard_size=100",
    "layout.fit_sample=400",
    "layout.n_neighbors=10",
    "grid.sizes=[4]",
    "grid.min_count=2",
    "render.steps=8",
    "tiles.examples_per_cell=2",
    "scheduler.address=sync",
]


def test_the_vit_comparison_config_validates_and_names_layers_the_vit_has() -> None:
    config = load_config(CONFIG, [], ExperimentConfig)
    assert isinstance(config, ExperimentConfig) and config.output.name == "compare_activations_vit"
    assert config.train.architecture == "vit" and config.train.activations == ALL_ACTIVATIONS
    assert config.compare.layer == DEFAULT_LAYERS["vit"] and config.compare.layers_of in config.train.activations
    vit = dict(build_classifier("vit", "gelu", num_classes=10, in_channels=1, width=config.train.width, batch_norm=False).named_modules())
    assert all(layer in vit for layer in (config.compare.layer, *config.compare.layers))


@pytest.mark.slow  # 217 s on 2 cores shared at load 7 (two trainings of about 40 s, then two atlases and the comparison)
def test_a_tiny_vit_comparison_completes(fashion_available: bool, tmp_path: Path) -> None:
    if not fashion_available:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    sets = [a for s in [*TINY, f"output.dir={tmp_path}"] for a in ("--set", s)]
    assert main(["compare", str(CONFIG), *sets]) == 0
    root = tmp_path / "compare_activations_vit"
    result = json.loads((root / "compare.json").read_text())
    assert result["activations"] == ["relu", "gelu"]
    for row in result["metrics"]:
        assert 0.0 < row["test_accuracy"] <= 1.0 and 0.0 < row["trustworthiness"] <= 1.0
    for name in ("relu", "gelu"):
        manifest = json.loads((root / "variants" / name / "manifest.json").read_text())
        assert manifest["layer"] == "blocks.2" and manifest["n_activations"] == 200
        assert manifest["layer_layout"] == {"name": "tokens", "prefix_tokens": 1, "grid": [7, 7]}
        assert manifest["levels"][0]["n_cells"] > 0
