"""Forward-mode attribution equals autograd's gradient x activation, for every class at once."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atlas.collect import activations_at, collect_records, sample_positions
from atlas.images.source import ImageRecord
from atlas.models.record import Preprocessing
from atlas.models.view import ModelView


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.GELU(),
        nn.Conv2d(16, 12, 3, stride=2, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 7),
    ).eval()  # fmt: skip


def autograd_attribution(model: nn.Module, layer: nn.Module, image: torch.Tensor, y: int, x: int) -> np.ndarray:
    held = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: held.update(h=out))
    logits = model(image[None])
    handle.remove()
    h = held["h"]
    scores = []
    for c in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[0, c], h, retain_graph=True)
        scores.append(float((grad[0, :, y, x] * h[0, :, y, x]).sum()))
    return np.array(scores)


@pytest.mark.parametrize("layer_index", [3, 5])
def test_jvp_matches_autograd(layer_index: int) -> None:
    model = small_cnn()
    layer = model[layer_index]
    images = torch.randn(3, 3, 12, 12)
    rows = np.array([0, 0, 1, 2, 2])
    positions = np.array([[1, 1], [4, 5], [2, 3], [3, 3], [4, 1]])
    out = activations_at(ModelView.of_module(model, layer), images, rows, positions, with_attribution=True)
    expected = np.stack([autograd_attribution(model, layer, images[r], y, x) for r, (y, x) in zip(rows, positions)])
    assert out.attribution is not None and out.attribution.shape == (5, 7)
    np.testing.assert_allclose(out.attribution, expected, rtol=1e-4, atol=1e-6)
    truncated = activations_at(ModelView.of_module(model, layer), images, rows, positions, with_attribution=False)
    np.testing.assert_allclose(truncated.activation, out.activation, rtol=1e-6)


def test_truncated_forward_stops_at_the_layer() -> None:
    model = small_cnn()
    calls = []
    model[-1].register_forward_hook(lambda *_: calls.append(1))
    activations_at(ModelView.of_module(model, model[3]), torch.randn(2, 3, 12, 12), np.array([0, 1]), np.array([[1, 1], [2, 2]]), False)
    assert calls == []


def test_positions_are_seeded_interior_and_independent_of_batching() -> None:
    a = sample_positions(17, 14, 14, 3, seed=5)
    b = sample_positions(17, 14, 14, 3, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_positions(18, 14, 14, 3, seed=5))
    many = np.concatenate([sample_positions(i, 7, 7, 1, seed=0) for i in range(500)])
    assert many.min() == 1 and many.max() == 5  # border row and column never sampled
    assert len(sample_positions(0, 7, 7, "all", seed=0)) == 49


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.act(self.inner(x))  # the skip carries the un-widened batch past `inner`
        return self.head(x.mean(dim=(2, 3)))


def test_layer_inside_a_residual_branch_still_matches_autograd() -> None:
    model = Residual().eval()
    images = torch.randn(3, 3, 10, 10)
    rows = np.array([0, 1, 1, 2])
    positions = np.array([[2, 2], [3, 4], [7, 1], [5, 5]])
    out = activations_at(ModelView.of_module(model, model.inner), images, rows, positions, with_attribution=True)
    expected = np.stack([autograd_attribution(model, model.inner, images[r], y, x) for r, (y, x) in zip(rows, positions)])
    np.testing.assert_allclose(out.attribution, expected, rtol=1e-4, atol=1e-6)


def test_an_image_with_more_positions_than_a_batch_is_split_into_passes() -> None:
    """More positions per image than batch_size rows: several passes of at most batch_size rows, the same rows."""
    model = small_cnn()
    layer = model[3]
    rng = np.random.default_rng(0)
    records = [ImageRecord(k, f"{k}.png", Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))) for k in range(3)]
    prep = Preprocessing(12, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    widths: list[int] = []
    handle = model[-1].register_forward_hook(lambda _m, _i, out: widths.append(len(out)))  # the logits: one row a position
    small = collect_records(ModelView.of_module(model, layer, preprocessing=prep), records, 9, 4, 0, True, 7)
    handle.remove()
    whole = collect_records(ModelView.of_module(model, layer, preprocessing=prep), records, 9, 64, 0, True, 7)
    assert max(widths) == 4 and len(small.rows) == len(whole.rows) == 27
    for field in ("image_id", "y", "x", "label"):
        np.testing.assert_array_equal(getattr(small.rows, field), getattr(whole.rows, field))
    np.testing.assert_allclose(small.rows.activation, whole.rows.activation, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small.rows.attribution, whole.rows.attribution, rtol=1e-4, atol=1e-6)
