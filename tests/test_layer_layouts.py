"""Layer layouts (issue 22): channels last, tokens and tuple elements read exactly as channels first, and the reading
decided from the model and the settings, or asked for in one line."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import zarr
from PIL import Image
from test_model_view import small_cnn
from torch import nn

from atlas.collect import (
    CLASS_TOKEN_ROW,
    POSITION_ROW,
    ROW_FIELDS,
    ActivationStore,
    Rows,
    StoreLayout,
    activations_at,
    collect_records,
)
from atlas.config import AtlasConfig
from atlas.errors import AtlasError
from atlas.featurevis.framing import frame_icons
from atlas.images.preprocess import to_tensor
from atlas.images.source import ImageRecord
from atlas.models import ModelRequest, ModelView, list_layers, load_model
from atlas.models.layout_reading import (
    LayoutRequest,
    UnclearLayout,
    read_layout,
    shapes_at_twice_the_size,
    tensor_layout,
    view_with_layout,
)
from atlas.models.layouts import ChannelsLast, Element, Tokens
from atlas.tiles.patches import patch_of
from atlas_pipelines.commands.cli import main
from atlas_pipelines.stages.collect import collect_settings


class _Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class _Pair(nn.Module):
    """A layer that returns a tuple: the map, and a summary the rest of the model ignores."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x.mean(dim=(2, 3))


class _First(nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[0]


class _OnlySize(nn.Module):
    """A model that refuses every input size but one, as timm's ViT and Swin do."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.size, f"Input height ({x.shape[-1]}) doesn't match model ({self.size})."
        return x


IMAGES = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
ROWS, POSITIONS = np.array([0, 1, 1, 0]), np.array([[1, 2], [3, 3], [7, 0], [4, 4]])


def test_a_channels_last_layer_gives_the_rows_of_the_same_layer_channels_first() -> None:
    first = small_cnn()
    last = nn.Sequential(*first[:4], _Permute(0, 2, 3, 1), _Permute(0, 3, 1, 2), *first[4:])
    expected_view = ModelView.of_module(first, first[3], input_size=16)
    view = view_with_layout(ModelView.of_module(last, last[3], input_size=16).model, "4")
    assert view.layout == ChannelsLast(), "the grid follows the input size in the middle two dimensions: channels last"
    assert view.layer_shape == (8, 8, 6) and view.grid == (8, 8) == expected_view.grid and view.channels == 6
    expected = activations_at(expected_view, IMAGES, ROWS, POSITIONS, True)
    got = activations_at(view, IMAGES, ROWS, POSITIONS, True)
    np.testing.assert_array_equal(got.activation, expected.activation)
    assert got.attribution is not None and expected.attribution is not None
    np.testing.assert_allclose(got.attribution, expected.attribution, rtol=1e-5, atol=1e-6)
    output = view.run_to_layer(view.normalise(IMAGES))
    channels_first = output.permute(0, 3, 1, 2)
    torch.testing.assert_close(view.layout.spatial(output), channels_first, rtol=0, atol=0)
    torch.testing.assert_close(view.layout.centre(output), expected_view.layout.centre(channels_first), rtol=0, atol=0)
    torch.testing.assert_close(view.layout.spatial_mean(output), channels_first.mean(dim=(2, 3)))
    torch.testing.assert_close(view.positions(output), expected_view.positions(channels_first), rtol=0, atol=0)


def tiny_vit(name: str = "vit_tiny_patch16_224") -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=32, patch_size=8, num_classes=5).eval()


def test_a_token_layer_reads_the_tokens_at_the_recorded_grid_positions() -> None:
    model = tiny_vit()
    view = view_with_layout(ModelView.of_module(model, "blocks.1", input_size=32).model, "blocks.1")
    assert view.layout == Tokens(1, (4, 4)) and view.grid == (4, 4) and view.channels == 192
    assert view.layout.to_json() == {"name": "tokens", "prefix_tokens": 1, "grid": [4, 4]}
    inputs = view.normalise(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    positions = np.array([[0, 0], [3, 1], [2, 3], [1, 2]])  # (y, x) on the 4 x 4 patch grid
    got = activations_at(view, inputs, ROWS, positions, True)
    with torch.no_grad():
        tokens = view.run_to_layer(inputs)
    assert tokens.shape == (2, 17, 192)
    for r, (image, (y, x)) in enumerate(zip(ROWS, positions)):  # attribution runs attention's math kernel: last bits
        np.testing.assert_allclose(got.activation[r], tokens[image, 1 + y * 4 + x].numpy(), rtol=1e-5, atol=1e-5)
    # attribution: the token times the gradient of each logit with respect to that token alone
    assert got.attribution is not None
    kept: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        kept["tokens"] = output
        return output

    for r, (image, (y, x)) in enumerate(zip(ROWS, positions)):
        handle = model.get_submodule("blocks.1").register_forward_hook(keep)
        try:
            logits = model(inputs[image : image + 1])
        finally:
            handle.remove()
        for c in range(5):
            (grad,) = torch.autograd.grad(logits[0, c], kept["tokens"], retain_graph=True)
            token = 1 + y * 4 + x
            expected = float((kept["tokens"][0, token] * grad[0, token]).sum().detach())
            assert got.attribution[r, c] == pytest.approx(expected, rel=1e-3, abs=1e-5)
    spatial = view.layout.spatial(tokens)
    assert spatial.shape == (2, 192, 4, 4)
    torch.testing.assert_close(spatial[:, :, 3, 1], tokens[:, 1 + 3 * 4 + 1], rtol=0, atol=0)
    torch.testing.assert_close(view.layout.spatial_mean(tokens), tokens[:, 1:].mean(dim=1))


def test_a_tuple_output_is_read_through_its_chosen_element() -> None:
    first = small_cnn()
    paired = nn.Sequential(*first[:4], _Pair(), _First(), *first[4:])
    base = ModelView.of_module(paired, "4", input_size=16).model
    with pytest.raises(AtlasError, match=r"outputs a tuple of 2 \(0: \[B, 6, 8, 8\], 1: \[B, 6\]\); set model.output"):
        view_with_layout(base, "4")
    view = view_with_layout(base, "4", LayoutRequest(output=0))
    assert view.layout == Element(ModelView.of_module(first, first[3]).layout, 0)
    assert view.layer_shape == (6, 8, 8) and view.layout.to_json() == {"name": "channels_first", "output": 0}
    expected = activations_at(ModelView.of_module(first, first[3], input_size=16), IMAGES, ROWS, POSITIONS, True)
    got = activations_at(view, IMAGES, ROWS, POSITIONS, True)
    np.testing.assert_array_equal(got.activation, expected.activation)
    assert got.attribution is not None and expected.attribution is not None
    np.testing.assert_allclose(got.attribution, expected.attribution, rtol=1e-5, atol=1e-6)
    with pytest.raises(AtlasError, match=r"outputs a tuple of 2 .*; set model.output to the index of the tensor to read"):
        view_with_layout(base, "4", LayoutRequest(output=5))
    assert view_with_layout(base, "4", LayoutRequest(output=1)).layer_shape == (6,)


@pytest.mark.parametrize(
    ("name", "layer", "prefix", "grid"),
    [("vit_tiny_patch16_224", "blocks.2", 1, (4, 4)), ("deit_tiny_distilled_patch16_224", "blocks.0.mlp.fc1", 2, (4, 4))],
)
def test_timm_token_models_say_their_prefix_and_grid(name: str, layer: str, prefix: int, grid: tuple[int, int]) -> None:
    view = view_with_layout(ModelView.of_module(tiny_vit(name), layer, input_size=32).model, layer)
    assert view.layout == Tokens(prefix, grid)
    assert view.preprocessing.input_size == 32 and frame_icons(view, 16, False, 0).canvas == 32, "one input size: render at it"


def test_a_swin_stage_is_channels_last_and_a_convnext_stage_channels_first() -> None:
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=112, num_classes=5).eval()
    view = view_with_layout(ModelView.of_module(swin, "layers.2", input_size=112).model, "layers.2")
    assert view.layout == ChannelsLast() and view.channels == 384 and view.grid == (7, 7)
    frame = frame_icons(view, 48, False, 0)
    assert (frame.canvas, frame.icon, frame.keeps_views) == (112, 48, True), "rendered at 112 px, shown at 48"
    convnext = timm.create_model("convnext_atto", pretrained=False, num_classes=5).eval()
    view = view_with_layout(ModelView.of_module(convnext, "stages.2", input_size=64).model, "stages.2")
    assert view.layout == ModelView.of_module(convnext, "stages.2").layout and view.channels == 160 and view.grid == (4, 4)
    assert frame_icons(view, 48, False, 0).canvas == 48, "a model of any size renders at the icon size"


def test_a_reading_the_model_cannot_decide_is_one_line_naming_the_shape_and_the_key() -> None:
    torch.manual_seed(0)
    cube = nn.Sequential(_OnlySize(16), nn.Conv2d(3, 8, 3, stride=2, padding=1), _Permute(0, 2, 3, 1), _Permute(0, 3, 1, 2))
    model = ModelView.of_module(cube, "2", input_size=16).model
    with pytest.raises(AtlasError) as raised:
        view_with_layout(model, "2")
    message = str(raised.value)
    assert "\n" not in message and "[B, 8, 8, 8]" in message and "set model.layout to channels_first or channels_last" in message
    assert view_with_layout(model, "2", LayoutRequest(layout="channels_last")).layout == ChannelsLast()
    wrong_size = ModelView.of_module(cube, "2", input_size=24).model
    with pytest.raises(AtlasError, match=r"at 3x24x24 failed \(Input height \(24\) doesn't match model \(16\).\); set model.input_size"):
        view_with_layout(wrong_size, "2")
    with pytest.raises(AtlasError, match=r"model.layout tokens reads \[B, N, C\], but layer '2' outputs \[B, 8, 8, 8\]"):
        view_with_layout(model, "2", LayoutRequest(layout="tokens"))
    tokens = nn.Sequential(_OnlySize(16), nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(2), _Permute(0, 2, 1), _Prepend(1))
    model = ModelView.of_module(tokens, "4", input_size=16, channels=3).model
    with pytest.raises(
        AtlasError, match=r"outputs \[B, 5, 4\]: 1 or 4 leading non-patch tokens leave a square grid; set model.prefix_tokens"
    ):
        view_with_layout(model, "4")
    assert view_with_layout(model, "4", LayoutRequest(prefix_tokens=1)).layout == Tokens(1, (2, 2))
    volume = nn.Sequential(nn.Conv2d(3, 4, 3), _Unsqueeze())
    with pytest.raises(AtlasError, match=r"outputs \[B, 4, 1, 14, 14\], which is not .*; choose another layer \(model.layer\)"):
        read_layout(ModelView.of_module(volume, "1", input_size=16), LayoutRequest())


class _Prepend(nn.Module):
    """A class token of sorts: ``count`` learned tokens before the patches."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(1, count, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tokens.expand(len(x), -1, -1), x], dim=1)


class _Unsqueeze(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(2)


def test_atlas_layers_prints_each_layers_reading(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "timm:vit_tiny_patch16_224", "--set", "model.pretrained=false"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["name"][-1] == "layout"
    assert rows["blocks.6"][-2:] == ["tokens", "1+14x14"] and rows["patch_embed"][-2:] == ["tokens", "0+14x14"]
    assert rows["patch_embed.proj"][-1] == "channels_first"


def test_the_collect_key_changes_with_a_layout_setting_and_auto_keeps_it(tmp_path: Path) -> None:
    def settings(collect: dict[str, object] | None = None, **model: object) -> str:
        config = AtlasConfig.model_validate({"model": model, "collect": collect or {}})
        run = SimpleNamespace(
            config=config,
            bundle=SimpleNamespace(path=lambda name: tmp_path / name),
            source=SimpleNamespace(identity=lambda: "builtin"),
            device=torch.device("cpu"),
            same_rows=None,
        )
        return json.dumps(collect_settings(run))  # type: ignore[arg-type]

    default = settings()
    assert "layout" not in default and "prefix_tokens" not in default, "keys made before the layout settings still hold"
    assert settings(layout="auto", prefix_tokens="auto", output="auto") == default
    changed = {
        settings(layout="channels_last"),
        settings(layout="tokens"),
        settings(prefix_tokens=2),
        settings(output=1),
        settings(output="x"),
    }
    assert len(changed) == 5 and default not in changed
    assert "class_token" not in default and settings({"class_token": False}) == default, "off, the key is as before it existed"
    assert settings({"class_token": True}) not in {default, *changed}


TIMM_MODELS = ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "convnext_atto"]
MODEL_KEYS = {"model.layout", "model.prefix_tokens", "model.output", "model.layer"}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_every_layer_atlas_layers_lists_is_read_or_refused_in_one_line_naming_a_key(name: str) -> None:
    """The issue's target row, without an atlas per layer: each listed layer's reading is a layout that reads a tensor
    of its shape into ``H x W`` positions of ``C`` channels, or a one-line refusal naming the key that would decide."""
    model = load_model(ModelRequest(f"timm:{name}", pretrained=False))
    infos = list_layers(model)
    at_twice = shapes_at_twice_the_size(model)
    modules = dict(model.module.named_modules())
    read = refused = 0
    for info in infos:
        if info.shape is None:  # listed without a shape: it never runs, and using it says so
            with pytest.raises(AtlasError) as raised:
                view_with_layout(model, info.name)
            assert "\n" not in str(raised.value) and "(model.layer)" in str(raised.value), info.name
            refused += 1
            continue
        try:
            layout = tensor_layout(
                model.module, info.name, modules[info.name], info.shape, LayoutRequest(), functools.partial(at_twice.get, info.name)
            )
        except UnclearLayout as err:
            assert err.key in MODEL_KEYS and err.key in str(err) and "\n" not in str(err), (info.name, str(err))
            refused += 1
            continue
        height, width = layout.grid(info.shape)
        positions = layout.positions(torch.zeros(1, *info.shape))
        assert positions.shape == (1, height * width, layout.channels(info.shape)), (info.name, layout)
        read += 1
    assert read + refused == len(infos) and read > refused, (read, refused)


def test_deit_tiny_has_one_class_token_and_the_distilled_deit_two() -> None:
    for name, prefix in (("deit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)):
        model = load_model(ModelRequest(f"timm:{name}", pretrained=False))
        assert view_with_layout(model, "blocks.3").layout == Tokens(prefix, (14, 14)), name


def _photo_records(count: int) -> list[ImageRecord]:
    generator = np.random.default_rng(5)
    return [
        ImageRecord(n, f"photo-{n}.png", Image.fromarray(generator.integers(0, 256, (40, 48, 3), dtype=np.uint8)), label=n % 5)
        for n in range(count)
    ]


def test_class_token_rows_are_the_layers_token_0_and_leave_the_patch_rows_as_they_were() -> None:
    model = tiny_vit()
    view = view_with_layout(ModelView.of_module(model, "blocks.1", input_size=32).model, "blocks.1")
    records = _photo_records(5)
    plain = collect_records(view, records, 3, 4, 0, True, 5)
    with_class = collect_records(view, records, 3, 4, 0, True, 5, class_token=True)
    patches, tokens = with_class.rows.kind == POSITION_ROW, with_class.rows.kind == CLASS_TOKEN_ROW
    assert (plain.rows.kind == POSITION_ROW).all() and tokens.sum() == 5 and patches.sum() == 5 * 3
    for name in ROW_FIELDS:  # the patch rows, in the same order, exactly as without the setting
        np.testing.assert_array_equal(getattr(with_class.rows, name)[patches], getattr(plain.rows, name), err_msg=name)
    assert (with_class.rows.y[tokens] == -1).all() and (with_class.rows.x[tokens] == -1).all()
    assert with_class.rows.image_id[tokens].tolist() == list(range(5))
    inputs = torch.stack([to_tensor(r.image, view.preprocessing) for r in records if r.image is not None])
    kept: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        kept["tokens"] = output
        return output

    handle = model.get_submodule("blocks.1").register_forward_hook(keep)
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    class_tokens = kept["tokens"][:, 0]
    np.testing.assert_allclose(with_class.rows.activation[tokens], class_tokens.detach().numpy(), rtol=1e-5, atol=1e-5)
    # attribution: the class token times the gradient of each logit with respect to it, as for any row
    for c in range(5):
        (grad,) = torch.autograd.grad(logits[:, c].sum(), kept["tokens"], retain_graph=True)
        expected = (class_tokens * grad[:, 0]).sum(dim=1).detach().numpy()
        np.testing.assert_allclose(with_class.rows.attribution[tokens][:, c].astype(np.float32), expected, rtol=1e-3, atol=1e-5)


def test_class_token_rows_on_a_layer_without_a_class_token_are_one_line_naming_the_key() -> None:
    records = _photo_records(2)
    model = ModelView.of_module(tiny_vit(), "patch_embed", input_size=32).model
    cases = [
        (view_with_layout(model, "patch_embed"), "has no prefix tokens"),
        (ModelView.of_module(small_cnn(), "3", input_size=16), "reads as channels_first"),
    ]
    for view, why in cases:
        with pytest.raises(AtlasError) as raised:
            collect_records(view, records, 1, 4, 0, False, 5, class_token=True)
        message = str(raised.value)
        assert "\n" not in message and why in message and "set collect.class_token: false" in message


def test_a_store_from_before_row_kinds_reads_as_positions_only(tmp_path: Path) -> None:
    store = ActivationStore(tmp_path / "activations")
    store.create(StoreLayout(n_shards=2, rows_per_shard=4, channels=3, n_classes=2), "key")
    rows = [
        Rows(np.full((n, 3), s, np.float32), np.zeros((n, 2), np.float32), np.arange(n), *[np.zeros(n, np.int32)] * 3)
        for s, n in ((0, 3), (1, 2))
    ]
    store.write_shard(0, rows[0], {})
    zarr.open_group(str(tmp_path / "activations" / "rows.zarr"), mode="r+").__delitem__("kind")  # as a store written before `kind`
    store.write_shard(1, rows[1], {})  # a resumed collection of positions still writes
    assert store.read().kind.tolist() == [POSITION_ROW] * 5
    assert [chunk.arrays["kind"].tolist() for chunk in store.chunks(("kind",))] == [[0, 0, 0], [0, 0]]
    assert store.take(np.array([4, 0]), ("kind", "activation"))["kind"].tolist() == [0, 0]
    tokens = Rows(*(getattr(rows[1], f) for f in ROW_FIELDS[:-1]), kind=np.array([CLASS_TOKEN_ROW, POSITION_ROW], np.int8))
    with pytest.raises(ValueError, match="create it again to store class-token rows"):
        store.write_shard(1, tokens, {})


def test_a_class_token_example_is_the_whole_frame_at_a_patch_size() -> None:
    frame = _photo_records(1)[0].image
    assert frame is not None
    frame = frame.resize((32, 32))
    whole = patch_of(frame, -1, -1, (4, 4), 32)
    patch = patch_of(frame, 2, 1, (4, 4), 32)
    assert whole.size == patch.size == (24, 24), "3 strides of 8 px"
    assert np.array_equal(np.asarray(whole), np.asarray(frame.resize((24, 24), Image.Resampling.LANCZOS)))
    assert np.array_equal(np.asarray(patch), np.asarray(frame.crop((0, 8, 24, 32))))
