"""The model view: one normalisation, one truncated forward, and the layer's output read through its layout adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import atlas.models.resolve
from atlas.collect import activations_at
from atlas.config import AtlasConfig
from atlas.errors import AtlasError
from atlas.featurevis import Channel, fourier, render, score_images
from atlas.models import ChannelsFirst, ModelView, Preprocessing
from atlas.models.view import centre
from atlas_pipelines.commands.cli import main
from atlas_pipelines.engine import worker_state
from atlas_pipelines.stages.assemble import base_manifest


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    ).eval()  # fmt: skip


def test_positions_are_row_major_over_the_grid() -> None:
    layout = ChannelsFirst()
    output = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    positions = layout.positions(output)
    assert positions.shape == (2, 8, 3) and layout.grid((3, 2, 4)) == (2, 4) and layout.channels((3, 2, 4)) == 3
    for y in range(2):
        for x in range(4):
            torch.testing.assert_close(positions[:, y * 4 + x], output[:, :, y, x], rtol=0, atol=0)
    flat = torch.randn(2, 5)
    assert layout.positions(flat).shape == (2, 1, 5) and layout.grid((5,)) == (1, 1)
    torch.testing.assert_close(layout.centre(flat), flat)
    torch.testing.assert_close(layout.spatial_mean(flat), flat)
    with pytest.raises(ValueError, match=r"expected \[B, C, H, W\] or \[B, C\]"):
        layout.positions(torch.zeros(2, 3, 4))


def test_at_and_place_read_and_write_the_same_positions() -> None:
    layout = ChannelsFirst()
    output = torch.randn(3, 4, 5, 5)
    rows, ys, xs = torch.tensor([0, 0, 2]), torch.tensor([1, 3, 4]), torch.tensor([2, 0, 4])
    values = layout.at(output, rows, ys, xs)
    torch.testing.assert_close(values, torch.stack([output[r, :, y, x] for r, y, x in zip(rows, ys, xs)]), rtol=0, atol=0)
    placed = layout.place(output, rows, ys, xs, values)
    mask = torch.zeros(3, 1, 5, 5, dtype=torch.bool)
    mask[rows, 0, ys, xs] = True
    torch.testing.assert_close(placed, torch.where(mask, output, 0.0), rtol=0, atol=0)
    torch.testing.assert_close(layout.centre(output), output[:, :, 2, 2], rtol=0, atol=0)
    torch.testing.assert_close(layout.spatial_mean(output), output.mean(dim=(2, 3)))
    block = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(centre(block, window=2), block[:, :, 1:3, 1:3].mean(dim=(2, 3)))


def test_normalise_is_the_old_formula_bit_for_bit() -> None:
    prep = Preprocessing(8, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    old = (pixels - torch.tensor(prep.mean).view(1, -1, 1, 1)) / torch.tensor(prep.std).view(1, -1, 1, 1)
    assert torch.equal(prep.normalise(pixels), old)
    assert torch.equal(prep.normalise(pixels[0]), old[0])
    torch.testing.assert_close(prep.denormalise(prep.normalise(pixels)), pixels)
    grey = Preprocessing(8, 1, (0.5,), (0.5,))
    assert torch.equal(grey.normalise(pixels), (pixels - 0.5) / 0.5), "one value applies to every channel"
    with pytest.raises(ValueError, match="mean has 3 values for 1 channels"):
        prep.normalise(pixels[:, :1])


def test_a_view_of_a_bare_module_measures_its_layer_once() -> None:
    model = small_cnn()
    view = ModelView.of_module(model, model[3], input_size=16)
    assert view.layer_name == "3" and view.preprocessing.channels == 3 and view.preprocessing.mean == (0.485, 0.456, 0.406)
    calls: list[int] = []
    model[0].register_forward_hook(lambda *_: calls.append(1))
    later: list[int] = []
    model[-1].register_forward_hook(lambda *_: later.append(1))
    assert view.layer_shape == (6, 8, 8) and view.grid == (8, 8) and view.channels == 6
    assert view.layer_shape == (6, 8, 8) and calls == [1], "one dummy forward, kept"
    out = view.run_to_layer(view.normalise(torch.rand(2, 3, 16, 16)))
    assert out.shape == (2, 6, 8, 8) and later == [], "nothing after the layer runs"
    with view.capture(stop=False) as capture:
        capture(torch.rand(1, 3, 16, 16))
    assert later == [1]
    assert ModelView.of_module(model, "1").layer is model[1]
    with pytest.raises(AtlasError, match="is not a layer of"):
        ModelView.of_module(model, "33")


def test_render_takes_a_view_or_a_bare_module_alike() -> None:
    model = small_cnn()
    view = ModelView.of_module(model, model[3], mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    given = {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.3, 0.25)}
    through_view = render(view, Channel([1, 4]), fourier(3, 16), seeds=[1, 2], steps=3)
    bare = render(model, Channel([1, 4]), fourier(3, 16), layer=model[3], seeds=[1, 2], steps=3, **given)
    assert torch.equal(through_view.images, bare.images) and torch.equal(through_view.scores, bare.scores)
    by_name = score_images(model, Channel([1, 4]), bare.images, layer="3", **given)
    torch.testing.assert_close(by_name, score_images(view, Channel([1, 4]), bare.images))
    with pytest.raises(ValueError, match="carries its layer"):
        render(view, Channel([1]), fourier(3, 16), layer=model[3], seeds=[0], steps=1)
    with pytest.raises(ValueError, match="needs layer="):
        render(model, Channel([1]), fourier(3, 16), seeds=[0], steps=1)


class _Permute(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


@dataclass(frozen=True)
class _ChannelsLast(ChannelsFirst):
    """A test adapter for ``[B, H, W, C]``: the seam other layouts plug into, with no caller changed."""

    name: str = "channels_last"

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return shape[0], shape[1]

    def channels(self, shape: tuple[int, ...]) -> int:
        return shape[-1]

    def at(self, output: torch.Tensor, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        return output[rows, ys, xs]

    def place(self, output: torch.Tensor, rows: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        placed = torch.zeros_like(output)
        placed[rows, ys, xs] = values
        return placed


def test_another_layout_plugs_in_without_changing_the_callers() -> None:
    first = small_cnn()
    last = nn.Sequential(*first[:4], _Permute(), *[_Unpermute(), *first[4:]])
    images = torch.rand(2, 3, 16, 16)
    rows, positions = np.array([0, 1, 1]), np.array([[1, 2], [3, 3], [7, 0]])
    expected = activations_at(ModelView.of_module(first, first[3], input_size=16), images, rows, positions, True)
    view = ModelView.of_module(last, last[4], input_size=16, layout=_ChannelsLast())
    assert view.grid == (8, 8) and view.channels == 6
    got = activations_at(view, images, rows, positions, True)
    np.testing.assert_array_equal(got.activation, expected.activation)
    assert got.attribution is not None and expected.attribution is not None
    np.testing.assert_allclose(got.attribution, expected.attribution, rtol=1e-5, atol=1e-6)
    run = SimpleNamespace(
        config=AtlasConfig(), model=view.model, view=view, layer_shape=view.layer_shape, labels=None, given=None, choices={}, same_rows=None
    )
    manifest = base_manifest(run)  # type: ignore[arg-type]
    assert manifest["channels"] == 6 and manifest["layer_shape"] == [8, 8, 6], "the manifest reads channels through the layout"


class _Unpermute(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


SYNC_COLLECT = [
    "--set", "model.input_size=64",
    "--set", "collect.positions_per_image=2",
    "--set", "collect.shard_size=6",
    "--scheduler", "sync", "--until", "collect",
]  # fmt: skip


def test_a_sync_run_loads_the_model_once(photo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's checks and every in-process task share one loaded model (counted where every load goes through)."""
    loads: list[str] = []
    real = atlas.models.resolve.form_for

    def counting(spec: str) -> object:
        loads.append(spec)
        return real(spec)

    worker_state._model.cache_clear()
    monkeypatch.setattr(atlas.models.resolve, "form_for", counting)
    try:
        assert main(["run", "--images", str(photo_folder), "--out", str(tmp_path), "--name", "once", *SYNC_COLLECT]) == 0
    finally:
        worker_state._model.cache_clear()
    assert loads == ["efficientnet-lite0"]
