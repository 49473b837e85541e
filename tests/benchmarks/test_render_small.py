"""Rendering small icons (28 px, 1 channel) against a bare forward+backward of the truncated model, same batch.

Model: the Fashion-MNIST CNN of the scaling benchmark (relu variant of
``configs/compare_activations.yaml``, trained once into ``outputs/benchmarks/scaling``),
layer ``features.act5``. Directions: 64 cells of the 100k-row scaling bundle's
grid 40 (or random ones when it is absent).

- ours: ``atlas.featurevis.render`` with the render stage's objective and
  parameterisation (``Direction``, ``fourier(1, 28)``, random views), 64 icons, 64 steps.
- bare: 64 steps of forward to ``features.act5`` and backward to a [64, 1, 28, 28]
  input, normalised the same way, channels_last, nothing else.

Both in this process with the same threads; each timed three times alternately, the
fastest counts. Figure: (images x steps / s of ours) / (of bare). Target >= 0.7.

Run: ``python -m pytest -q -s -m benchmark tests/benchmarks/test_render_small.py``
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _bench_util import RESULTS, cores
from test_scaling import WORK, trained_model

from atlas.config import ModelConfig
from atlas.featurevis import Direction, fourier, render
from atlas.models import load_model, resolve_layer, run_to_layer

pytestmark = pytest.mark.benchmark

BATCH, STEPS, SIZE, TARGET = 64, 64, 28, 0.7


def test_small_icons_render_near_the_bare_loop() -> None:
    torch.set_num_threads(cores())
    spec = trained_model()
    model = load_model(ModelConfig(spec=str(spec), layer="features.act5"))
    module = model.module.to(memory_format=torch.channels_last)
    layer = resolve_layer(model, "features.act5")
    prep = model.preprocessing
    bundle_directions = WORK / "runs" / "fashion-100000" / "levels" / "40" / "directions.npy"
    if Path(bundle_directions).exists():
        directions = np.load(bundle_directions)[:BATCH]
    else:
        directions = np.abs(np.random.default_rng(0).normal(size=(BATCH, 64))).astype(np.float32)
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)

    def ours() -> float:
        start = time.perf_counter()
        render(module, Direction(directions), fourier(prep.channels, SIZE), layer=layer, seeds=list(range(len(directions))),
               mean=prep.mean, std=prep.std, steps=STEPS)  # fmt: skip
        return time.perf_counter() - start

    def bare() -> float:
        pixels = torch.rand(len(directions), prep.channels, SIZE, SIZE, requires_grad=True)
        start = time.perf_counter()
        for _ in range(STEPS):
            x = ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)
            run_to_layer(module, layer, x).sum().backward()
        return time.perf_counter() - start

    ours(), bare()  # warm-up
    times = {"ours": [], "bare": []}
    for _ in range(3):
        times["bare"].append(bare())
        times["ours"].append(ours())
    rate = {side: len(directions) * STEPS / min(t) for side, t in times.items()}
    ratio = rate["ours"] / rate["bare"]
    result = {"batch": len(directions), "steps": STEPS, "icon_px": SIZE, "times_s": times, "images_steps_per_s": rate, "ratio": ratio}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "render_small.json").write_text(json.dumps(result, indent=2))
    print(f"\nrender 28 px: ours {rate['ours']:.0f} images x steps/s, bare {rate['bare']:.0f}: ratio {ratio:.2f} (target >= {TARGET})")
    assert ratio >= TARGET, result
