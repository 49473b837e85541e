"""The viewer on a bundle with a 320 x 320 grid: first tile, hover latency at every grid, JavaScript heap.

The bundle is the 1M-row Fashion-MNIST run of test_scaling.py re-run with grids
20..320 (``grid.min_count=1``: every occupied cell, as many at 320 as the layout gives) and one render step,
which reuses its collection and layout; or any bundle named by
``ATLAS_BENCH_VIEWER_BUNDLE``. Headless Chromium (Debian's) through Playwright,
the bundle served by ``atlas serve`` in its own process on loopback.

- first tile: ``window.atlas.firstTileMs``, milliseconds from navigation start to
  the first tile drawn; in each view (icons, examples, both: a fresh page opened at
  ``#view=NAME``), the bundle re-tiled first where it predates the examples view.
- hover: for each grid, locked from the toolbar, 20 random kept cells: the time
  from just before the pointer moves to the moment the page has shown that
  cell's label (``window.atlas.lastTip.at``), with the view zoomed so the grid's
  cells are 24 px wide and centred on the cell (its block is not prefetched when
  the jump is far, which is the slow case).
- heap: ``Runtime.getHeapUsage`` over CDP after all of it.

Run: ``python -m pytest -q -s -m benchmark tests/benchmarks/test_viewer_scale.py``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _bench_util import REPO, RESULTS, child_env

pytestmark = pytest.mark.benchmark

sys.path.insert(0, str(REPO / "tests"))
from test_viewer_browser import CHROMIUM, CHROMIUM_ARGS, atlas_serve  # noqa: E402 (the tests folder joins the path first)

TARGETS = {"first_tile_ms": 1000, "hover_ms": 200, "heap_mb": 200}
SOURCE = RESULTS / "scaling" / "runs" / "fashion-1000000"


def viewer_bundle() -> Path:
    given = os.environ.get("ATLAS_BENCH_VIEWER_BUNDLE")
    if given:
        return Path(given)
    if not (SOURCE / "manifest.json").exists():
        pytest.skip(f"no {SOURCE}: run test_scaling.py at 1M rows first, or set ATLAS_BENCH_VIEWER_BUNDLE")
    manifest = json.loads((SOURCE / "manifest.json").read_text())
    untiled = any(level.get("dzi") and not level.get("views") for level in manifest["levels"])  # before the examples view
    if 320 not in [level["grid"] for level in manifest["levels"]] or untiled:
        config = manifest["config"]
        command = [
            sys.executable, "-m", "atlas_pipelines.commands.cli", "run", "--model", config["model"]["spec"], "--layer", config["model"]["layer"],
            "--images", config["images"]["source"], "--name", SOURCE.name, "--out", str(SOURCE.parent),
            "--set", f"collect.n_images={config['collect']['n_images']}", "--set", "collect.positions_per_image=16",
            "--set", "collect.batch_size=256", "--set", "collect.shard_size=500",
            "--set", "grid.sizes=[20,40,80,160,320]", "--set", "grid.min_count=1",
            "--set", "render.icon_size=28", "--set", "render.steps=1", "--set", "render.whiten=false",
        ]  # fmt: skip
        subprocess.run(command, cwd=REPO, env=child_env(), check=True, timeout=7200)
    return SOURCE


def hover_ms(page: Any, grid: int, i: int, j: int) -> float:
    page.evaluate(
        """([g, i, j]) => { const a = window.atlas, v = a.viewer.viewport;
           v.zoomTo(v.getHomeZoom() * g * 24 / Math.min(document.querySelector('main').clientWidth, document.querySelector('main').clientHeight), null, true);
           v.panTo(new OpenSeadragon.Point((i + 0.5) / g, (j + 0.5) / g), true); v.applyConstraints(true); }""",
        [grid, i, j],
    )
    spot = page.evaluate(f"window.atlas.cellCenter({grid}, {i}, {j})")
    page.mouse.move(spot["x"] + 40, spot["y"] + 40)
    before = page.evaluate("performance.now()")
    page.mouse.move(spot["x"], spot["y"])
    page.wait_for_function(f"(() => {{ const t = window.atlas.lastTip; return t && t.grid === {grid} && t.i === {i} && t.j === {j}; }})()")
    return page.evaluate("window.atlas.lastTip.at") - before


def test_viewer_at_a_320_grid() -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    bundle = viewer_bundle()
    manifest = json.loads((bundle / "manifest.json").read_text())
    grids = [level["grid"] for level in manifest["levels"] if level.get("dzi")]
    cells_at = {level["grid"]: level["n_cells"] for level in manifest["levels"]}
    result: dict[str, Any] = {"bundle": str(bundle), "cells": cells_at, "targets": TARGETS}
    rng = np.random.default_rng(0)
    with atlas_serve(bundle) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        page.goto(url)
        page.wait_for_function("window.atlas && window.atlas.ready && window.atlas.firstTileMs !== null", timeout=60_000)
        result["first_tile_ms"] = page.evaluate("window.atlas.firstTileMs")
        views = page.evaluate("window.atlas.views()")
        result["first_tile_ms_by_view"] = {"icons": result["first_tile_ms"]}
        for view in views[1:]:
            other = browser.new_page(viewport={"width": 1200, "height": 760})
            other.goto(f"{url}#view={view}")
            other.wait_for_function("window.atlas && window.atlas.ready && window.atlas.firstTileMs !== null", timeout=60_000)
            assert other.evaluate("window.atlas.view()") == view
            result["first_tile_ms_by_view"][view] = other.evaluate("window.atlas.firstTileMs")
            other.close()
        hovers: dict[int, list[float]] = {}
        for grid in grids:
            page.select_option("#grid-select", str(grid))
            page.wait_for_function(f"window.atlas.currentGrid() === {grid} && window.atlas.keptCells({grid}).length > 0", timeout=60_000)
            kept = page.evaluate(f"window.atlas.keptCells({grid})")
            picks = rng.choice(len(kept), size=min(20, len(kept)), replace=False)
            hovers[grid] = [hover_ms(page, grid, kept[k]["i"], kept[k]["j"]) for k in picks]
        result["hover_ms"] = {g: {"median": float(np.median(v)), "max": float(np.max(v))} for g, v in hovers.items()}
        session = page.context.new_cdp_session(page)
        heap = session.send("Runtime.getHeapUsage")
        result["heap_mb"] = heap["usedSize"] / 2**20
        result["heap_total_mb"] = heap["totalSize"] / 2**20
        browser.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "viewer_scale.json").write_text(json.dumps(result, indent=2))
    print(f"\nviewer at grids {grids} ({cells_at}): first tile {result['first_tile_ms_by_view']} ms, hover {result['hover_ms']}, "
          f"heap {result['heap_mb']:.1f} MB (total {result['heap_total_mb']:.1f})")  # fmt: skip
    assert result["first_tile_ms"] <= TARGETS["first_tile_ms"]
    assert len(views) == 3 and max(result["first_tile_ms_by_view"].values()) <= TARGETS["first_tile_ms"], "every view"
    assert max(h["max"] for h in result["hover_ms"].values()) <= TARGETS["hover_ms"]
    assert result["heap_mb"] <= TARGETS["heap_mb"]
