"""On one GPU: render throughput against the bare forward+backward, and ``configs/article.yaml`` end to end.

- (a) EfficientNet-Lite0 to ``blocks.4``, 80 px icons, at batch 64, 256 and 1,024: ``atlas.featurevis.render``
  exactly as the render stage calls it (``Direction`` objective, ``fourier(3, 80)``, random views, the model
  channels_last on the device, as a worker holds it), images x steps per second, set-up and final scoring
  included; against a bare loop of forward to ``blocks.4`` + backward to a channels_last input of the same batch
  on the same device (``render_sides.Truncated``, the same truncated model the CPU render benchmark uses).
  fp32 and bf16 (``render.precision``; the bare loop then runs under the same autocast). Every timing is
  synchronised with the GPU, best of ``repeats``. Target: >= 0.8 in fp32 at batch >= 256.
- (b) ``atlas run configs/article.yaml --set device=cuda`` on the built-in photos at every interior position
  (144 per photo, about 142k rows), grids 20/40/80/160, 80 px icons, 1,024 steps, best of 4, on the default
  local cluster (one worker per GPU): seconds per stage from the manifest. Target on one H200: <= 30 minutes.

Run (skipped without CUDA): ``python -m pytest -q -s -m gpu tests/benchmarks/test_gpu.py``; figures are printed
and written to ``outputs/benchmarks/gpu_render.json`` and ``gpu_article.json``. ``ATLAS_BENCH_DEVICE=cpu`` runs
both on the CPU at a tiny size (a harness check, not a figure), and the default test suite runs that tiny size
too (``test_the_gpu_benchmark_runs_on_cpu_at_a_tiny_size``), so the benchmark cannot rot on machines without one.
Knobs: ``ATLAS_BENCH_GPU_STEPS`` (64 render steps per timing), ``ATLAS_BENCH_PRECISIONS`` (``fp32,bf16``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _bench_util import REPO, RESULTS, child_env, write_result
from render_sides import LAYER, Truncated

from atlas.config import ModelConfig, RenderConfig
from atlas.devices import resolve_device
from atlas.featurevis import Direction, fourier, render
from atlas.featurevis.choice import candidate_steps, first_candidates
from atlas.models import load_model, resolve_layer
from atlas_pipelines.commands.run import STAGE_NAMES

TARGET_BARE_FRACTION = 0.8  # fp32, batch >= 256
ARTICLE = REPO / "configs" / "article.yaml"
STAGES = STAGE_NAMES  # every stage reports its seconds


@dataclass(frozen=True)
class Size:
    """How big a benchmark run is: the real one on a GPU, or a tiny one that only checks the harness works."""

    batches: tuple[int, ...]
    steps: int
    repeats: int
    article: tuple[str, ...]  # --set overrides on configs/article.yaml
    scheduler: str


GPU_SIZE = Size(
    batches=(64, 256, 1024),
    steps=int(os.environ.get("ATLAS_BENCH_GPU_STEPS", "64")),
    repeats=3,
    article=("collect.positions_per_image=144", "grid.sizes=[20,40,80,160]"),  # 144: every interior position of 14 x 14
    scheduler="local",
)
TINY = Size(
    batches=(4,),
    steps=3,
    repeats=1,
    article=(
        "collect.n_images=8", "collect.positions_per_image=4", "collect.shard_size=4", "layout.n_neighbors=8",
        "grid.sizes=[2,4]", "grid.min_count=1", "render.steps=2", "render.tries=2", "render.batch_size=4",
    ),
    scheduler="sync",
)  # fmt: skip


def bench_device() -> torch.device:
    """``ATLAS_BENCH_DEVICE`` (default cuda); skips when that GPU is not here."""
    setting = os.environ.get("ATLAS_BENCH_DEVICE", "cuda")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here; ATLAS_BENCH_DEVICE=cpu runs this benchmark at a tiny size on the CPU")
    return resolve_device(setting)


def _timed(device: torch.device, fn: Callable[[], Any], repeats: int) -> float:
    """Best of ``repeats`` wall times of ``fn``, each waiting for the GPU's queue to drain before and after."""
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def render_throughput(device: torch.device, size: Size, precisions: tuple[str, ...], icon_px: int = 80) -> dict[str, Any]:
    """(a): images x steps per second of the render loop and of the bare loop, per batch and precision."""
    model = load_model(ModelConfig())
    model.module.to(device=device, memory_format=torch.channels_last)  # as pipelines/engine/worker_state.py holds it
    layer = resolve_layer(model, LAYER)
    truncated = Truncated(model.module).eval()
    rows = [
        _compare(model, layer, truncated, device, batch, precision, size, icon_px) for batch in size.batches for precision in precisions
    ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "icon_px": icon_px, "rows": rows}


def _compare(
    model: Any, layer: torch.nn.Module, truncated: Truncated, device: torch.device, batch: int, precision: str, size: Size, icon_px: int
) -> dict[str, Any]:
    """One batch size and precision: the render loop against the bare loop, each timed on its own."""
    prep, render_config = model.preprocessing, RenderConfig()
    config = first_candidates(
        candidate_steps(render_config.whiten, render_config.cossim_power, render_config.learning_rate)
    )  # no probe here
    x = torch.rand(batch, 3, icon_px, icon_px, device=device).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.no_grad():
        channels = int(truncated(x[:1]).shape[1])
    directions = np.abs(np.random.default_rng(batch).normal(size=(batch, channels))).astype(np.float32)
    images: list[torch.Tensor] = []

    def ours(steps: int = size.steps) -> None:
        result = render(
            model.module, Direction(directions, cossim_power=config.cossim_power), fourier(prep.channels, icon_px),
            layer=layer, seeds=list(range(batch)), mean=prep.mean, std=prep.std, steps=steps, lr=config.learning_rate, precision=precision,
        )  # fmt: skip
        images[:] = [result.images]

    def bare(steps: int = size.steps) -> None:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = truncated(x)
            out.float().sum().backward(inputs=[x])
            x.grad = None

    ours(2), bare(2)  # warm-up: cuDNN's algorithm search, the allocator, kernels for these shapes
    seconds = {"ours": _timed(device, ours, size.repeats), "bare": _timed(device, bare, size.repeats)}
    rate = {side: batch * size.steps / s for side, s in seconds.items()}
    icons = images[0]
    return {"batch": batch, "precision": precision, "steps": size.steps, "seconds": seconds, "images_steps_per_s": rate,
            "ratio": rate["ours"] / rate["bare"],
            "icons_finite_in_0_1": bool(torch.isfinite(icons).all()) and float(icons.min()) >= 0.0 and float(icons.max()) <= 1.0}  # fmt: skip


def article_end_to_end(device: str, size: Size, out: Path, name: str, precision: str = "fp32") -> dict[str, Any]:
    """(b): ``atlas run configs/article.yaml`` cold, as a user runs it; seconds per stage from its manifest."""
    subprocess.run(["rm", "-rf", str(out / name)], check=True)
    sets = [*size.article, f"device={device}", f"render.precision={precision}"]
    command = [sys.executable, "-m", "atlas_pipelines.commands.cli", "run", str(ARTICLE), "--out", str(out), "--name", name,
               "--scheduler", size.scheduler, *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=4 * 3600)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    manifest = json.loads((out / name / "manifest.json").read_text())
    return {
        "command": " ".join(command[1:]),
        "wall_s": round(wall, 1),
        "stages_s": {stage: round(info["seconds"], 1) for stage, info in manifest["stages"].items()},
        "rows": manifest["n_activations"],
        "images": manifest["n_images"],
        "levels": [{"grid": lv["grid"], "cells": lv.get("n_cells"), "fidelity": lv.get("fidelity")} for lv in manifest["levels"]],
        "render": manifest["render"],
        "device": manifest["config"]["device"],
    }


def _precisions() -> tuple[str, ...]:
    return tuple(os.environ.get("ATLAS_BENCH_PRECISIONS", "fp32,bf16").split(","))


@pytest.mark.gpu
@pytest.mark.benchmark
def test_a_render_vs_bare_forward_backward() -> None:
    device = bench_device()
    result = render_throughput(device, GPU_SIZE if device.type == "cuda" else TINY, _precisions())
    write_result("gpu_render", result)
    print(f"\n  render vs bare forward+backward on {result['device_name']} at {result['icon_px']} px:")
    for row in result["rows"]:
        rate = row["images_steps_per_s"]
        print(f"    batch {row['batch']:>5} {row['precision']}: ours {rate['ours']:9.0f}, bare {rate['bare']:9.0f} images x steps/s, "
              f"ratio {row['ratio']:.2f}")  # fmt: skip
    assert all(row["icons_finite_in_0_1"] for row in result["rows"]), result
    if device.type == "cuda":
        low = [row for row in result["rows"] if row["precision"] == "fp32" and row["batch"] >= 256 and row["ratio"] < TARGET_BARE_FRACTION]
        assert not low, f"render below {TARGET_BARE_FRACTION} of the bare loop: {low}"


@pytest.mark.gpu
@pytest.mark.benchmark
def test_b_article_end_to_end() -> None:
    device = bench_device()
    size = GPU_SIZE if device.type == "cuda" else TINY
    result = article_end_to_end(str(device), size, RESULTS / "gpu", "article", os.environ.get("ATLAS_BENCH_PRECISION", "fp32"))
    result["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    write_result("gpu_article", result)
    print(f"\n  configs/article.yaml on {result['device_name']}: {result['rows']} rows, {result['wall_s']:.0f} s; "
          f"stages {result['stages_s']}")  # fmt: skip
    assert set(result["stages_s"]) == set(STAGES)


def test_the_gpu_benchmark_runs_on_cpu_at_a_tiny_size(tmp_path: Path) -> None:
    """The default suite runs both halves of the GPU benchmark on the CPU at a tiny size, so they cannot rot."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        result = render_throughput(resolve_device("cpu"), TINY, ("fp32", "bf16"))
    finally:
        torch.set_num_threads(threads)
    assert [(row["batch"], row["precision"]) for row in result["rows"]] == [(4, "fp32"), (4, "bf16")]
    for row in result["rows"]:
        assert row["icons_finite_in_0_1"], row
        assert all(0 < rate < math.inf for rate in row["images_steps_per_s"].values()) and row["ratio"] > 0, row
    article = article_end_to_end("cpu", TINY, tmp_path, "article")
    assert set(article["stages_s"]) == set(STAGES) and article["device"] == "cpu"
    assert article["rows"] == 8 * 4 and article["render"]["steps"] == 2 and article["render"]["tries"] == 2
    cells = json.loads((tmp_path / "article" / "levels" / "4" / "cells.json").read_text())
    assert cells and all((tmp_path / "article" / cell["icon"]).is_file() for cell in cells)
