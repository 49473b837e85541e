"""Feature visualisation on real models: objectives rise, batches match single renders, best of N is the best."""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from atlas.featurevis import (
    Channel,
    Direction,
    FourierParam,
    LayerCapture,
    Neuron,
    Objective,
    PixelParam,
    TotalVariation,
    Transforms,
    centre,
    fourier,
    layer_output,
    pixels,
    render,
    render_channel,
    score_images,
    try_seeds,
)
from atlas.featurevis.fidelity import direction_fidelity

HALF = (0.5, 0.5, 0.5)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lite0() -> tuple[nn.Module, nn.Module]:
    """Untrained EfficientNet-Lite0 (fixed init), up to blocks.3: a linear projection, so directions can be negative."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    return model, model.blocks[3]


def small_cnn(in_channels: int = 3) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


def centre_activations(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return centre(layer_output(model, layer, (images - 0.5) / 0.5))


def test_rendering_raises_the_objective(lite0: tuple[nn.Module, nn.Module]) -> None:
    """Each objective rises well above its start on the plain image, not just on the training views.

    Directions are real activations (of smooth random images), as atlas cells are;
    an untrained network has a few channels whose spatial mean does not survive
    random views, so "most images" rather than "all" improve for those.
    """
    model, layer = lite0
    seeds = [0, 1, 2, 3]
    torch.manual_seed(5)
    targets = centre_activations(model, layer, FourierParam([100, 101, 102, 103], 3, 64, sd=0.5)())
    objectives = {
        "direction": Direction(targets),
        "channel": Channel(torch.randperm(80)[:4]),
        "neuron": Neuron(torch.randperm(80)[:4]),
    }
    for kind, objective in objectives.items():
        before = score_images(model, objective, FourierParam(seeds, 3, 64)(), layer=layer, mean=HALF, std=HALF)
        result = render(model, objective, fourier(3, 64), layer=layer, seeds=seeds, mean=HALF, std=HALF, steps=40)
        assert result.images.shape == (4, 3, 64, 64) and result.history.shape == (40,)
        assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
        gain = result.scores - before
        assert int((gain > 0).sum()) >= 3, f"{kind}: most images should improve: {before} -> {result.scores}"
        assert float(gain.mean()) > 10 * float(before.abs().mean()) + 0.5, f"{kind}: no clear gain: {gain}"
        assert float(result.history[-5:].mean()) > float(result.history[:5].mean()) + 0.5
        if kind == "direction":  # the icon's centre activation points along its target (docs/architecture.md section 8)
            cosine = F.cosine_similarity(centre_activations(model, layer, result.images), targets)
            assert float(cosine.min()) > 0.8, cosine


def test_batched_and_one_at_a_time_agree(lite0: tuple[nn.Module, nn.Module]) -> None:
    """Same seeds, same images, whether rendered in a batch or alone.

    In float64 (PyTorch's plain convolution) the two are bit-identical. In
    float32, oneDNN rounds differently at different batch sizes (1e-8 in
    activations) and Adam turns that into whole steps once a gradient sits at a
    ReLU6 kink, so long float32 renders drift apart after a few steps (from step
    4 with torch 2.14's oneDNN, ~10 before); a bug (views or inits depending on
    the batch) would show at the first step.
    """
    model, layer = lite0
    seeds = [3, 7, 11]
    torch.manual_seed(6)
    vectors = torch.randn(3, 80)
    for dtype, steps, tolerance in [(torch.float64, 20, 1e-9), (torch.float32, 3, 1e-5)]:
        typed = copy.deepcopy(model).to(dtype)
        typed_layer = typed.get_submodule(next(n for n, m in model.named_modules() if m is layer))
        run = partial(render, typed, layer=typed_layer, param_factory=fourier(3, 36), mean=HALF, std=HALF, steps=steps,
                      input_size=40)  # fmt: skip
        batched = run(objective=Direction(vectors), seeds=seeds)
        assert float((batched.images[0] - batched.images[1]).abs().max()) > 0.01, "different seeds, different images"
        for b, seed in enumerate(seeds):
            alone = run(objective=Direction(vectors[b : b + 1]), seeds=[seed])
            torch.testing.assert_close(alone.images[0], batched.images[b], atol=tolerance, rtol=0)
            torch.testing.assert_close(alone.scores[0], batched.scores[b], atol=tolerance, rtol=1e-4)


def test_bf16_renders_what_fp32_renders(lite0: tuple[nn.Module, nn.Module]) -> None:
    """render.precision=bf16 (autocast on the model's forward) works on CPU too: finite icons in [0, 1] that reach
    what fp32 reaches, and their forward really ran in bfloat16 (the scores differ from fp32's by bf16 rounding)."""
    model, layer = lite0
    seeds = [0, 1, 2, 3]
    torch.manual_seed(5)
    targets = centre_activations(model, layer, FourierParam([100, 101, 102, 103], 3, 48, sd=0.5)())
    run = partial(render, model, Direction(targets), fourier(3, 48), layer=layer, seeds=seeds, mean=HALF, std=HALF, steps=30)
    full, half = run(), run(precision="bf16")
    before = score_images(model, Direction(targets), FourierParam(seeds, 3, 48)(), layer=layer, mean=HALF, std=HALF)
    assert half.images.dtype == torch.float32 and bool(torch.isfinite(half.images).all())
    assert float(half.images.min()) >= 0.0 and float(half.images.max()) <= 1.0
    assert not torch.equal(half.images, full.images), "bf16 must actually change the arithmetic"
    # scored in fp32 on the plain images: bf16's icons reach what fp32's reach, far above the start
    after_half = score_images(model, Direction(targets), half.images, layer=layer, mean=HALF, std=HALF)
    assert float((after_half - before).mean()) > 0.8 * float((full.scores - before).mean()), (before, full.scores, after_half)
    cosine = F.cosine_similarity(centre_activations(model, layer, half.images), targets)
    assert float(cosine.mean()) > 0.8, cosine
    with pytest.raises(ValueError, match="precision 'fp16'"):
        run(precision="fp16")


def test_best_of_n_keeps_the_best_try() -> None:
    model = small_cnn()
    layer = model[5]
    seeds = [10, 20, 30, 40, 50, 60]
    objective = Channel([0, 3, 5, 8, 13, 21])
    run = partial(render, model, objective, fourier(3, 24), layer=layer, mean=HALF, std=HALF, steps=8)
    best = run(seeds=seeds, tries=3)
    separate = [run(seeds=try_seeds(seeds, t)) for t in range(3)]
    scores = torch.stack([r.scores for r in separate])
    torch.testing.assert_close(best.try_scores, scores)
    torch.testing.assert_close(best.scores, scores.max(dim=0).values)
    assert best.best_try.tolist() == scores.argmax(dim=0).tolist()
    assert len(set(best.best_try.tolist())) > 1, "the test needs images whose best try differs"
    for b, t in enumerate(best.best_try.tolist()):
        torch.testing.assert_close(best.images[b], separate[t].images[b])


def test_one_channel_28px_model() -> None:
    model = small_cnn(in_channels=1)
    layer = model[5]
    seeds = [0, 1]
    objective = Channel([4, 9])
    param = FourierParam(seeds, 1, 28)
    with torch.no_grad():
        before = score_images(model, objective, param(), layer=layer, mean=(0.5,), std=(0.5,))
    run = partial(render, model, objective, layer=layer, seeds=seeds, mean=(0.5,), std=(0.5,))
    result = run(fourier(1, 28), steps=30)
    assert result.images.shape == (2, 1, 28, 28)
    assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
    assert bool((result.scores > before).all())
    resized = run(pixels(1, 28), steps=5, input_size=32)  # plain pixels, fed to the model at 32 px
    assert resized.images.shape == (2, 1, 28, 28)


def test_objectives_compose_arithmetically() -> None:
    torch.manual_seed(2)
    activation, image = torch.randn(5, 8, 7, 7), torch.rand(5, 3, 16, 16)
    a, b, c = Direction(torch.randn(5, 8)), Channel([0, 1, 2, 3, 4]), Neuron(6, y=1, x=2)
    tv = TotalVariation(0.3)
    combined = a + 2 * b - c + tv
    expected = a(activation, image) + 2 * b(activation, image) - c(activation, image) + tv(activation, image)
    torch.testing.assert_close(combined(activation, image), expected)
    torch.testing.assert_close((-a / 4)(activation, image), -0.25 * a(activation, image))
    total: Objective = sum([a, b])  # type: ignore[assignment]
    torch.testing.assert_close(total(activation, image), a(activation, image) + b(activation, image))
    assert bool((tv(activation, image) < 0).all()), "total variation is a penalty"
    torch.testing.assert_close(c(activation, image), activation[:, 6, 1, 2])


def test_direction_floor_keeps_a_gradient_at_negative_cosine(lite0: tuple[nn.Module, nn.Module]) -> None:
    torch.manual_seed(3)
    activation = torch.randn(2, 16, 5, 5, requires_grad=True)
    vectors = -activation.detach()[:, :, 2, 2] + 0.1 * torch.randn(2, 16)  # cosine close to -1
    (grad,) = torch.autograd.grad(Direction(vectors)(activation, activation).sum(), activation)
    assert float(grad[:, :, 2, 2].abs().min(dim=1).values.min()) > 0, "the floor must leave a gradient everywhere"
    assert float((grad[:, :, 2, 2] * vectors).sum(dim=1).min()) > 0, "and it must point along the vectors"
    (dead,) = torch.autograd.grad(Direction(vectors, floor=0.0)(activation, activation).sum(), activation)
    assert float(dead.abs().max()) == 0.0, "without the floor (relu of cosine) the gradient vanishes"
    # Through a real model: an icon that starts pointing away from its target still gets pushed towards it.
    model, layer = lite0
    param = FourierParam([0, 1], 3, 48)
    opposite = -centre_activations(model, layer, param())
    with LayerCapture(layer, module=model, stop=True) as capture:
        activation = capture((param() - 0.5) / 0.5)
    assert float(F.cosine_similarity(centre(activation.detach()), opposite).max()) < 0
    Direction(opposite)(activation, param()).sum().backward()
    assert param.spectrum.grad is not None and float(param.spectrum.grad.abs().amax(dim=(1, 2, 3, 4)).min()) > 0


def test_direction_whitened_uses_the_matrix() -> None:
    torch.manual_seed(4)
    vectors, matrix = torch.randn(3, 6), torch.randn(6, 6)
    torch.testing.assert_close(Direction.whitened(vectors, matrix.numpy()).vectors, vectors @ matrix.T)


def test_views_do_not_depend_on_the_batch() -> None:
    image = torch.rand(3, 3, 40, 40)
    views = Transforms().views([5, 6, 7], steps=4, image_size=40, out_size=48)
    alone = Transforms().views([6], steps=4, image_size=40, out_size=48)
    torch.testing.assert_close(views(image, 3)[1:2], alone(image[1:2], 3))
    assert views(image, 3).shape == (3, 3, 48, 48)
    assert not torch.allclose(views(image, 0), views(image, 1)), "each step draws a new view"
    assert Transforms().pixel_amounts(80) == (4.0, 5, 3) and Transforms().pixel_amounts(28) == (1.5, 2, 1)
    identity = Transforms(pad=0, jitter=0, final_jitter=0, scales=(1.0,), angles=(0.0,)).views([1], 2, 40)
    torch.testing.assert_close(identity(image[:1], 0), image[:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(Transforms.none().views([1], 2, 40)(image[:1], 1), image[:1])


def test_params_are_seeded_per_image() -> None:
    both, alone = FourierParam([8, 9], 3, 20), FourierParam([9], 3, 20)
    torch.testing.assert_close(both()[1:], alone())
    assert PixelParam([1, 2], 1, (12, 17))().shape == (2, 1, 12, 17)
    assert FourierParam([0], 3, (15, 21))().shape == (1, 3, 15, 21)


def test_capture_stops_at_the_layer() -> None:
    model = small_cnn()
    calls: list[str] = []
    model[6].register_forward_hook(lambda *_: calls.append("after"))
    with LayerCapture(model[3], module=model, stop=True) as capture:
        out = capture(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 24, 8, 8) and calls == []
    with LayerCapture(model[3], module=model, stop=False) as capture:
        capture(torch.rand(2, 3, 16, 16))
    assert calls == ["after"]


def test_render_channel_in_three_lines(lite0: tuple[nn.Module, nn.Module]) -> None:
    model, layer = lite0
    result = render_channel(model, layer, 7, size=32, steps=6)
    assert result.images.shape == (1, 3, 32, 32) and result.scores.shape == (1,)


def test_direction_fidelity_ranks_the_same_in_blocks() -> None:
    """Ranks computed a block of icons at a time (bounded memory at a 320 grid) equal the whole comparison."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(300, 16)).astype(np.float32)
    activations = (directions + rng.normal(scale=1.5, size=directions.shape)).astype(np.float32)
    whole = direction_fidelity(activations, directions, block=10_000)
    a = activations / np.linalg.norm(activations, axis=1, keepdims=True)
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    similarity = a @ d.T
    np.testing.assert_array_equal(whole.rank, (similarity > np.diag(similarity)[:, None]).sum(axis=1))
    for block in (1, 7, 64):
        blocked = direction_fidelity(activations, directions, block=block)
        np.testing.assert_array_equal(blocked.rank, whole.rank)
        np.testing.assert_allclose(blocked.cosine, np.diag(similarity), rtol=1e-5, atol=1e-6)
    assert 0 < whole.top1 < 1
