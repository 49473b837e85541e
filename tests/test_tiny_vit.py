"""The tiny ViT of the training zoo: its token layout, its training on real Fashion-MNIST, its model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atlas.config import ModelConfig, TrainConfig
from atlas.errors import AtlasError
from atlas.models import load_model
from atlas.models.zoo import DEFAULT_LAYERS, TinyViT, build_classifier, check_input_size
from atlas.train.data import to_model_input
from atlas.train.trainer import evaluate
from atlas_pipelines.commands.train import training_data

pytestmark = pytest.mark.usefixtures("one_thread")


def block_outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every block's output, captured by forward hooks as atlas captures a layer."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(f"blocks.{i}").register_forward_hook(lambda _m, _i, out, i=i: outputs.__setitem__(f"blocks.{i}", out))
        for i in range(4)
    ]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def test_blocks_emit_a_class_token_then_the_patches_row_major() -> None:
    torch.manual_seed(0)
    model = build_classifier("vit", "gelu", width=16, batch_norm=False).eval()
    assert isinstance(model, TinyViT)
    assert model.num_prefix_tokens == 1 and model.patch_embed.grid_size == (7, 7)
    assert DEFAULT_LAYERS["vit"] == "blocks.2"
    x = torch.randn(3, 1, 28, 28)
    outputs = block_outputs(model, x)
    assert {name: tuple(out.shape) for name, out in outputs.items()} == {f"blocks.{i}": (3, 50, 64) for i in range(4)}
    # A pixel in patch row 2, column 5 changes that patch's embedding alone: token 1 + 2 * 7 + 5.
    moved = x.clone()
    moved[:, :, 2 * 4 + 1, 5 * 4 + 3] += 1.0
    with torch.no_grad():
        changed = (model.patch_embed(moved) - model.patch_embed(x)).abs().amax(dim=(0, 2))
    assert changed.nonzero().flatten().tolist() == [2 * 7 + 5]


def test_the_vit_refuses_what_it_cannot_be() -> None:
    with pytest.raises(AtlasError, match="train.input_size 30 is not a multiple of the vit's 4 px patches"):
        build_classifier("vit", "relu", batch_norm=False, input_size=30)
    with pytest.raises(AtlasError, match="train.input_size 30 is not a multiple"):
        check_input_size("vit", 30)  # what `atlas train` checks before training any variant
    check_input_size("vgg", 30)  # the CNNs pool globally: any size goes
    with pytest.raises(AtlasError, match="train.batch_norm"):
        build_classifier("vit", "relu", batch_norm=True)
    with pytest.raises(ValueError, match="no batch norm"):
        TrainConfig(architecture="vit", batch_norm=True)
    assert build_classifier("vit", "relu", width=4, batch_norm=False, input_size=32)(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_a_trained_vit_folder_loads_with_the_logits_it_was_trained_to(trained_tiny_vit: Path) -> None:
    """The model card rebuilds the ViT (input size included): the loaded model scores exactly what training recorded."""
    card = json.loads((trained_tiny_vit / "model.json").read_text())
    assert card["kwargs"] == {
        "architecture": "vit",
        "activation": "gelu",
        "num_classes": 10,
        "in_channels": 1,
        "width": 16,
        "batch_norm": False,
        "input_size": 28,
    }
    metrics = json.loads((trained_tiny_vit / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.65  # 10 classes: chance is 0.1
    loaded = load_model(ModelConfig(spec=str(trained_tiny_vit), layer="head"))
    assert isinstance(loaded.module, TinyViT) and loaded.labels is not None and loaded.labels[0] == "T-shirt/top"
    data = training_data(TrainConfig(architecture="vit", limit_train_images=6000, limit_test_images=1000), log=lambda _m: None)
    loss, accuracy = evaluate(loaded.module, data.test, data)
    assert accuracy == metrics["test_accuracy"]
    assert loss == pytest.approx(metrics["history"][-1]["test_loss"], rel=1e-6)
    x = to_model_input(data.test.images[:8], data.preprocessing)
    again = build_classifier(**card["kwargs"])
    again.load_state_dict(torch.load(trained_tiny_vit / "weights.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(loaded.module.eval()(x), again.eval()(x))


def test_vit_units_are_the_channels_of_each_mlp(trained_tiny_vit: Path) -> None:
    """The MLP activation sees [B, N, C] tokens: its units are the C hidden channels, not the N tokens."""
    units = json.loads((trained_tiny_vit / "metrics.json").read_text())["units"]
    assert [(row["layer"], row["units"]) for row in units["layers"]] == [(f"blocks.{i}.mlp.act", 256) for i in range(4)]
