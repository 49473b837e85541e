"""The centre position's receptive field, measured from the input gradient, against fields known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from atlas.featurevis.receptive import field_from_gradient, measure_receptive_field
from atlas.models.view import ModelView


def _cnn(*layers: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        # two 3x3 convolutions: 5 px; a stride-2 3x3 then a 3x3: 3 + 2 * 2 = 7 px; a 5x5 with dilation 2 then 3x3: 11 px
        ((nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)), 5),
        ((nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)), 7),
        ((nn.Conv2d(1, 4, 5, padding=4, dilation=2), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1)), 11),
    ],
)
def test_the_whole_gradient_covers_the_field_known_by_construction(layers: tuple[nn.Module, ...], expected: int) -> None:
    model = _cnn(*layers)
    field = measure_receptive_field(ModelView.of_module(model, model[-1], mean=[0.5], std=[0.5]), 28, mass=1.0 - 1e-9)
    assert field.size == expected and field.image_size == 28
    assert field.crops and 0 < field.fraction < 0.5
    # The square is where the centre position looks: it holds the centre of the 28 px image.
    assert field.top <= 14 < field.top + field.size and field.left <= 14 < field.left + field.size


def test_a_field_as_large_as_the_image_is_not_cropped() -> None:
    model = _cnn(*[m for _ in range(8) for m in (nn.Conv2d(1, 1, 5, padding=2), nn.ReLU())][:-1])
    field = measure_receptive_field(ModelView.of_module(model, model[-1], mean=[0.5], std=[0.5]), 28)
    assert field.size > 0.9 * 28 and not field.crops


def test_mass_shrinks_the_square_and_a_zero_gradient_keeps_the_whole_image() -> None:
    yy, xx = np.mgrid[:40, :40]
    gradient = np.exp(-((yy - 20.0) ** 2 + (xx - 12.0) ** 2) / (2 * 3.0**2))
    tight, loose = field_from_gradient(gradient, 0.5), field_from_gradient(gradient, 0.99)
    assert tight.size < loose.size < 40
    assert abs(loose.top + loose.size / 2 - 20.5) <= 1 and abs(loose.left + loose.size / 2 - 12.5) <= 1
    assert field_from_gradient(np.zeros((40, 40))).size == 40
    assert field_from_gradient(np.full((40, 40), np.nan)).size == 40
