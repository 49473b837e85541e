"""render_vis, feature visualisation in one call: the objective it names rises at the images it returns, on
channels-first, channels-last and token layers, and a seed gives the same images again."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atlas.errors import AtlasError
from atlas.featurevis import render_vis
from atlas.featurevis.vis import module_view
from atlas.models import ModelView, Preprocessing
from atlas.models.zoo import TinyViT

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.5,), (0.25,)
STEPS = 48


class ChannelsLastNet(nn.Module):
    """A convolution whose features a per-position linear layer mixes in [B, H, W, C] (as ConvNeXt's MLPs are)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.mix = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.relu(self.conv(x)).permute(0, 2, 3, 1)).mean(dim=(1, 2))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Flatten()).eval()


def layer_output(model: nn.Module, layer: str, image: Image.Image | torch.Tensor, size: int | None = None) -> torch.Tensor:
    """The layer's raw output for one image in [0, 1], normalised as the tests ask render_vis to (hooks, no atlas code)."""
    pixels = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    if size is not None:
        pixels = nn.functional.interpolate(pixels[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    captured: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(((pixels - MEAN[0]) / STD[0])[None])
    handle.remove()
    return captured[0][0]


def assert_rises(score: Callable[[Image.Image | torch.Tensor], float], rendered: Image.Image, start: Image.Image) -> None:
    random = torch.rand((1, *rendered.size[::-1]), generator=torch.Generator().manual_seed(1))
    assert score(rendered) > score(start), "the render beats its own start image"
    assert score(rendered) > score(random), "the render beats a random image"


def test_a_channel_of_a_channels_first_layer_rises_and_repeats_with_its_seed() -> None:
    model = small_cnn()
    images = render_vis(model, "2:5", images=2, seed=3, size=32, steps=STEPS, mean=MEAN, std=STD)
    assert len(images) == 2 and all(i.mode == "L" and i.size == (32, 32) for i in images)
    start = render_vis(model, "2:5", images=2, seed=3, size=32, steps=0, mean=MEAN, std=STD)
    for rendered, began in zip(images, start, strict=True):
        assert_rises(lambda image: float(layer_output(model, "2", image)[5].mean()), rendered, began)
    again = render_vis(model, "2:5", images=2, seed=3, size=32, steps=STEPS, mean=MEAN, std=STD)
    assert [np.asarray(i).tobytes() for i in again] == [np.asarray(i).tobytes() for i in images]
    alone = render_vis(model, "2:5", seed=4, size=32, steps=STEPS, mean=MEAN, std=STD)
    assert np.asarray(alone[0]).tobytes() == np.asarray(images[1]).tobytes(), "image k is seed + k, alone or in a batch"
    other = render_vis(model, "2:5", seed=9, size=32, steps=STEPS, mean=MEAN, std=STD)
    assert np.asarray(other[0]).tobytes() != np.asarray(images[0]).tobytes()


def test_a_direction_a_callable_and_the_whole_layer() -> None:
    model = small_cnn()
    direction = torch.linspace(-1.0, 1.0, 12)
    kwargs = {"size": 32, "steps": STEPS, "mean": MEAN, "std": STD}

    def along(image: Image.Image | torch.Tensor) -> float:
        out = layer_output(model, "2", image)
        return float(out[:, 16, 16] @ direction)

    assert_rises(
        along,
        render_vis(model, "2", direction=direction, **kwargs)[0],
        render_vis(model, "2", direction=direction, **{**kwargs, "steps": 0})[0],
    )

    def corner(activation: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return activation[:, 7, :8, :8].mean(dim=(1, 2))

    def corner_score(image: Image.Image | torch.Tensor) -> float:
        return float(layer_output(model, "2", image)[7, :8, :8].mean())

    assert_rises(
        corner_score, render_vis(model, corner, layer="2", **kwargs)[0], render_vis(model, corner, layer="2", **{**kwargs, "steps": 0})[0]
    )

    def norm(image: Image.Image | torch.Tensor) -> float:
        return float(layer_output(model, "2", image).pow(2).mean())

    assert_rises(norm, render_vis(model, "2", **kwargs)[0], render_vis(model, "2", **{**kwargs, "steps": 0})[0])


def test_a_channels_last_layer_is_read_in_its_layout() -> None:
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    kwargs = {"size": 24, "steps": STEPS, "mean": MEAN, "std": STD, "layout": "channels_last"}
    rendered, start = render_vis(model, "mix:4", **kwargs)[0], render_vis(model, "mix:4", **{**kwargs, "steps": 0})[0]
    assert_rises(lambda image: float(layer_output(model, "mix", image)[..., 4].mean()), rendered, start)


def test_a_token_layer_of_a_one_size_vit() -> None:
    torch.manual_seed(0)
    model = TinyViT(width=8, depth=2, input_size=28).eval()
    kwargs = {"size": 40, "steps": STEPS, "mean": MEAN, "std": STD, "input_size": 28}
    rendered, start = render_vis(model, "blocks.1:9", **kwargs)[0], render_vis(model, "blocks.1:9", **{**kwargs, "steps": 0})[0]
    assert rendered.size == (40, 40)
    # tokens: the class token first, then the patches; the channel is the patches' mean, at the model's 28 px
    assert_rises(lambda image: float(layer_output(model, "blocks.1", image, size=28)[1:, 9].mean()), rendered, start)


def test_targets_that_cannot_be_read_one_way_are_one_line() -> None:
    model = small_cnn()
    with pytest.raises(AtlasError, match="must be a channel number"):
        render_vis(model, "2:five", steps=1)
    with pytest.raises(AtlasError, match="needs layer="):
        render_vis(model, lambda a, p: a.mean(dim=(1, 2, 3)), steps=1)
    with pytest.raises(AtlasError, match="not both"):
        render_vis(model, "2:1", direction=[1.0] * 12, steps=1)
    with pytest.raises(AtlasError, match="together"):
        render_vis(model, "2:1", mean=MEAN, steps=1)
    with pytest.raises(AtlasError, match="has 12 channels"):
        render_vis(model, "2:12", mean=MEAN, std=STD, steps=1)


def test_preprocessing_comes_from_a_timm_models_config_or_the_arguments() -> None:
    """A timm model carries ``pretrained_cfg`` (input size, mean, std): render_vis feeds the model as it was trained;
    arguments win over it."""
    model = small_cnn()
    model.pretrained_cfg = {"input_size": (1, 40, 40), "mean": (0.3,), "std": (0.2,)}
    assert module_view(model, "2", None, None, None, None, "auto").preprocessing == Preprocessing(40, 1, (0.3,), (0.2,))
    given = module_view(model, "2", MEAN, STD, None, 32, "auto").preprocessing
    assert given == Preprocessing(32, 1, MEAN, STD)
    # the normalisation reaches the render: the same seed under another mean gives other pixels
    plain = render_vis(model, "2:1", size=24, steps=8)[0]
    shifted = render_vis(model, "2:1", size=24, steps=8, mean=(0.9,), std=(0.2,))[0]
    assert np.asarray(plain).tobytes() != np.asarray(shifted).tobytes()


def test_a_model_view_renders_as_its_module_does() -> None:
    model = small_cnn()
    view = ModelView.of_module(model, "2", mean=MEAN, std=STD, input_size=32)
    from_view = render_vis(view, "2:5", seed=3, size=32, steps=16)[0]
    from_module = render_vis(model, "2:5", seed=3, size=32, steps=16, mean=MEAN, std=STD, input_size=32)[0]
    assert np.asarray(from_view).tobytes() == np.asarray(from_module).tobytes()
    with pytest.raises(AtlasError, match="carries its preprocessing"):
        render_vis(view, "2:5", mean=MEAN, std=STD, steps=1)
    with pytest.raises(AtlasError, match="the ModelView is at '2'"):
        render_vis(view, "0:1", steps=1)
