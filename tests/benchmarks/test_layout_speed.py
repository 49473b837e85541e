"""Layout of 100k real activations: ``compute_layout`` on a local cluster vs. plain umap-learn, in the same run.

Data: EfficientNet-Lite0 ``blocks.4`` activations of ``builtin:photos`` at
224 px, every position (14 x 14) of the first 511 images, no attribution,
collected by ``run_atlas(until="collect")``; the first 100,000 rows. They are
cached in ``outputs/benchmarks/`` so reruns skip collection.

- plain: ``umap.UMAP(n_neighbors=30, min_dist=0.05, metric="cosine",
  random_state=0).fit_transform`` on all 100k rows, in a fresh process.
- ours: ``atlas_pipelines.stages.layout.compute_layout`` (defaults: PCA 50, UMAP fit on
  ``layout.fit_sample`` = 20,000 rows, the rest placed in chunks) with a fresh
  default local cluster from ``open_executor``.

numba JIT: each side runs in its own fresh process (ours: fresh Dask worker
processes), and each clock starts before ``umap`` is imported there, so each
side pays its own JIT; both see the same on-disk numba cache (whatever
umap/pynndescent functions marked ``cache=True`` already left there). Set
``ATLAS_BENCH_COLD_NUMBA=1`` to give each side an empty ``NUMBA_CACHE_DIR``.

Quality: scikit-learn trustworthiness (n_neighbors=10) of each 2-D layout
against the activations (cosine, the layout's metric; euclidean reported too)
on the same random 5,000 rows.

Run: ``python -m pytest -q -s -m benchmark tests/benchmarks/test_layout_speed.py``
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _bench_util import RESULTS, child_env, cores, load_average, run_child, write_result

SIDES = Path(__file__).with_name("_layout_sides.py")
N_ROWS = 100_000
N_IMAGES = 511  # 511 x 196 positions = 100,156 rows
TIME_RATIO = 1.3
TRUST_SLACK = 0.02
TRUST_SAMPLE = 5_000


def _activations() -> Path:
    npy = RESULTS / f"layout_activations_{N_ROWS}.npy"
    if not npy.exists():
        RESULTS.mkdir(parents=True, exist_ok=True)
        info = run_child(SIDES, "collect", {"out": str(RESULTS / "layout_run"), "n_images": N_IMAGES, "n_rows": N_ROWS, "npy": str(npy)})
        print(
            f"\ncollected {info['rows_collected']} rows x {info['channels']} channels in {info['seconds']:.1f} s; kept {info['rows_kept']}"
        )
    return npy


def _env(tmp_path: Path, side: str) -> dict[str, str]:
    env = child_env()
    if os.environ.get("ATLAS_BENCH_COLD_NUMBA"):
        env["NUMBA_CACHE_DIR"] = str(tmp_path / f"numba-{side}")
    return env


@pytest.mark.benchmark
def test_layout_speed_and_quality(tmp_path: Path) -> None:
    from sklearn.manifold import trustworthiness

    npy = _activations()
    load_before = load_average()
    plain_coords, ours_coords = tmp_path / "plain.npy", tmp_path / "ours.npy"
    plain = run_child(SIDES, "plain", {"npy": str(npy), "coords": str(plain_coords)}, env=_env(tmp_path, "plain"))
    ours = run_child(SIDES, "ours", {"npy": str(npy), "coords": str(ours_coords)}, env=_env(tmp_path, "ours"))
    ratio = ours["seconds"] / plain["seconds"]

    x = np.load(npy)
    sample = np.sort(np.random.default_rng(0).choice(len(x), size=TRUST_SAMPLE, replace=False))
    ys = {"plain": np.load(plain_coords), "ours": np.load(ours_coords)}
    assert ys["plain"].shape == ys["ours"].shape == (N_ROWS, 2)
    assert np.isfinite(ys["ours"]).all()
    trust = {
        (name, metric): float(trustworthiness(x[sample], y[sample], n_neighbors=10, metric=metric))
        for name, y in ys.items()
        for metric in ("cosine", "euclidean")
    }
    gap = trust[("plain", "cosine")] - trust[("ours", "cosine")]

    result = {
        "rows": N_ROWS,
        "channels": int(x.shape[1]),
        "load_average_1min_at_start": load_before,
        "cold_numba_cache": bool(os.environ.get("ATLAS_BENCH_COLD_NUMBA")),
        "plain": plain,
        "ours": ours,
        "time_ratio": ratio,
        "time_ratio_target": TIME_RATIO,
        "trustworthiness": {f"{name}_{metric}": value for (name, metric), value in trust.items()},
        "trust_gap_cosine": gap,
        "trust_slack": TRUST_SLACK,
    }
    print(f"\nlayout of {N_ROWS} x {x.shape[1]} activations, {cores()} cores (load {load_before:.2f})")
    print(
        f"  plain umap-learn : {plain['seconds']:7.1f} s  (import {plain['import_s']:.1f} s, fit_transform {plain['fit_transform_s']:.1f} s)"
    )
    print(f"  compute_layout   : {ours['seconds']:7.1f} s  (cluster start {ours['cluster_start_s']:.1f} s, "
          f"fit on {ours['fit_sample']} rows {ours.get('fit_s', float('nan')):.1f} s, place the rest {ours.get('place_s', float('nan')):.1f} s; "
          f"cluster close +{ours['with_cluster_close_s'] - ours['seconds']:.1f} s)")  # fmt: skip
    print(f"  time ratio ours/plain: {ratio:.3f}  (target <= {TIME_RATIO})")
    print(f"  trustworthiness (k=10, {TRUST_SAMPLE} rows) cosine: plain {trust[('plain', 'cosine')]:.4f}, ours {trust[('ours', 'cosine')]:.4f}, "
          f"gap {gap:+.4f} (target <= {TRUST_SLACK}); euclidean: plain {trust[('plain', 'euclidean')]:.4f}, ours {trust[('ours', 'euclidean')]:.4f}")  # fmt: skip
    write_result("layout_speed", result)
    assert ratio <= TIME_RATIO, (
        f"compute_layout {ours['seconds']:.1f} s vs plain UMAP {plain['seconds']:.1f} s: ratio {ratio:.3f} > {TIME_RATIO}"
    )
    assert gap <= TRUST_SLACK, (
        f"trustworthiness {trust[('ours', 'cosine')]:.4f} vs plain {trust[('plain', 'cosine')]:.4f}: gap {gap:.4f} > {TRUST_SLACK}"
    )
