"""Model specs resolve to working models: real weights, real photos, real forwards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from atlas.config import ModelConfig
from atlas.errors import AtlasError
from atlas.models import (
    LayerCapture,
    LoadedModel,
    Preprocessing,
    efficientnet_lite0,
    list_layers,
    load_model,
    resolve_layer,
    run_to_layer,
)
from atlas.models.layers import format_layers
from atlas.models.zoo import fashion_cnn, make_activation

CAT_CLASSES = {"tiger cat", "tabby", "Egyptian cat"}


def to_input(image: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """Resize the short side to the input size, centre-crop, normalise: batch of one."""
    pil = Image.fromarray(image)
    scale = pre.input_size / min(pil.size)
    pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BICUBIC)
    left, top = (pil.width - pre.input_size) // 2, (pil.height - pre.input_size) // 2
    pil = pil.crop((left, top, left + pre.input_size, top + pre.input_size))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model(ModelConfig(spec="efficientnet-lite0"))


@pytest.fixture(scope="module")
def photos(lite0: LoadedModel) -> torch.Tensor:
    return torch.cat([to_input(data.chelsea(), lite0.preprocessing), to_input(data.coffee(), lite0.preprocessing)])


# --- the built-in model ---------------------------------------------------------------------------


def test_builtin_classifies_real_photos(lite0: LoadedModel, photos: torch.Tensor) -> None:
    assert lite0.preprocessing == Preprocessing(224, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert not lite0.module.training
    with torch.no_grad():
        top = lite0.module(photos).argmax(1).tolist()
    assert lite0.labels is not None and len(lite0.labels) == 1000
    assert lite0.labels[top[0]] in CAT_CLASSES
    assert lite0.labels[top[1]] == "espresso"


def test_builtin_weights_load_strictly() -> None:
    state = efficientnet_lite0.load_shipped_state_dict()
    module = efficientnet_lite0.build(pretrained=False)
    assert set(state) == set(module.state_dict())
    result = module.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert efficientnet_lite0.rename_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert efficientnet_lite0.rename_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"


def test_layers_have_output_shapes(lite0: LoadedModel) -> None:
    infos = {info.name: info for info in list_layers(lite0)}
    assert infos["blocks.4"].shape == (112, 14, 14)
    assert infos["classifier"].shape == (1000,)
    assert "" not in infos
    table = format_layers(list(infos.values()))
    assert table.splitlines()[0].split() == ["name", "type", "output", "shape"]
    assert any(line.split()[0] == "blocks.4" and line.endswith("112 x 14 x 14") for line in table.splitlines())


def test_wrong_layer_name_lists_close_names(lite0: LoadedModel) -> None:
    assert isinstance(resolve_layer(lite0, "blocks.4"), torch.nn.Sequential)
    with pytest.raises(AtlasError) as err:
        resolve_layer(lite0, "blocks.44")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.layer 'blocks.44' is not a layer of efficientnet-lite0; closest: blocks.4,")
    assert "atlas layers efficientnet-lite0" in message


def test_truncated_forward_matches_full_forward(lite0: LoadedModel, photos: torch.Tensor) -> None:
    layer = resolve_layer(lite0, "blocks.4")
    later = resolve_layer(lite0, "conv_head")
    later_calls: list[int] = []
    handle = later.register_forward_hook(lambda *_: later_calls.append(1))
    try:
        with torch.no_grad():
            with LayerCapture(layer) as full:
                logits = lite0.module(photos)
            assert logits.shape == (2, 1000) and later_calls == [1]
            truncated = run_to_layer(lite0.module, layer, photos)
    finally:
        handle.remove()
    assert later_calls == [1], "the truncated pass must not reach later layers"
    assert full.output is not None and truncated.shape == (2, 112, 14, 14)
    torch.testing.assert_close(truncated, full.output, rtol=0, atol=0)
    assert not layer._forward_hooks, "hooks are removed on exit"


def test_capture_transform_replaces_output_and_with_block_swallows_stop(lite0: LoadedModel, photos: torch.Tensor) -> None:
    layer = resolve_layer(lite0, "blocks.4")
    x = photos[:1]
    with torch.no_grad():
        plain = lite0.module(x)
        with LayerCapture(layer, transform=lambda out: out * 0) as zeroed:
            blanked = lite0.module(x)
        with LayerCapture(layer, stop=True) as stopped:
            lite0.module(x)
            pytest.fail("the forward pass should have stopped at the layer")
    assert zeroed.output is not None and zeroed.output.abs().sum() == 0
    assert not torch.allclose(plain, blanked)
    assert stopped.output is not None and stopped.output.shape == (1, 112, 14, 14)


# --- library specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_library_specs_resolve_untrained(spec: str) -> None:
    model = load_model(ModelConfig(spec=spec, pretrained=False))
    assert model.preprocessing == Preprocessing(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert model.labels is not None and len(model.labels) == 1000 and model.labels[281] == "tabby"
    assert not model.module.training
    assert dict(model.module.named_modules())["layer4"] is resolve_layer(model, "layer4")


def test_library_overrides_apply() -> None:
    model = load_model(ModelConfig(spec="timm:resnet18", pretrained=False, input_size=96, mean=(0.5,), std=(0.25,)))
    assert model.preprocessing == Preprocessing(96, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert {i.name: i.shape for i in list_layers(model)}["layer4"] == (512, 3, 3)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("timm:resnet1800", "timm has no model 'resnet1800'; closest: resnet18"),
        ("torchvision:resnet180", "torchvision has no model 'resnet180'; closest: resnet18"),
        ("torchvision:fasterrcnn_resnet50_fpn", "is not an image classifier"),
        ("efficientnet-lite", "is not a model spec; closest: efficientnet-lite0"),
        ("missing_pkg_xyz.models:net", "no module named 'missing_pkg_xyz'"),
        ("atlas.models.zoo:fashion_cnnn", "atlas.models.zoo has no attribute 'fashion_cnnn'; closest: fashion_cnn"),
        ("atlas.models.zoo:ACTIVATION_ALIASES", "not a callable"),
        ("atlas.models.zoo:make_activation", "needs arguments"),
        ("nowhere/model.pt", "no such file"),
    ],
)
def test_bad_specs_are_one_line_errors(spec: str, expected: str) -> None:
    with pytest.raises(AtlasError) as err:
        load_model(ModelConfig(spec=spec, pretrained=False))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


# --- user models -----------------------------------------------------------------------------------


def test_pickled_model_needs_trust(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = fashion_cnn("elu").eval()
    path = tmp_path / "net.pt"
    torch.save(net, path)
    with pytest.raises(AtlasError) as err:
        load_model(ModelConfig(spec=str(path)))
    assert str(err.value) == (
        f"model.spec '{path}' is a pickled model; loading it runs code from the file: set model.trust_pickle: true if you trust it"
    )
    model = load_model(ModelConfig(spec=str(path), trust_pickle=True))
    assert model.preprocessing == Preprocessing(28, 1, (0.5,), (0.5,))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), rtol=0, atol=0)


def test_state_dict_given_as_spec_points_to_weights(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(fashion_cnn().state_dict(), path)
    with pytest.raises(AtlasError, match="holds a state dict, not a model"):
        load_model(ModelConfig(spec=str(path)))


def test_factory_with_state_dict_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = fashion_cnn().eval()
    with torch.no_grad():  # non-default BatchNorm statistics so a silent skip would show
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "fashion.pt"
    torch.save({"epoch": 3, "model": net.state_dict()}, weights)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")

    model = load_model(ModelConfig(spec="atlas.models.zoo:fashion_cnn", weights=weights, classes=classes))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), rtol=0, atol=0)
    assert model.labels == [f"class {i}" for i in range(10)]
    assert model.extra["source"] == "factory"


def test_weights_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    weights = tmp_path / "other.pt"
    torch.save(fashion_cnn(num_classes=5).state_dict(), weights)
    with pytest.raises(AtlasError) as err:
        load_model(ModelConfig(spec="atlas.models.zoo:fashion_cnn", weights=weights))
    message = str(err.value)
    assert "\n" not in message
    assert "does not fit atlas.models.zoo:fashion_cnn" in message and "classifier.weight file (5, 128)" in message


def test_classes_file_must_match_outputs(tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\n")
    with pytest.raises(AtlasError, match="has 3 names but atlas.models.zoo:fashion_cnn outputs 10 classes"):
        load_model(ModelConfig(spec="atlas.models.zoo:fashion_cnn", classes=classes))


def test_one_channel_28px_end_to_end() -> None:
    model = load_model(ModelConfig(spec="atlas.models.zoo:fashion_cnn"))
    assert model.preprocessing == Preprocessing(28, 1, (0.5,), (0.5,))
    assert model.labels is None
    shapes = {info.name: info.shape for info in list_layers(model)}
    assert shapes["features.conv1"] == (32, 28, 28)
    assert shapes["features.act4"] == (64, 14, 14)
    assert shapes["features.act5"] == (128, 7, 7)
    assert shapes["classifier"] == (10,)
    layer = resolve_layer(model, "features.act5")
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    out = run_to_layer(model.module, layer, x)
    out[:, 3].mean().backward()  # truncated passes stay differentiable (feature visualisation)
    assert x.grad is not None and x.grad.abs().sum() > 0

    with pytest.raises(AtlasError, match="model.channels is 3 but atlas.models.zoo:fashion_cnn's first convolution takes 1"):
        load_model(ModelConfig(spec="atlas.models.zoo:fashion_cnn", channels=3))
    with pytest.raises(AtlasError, match="model.mean has 3 values but the model takes 1 channels"):
        load_model(ModelConfig(spec="atlas.models.zoo:fashion_cnn", mean=(0.1, 0.2, 0.3)))


def test_activations_resolve_by_name() -> None:
    assert isinstance(make_activation("relu"), torch.nn.ReLU)
    assert isinstance(make_activation("LeakyReLU"), torch.nn.LeakyReLU)
    assert isinstance(make_activation("hardswish"), torch.nn.Hardswish)
    assert isinstance(fashion_cnn("mish").features.act3, torch.nn.Mish)
    assert not getattr(make_activation("relu"), "inplace", False)
    with pytest.raises(AtlasError, match="activation 'swoosh' is unknown; valid names: relu, leaky_relu"):
        make_activation("swoosh")


def test_capture_ignores_forwards_from_other_threads() -> None:
    import threading

    model = load_model(ModelConfig(spec="atlas.models.zoo:fashion_cnn"))
    layer = resolve_layer(model, "features.act2")
    x = torch.randn(2, 1, 28, 28)
    results: list[torch.Tensor] = []
    with torch.no_grad(), LayerCapture(layer, stop=True) as capture:
        worker = threading.Thread(target=lambda: results.append(model.module(x)))
        worker.start()
        worker.join()
        own = capture.run(model.module, x)
    assert results and results[0].shape == (2, 10), "another thread's forward is neither stopped nor captured"
    assert own.shape == (2, 32, 28, 28)


# --- the spec registry ------------------------------------------------------------------------------


def test_unknown_spec_lists_every_registered_form() -> None:
    from atlas.models.specs import SPEC_FORMS, SPEC_HELP

    with pytest.raises(AtlasError) as err:
        load_model(ModelConfig(spec="not-a-model"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.spec 'not-a-model' is not a model spec; use ")
    assert len(SPEC_FORMS) == 6
    for form in SPEC_FORMS:
        assert form.help in message
        assert form.syntax in SPEC_HELP
    assert SPEC_HELP == "efficientnet-lite0, torchvision:NAME, timm:NAME, a variant folder, FILE.pt, pkg.mod:factory"


def test_a_registered_form_is_dispatched_and_listed() -> None:
    from atlas.models import specs
    from atlas.models.record import Source

    @specs.spec_form("test-form", syntax="test:N", help="test:N (a test form)", recognise=lambda s: s.startswith("test:"))
    def _load(spec: str, config: ModelConfig) -> Source:
        return Source(fashion_cnn(num_classes=int(spec.partition(":")[2])), None, None, {"source": "test"})

    try:
        model = load_model(ModelConfig(spec="test:4"))
        assert model.extra == {"source": "test"} and model.module.classifier.out_features == 4
        assert model.preprocessing == Preprocessing(28, 1, (0.5,), (0.5,))
        with pytest.raises(AtlasError, match=r"test:N \(a test form\)"):
            load_model(ModelConfig(spec="nothing"))
        with pytest.raises(ValueError, match="registered twice"):
            specs.spec_form("test-form", syntax="x", help="x", recognise=lambda s: False)(_load)
    finally:
        specs.SPEC_FORMS[:] = [form for form in specs.SPEC_FORMS if form.name != "test-form"]


def test_a_folder_named_like_a_file_is_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "looks.pt"
    folder.mkdir()
    with pytest.raises(AtlasError, match="is a folder without model.json"):
        load_model(ModelConfig(spec=str(folder)))


# --- preprocessing from timm -------------------------------------------------------------------------


def test_timm_data_config_gives_preprocessing(tmp_path: Path) -> None:
    model = load_model(ModelConfig(spec="timm:mobilevit_xxs", pretrained=False))
    assert model.preprocessing == Preprocessing(256, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert model.extra["crop_pct"] == "0.9" and model.extra["interpolation"] == "bicubic"
    # The same module saved whole still carries timm's config, so a file spec gets the same preprocessing.
    path = tmp_path / "mvit.pt"
    torch.save(model.module, path)
    from_file = load_model(ModelConfig(spec=str(path), trust_pickle=True, input_size=128))
    assert from_file.preprocessing == Preprocessing(128, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


# --- the model card ----------------------------------------------------------------------------------


def _trained_folder(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    from atlas.models.card import new_card, write_card
    from atlas.models.zoo import build_classifier

    kwargs = {"architecture": "resnet", "activation": "gelu", "num_classes": 3, "in_channels": 1, "width": 8, "batch_norm": True}
    torch.manual_seed(2)
    net = build_classifier(**kwargs).eval()
    folder = tmp_path / "variant"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "w.pt")
    pre = Preprocessing(32, 1, (0.25,), (0.75,))
    write_card(folder, new_card("atlas.models.zoo:build_classifier", kwargs, pre, ["a", "b", "c"], weights="w.pt"))
    return folder, net


def test_card_written_is_read_back_and_loads(tmp_path: Path) -> None:
    import json

    from atlas.models.card import MODEL_CARD, read_card

    folder, net = _trained_folder(tmp_path)
    written = json.loads((folder / MODEL_CARD).read_text())
    assert list(written) == ["format", "factory", "kwargs", "weights", "classes", "preprocessing"]
    assert written["format"] == "atlas-model/1" and written["preprocessing"]["mean"] == [0.25]
    card = read_card(folder / MODEL_CARD, str(folder))
    assert card.weights == "w.pt" and card.preprocessing.to_preprocessing() == Preprocessing(32, 1, (0.25,), (0.75,))
    model = load_model(ModelConfig(spec=str(folder)))
    assert model.labels == ["a", "b", "c"] and model.preprocessing == Preprocessing(32, 1, (0.25,), (0.75,))
    assert model.extra["source"] == "atlas train"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), rtol=0, atol=0)


def test_card_writer_refuses_a_factory_the_reader_refuses() -> None:
    from atlas.models.card import new_card

    with pytest.raises(ValueError, match="may not appear in a model card"):
        new_card("os:system", {}, Preprocessing(28, 1, (0.5,), (0.5,)), None)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda card: "{not json", "Invalid JSON"),
        (lambda card: {k: v for k, v in card.items() if k != "factory"}, "factory: Field required"),
        (lambda card: {**card, "colour": "red"}, "colour: Extra inputs are not permitted"),
        (lambda card: {**card, "format": "atlas-model/9"}, "format: Input should be 'atlas-model/1'"),
        (lambda card: {**card, "preprocessing": {**card["preprocessing"], "mean": [0.1, 0.2]}}, "mean has 2 values for 1 channels"),
        (
            lambda card: {**card, "preprocessing": {**card["preprocessing"], "std": [0]}},
            "preprocessing.std.0: Input should be greater than 0",
        ),
        (lambda card: {**card, "kwargs": {**card["kwargs"], "depth": 3}}, "kwargs: got an unexpected keyword argument 'depth'"),
        (lambda card: {**card, "factory": "os:system"}, "names factory 'os:system'; only atlas.models.zoo:build_classifier is allowed"),
    ],
)
def test_invalid_card_is_one_line_naming_the_file(tmp_path: Path, edit: Callable[[dict[str, Any]], Any], expected: str) -> None:
    import json

    from atlas.models.card import MODEL_CARD

    folder, _net = _trained_folder(tmp_path)
    card_path = folder / MODEL_CARD
    edited = edit(json.loads(card_path.read_text()))
    card_path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(AtlasError) as err:
        load_model(ModelConfig(spec=str(folder)))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.spec '{folder}': {card_path} ")
    assert expected in message
