"""A bundle in a notebook: the viewer inline (loaded from another origin than the kernel's, as on JupyterHub or a
remote server), the cells as a DataFrame and the poster as an image, on a small real run."""

from __future__ import annotations

import json
import re
import sys
import types
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_viewer_browser import browser, bundle, run_output  # noqa: F401 -- the run and the browser the viewer tests use

from atlas.bundle import open_bundle
from atlas.errors import AtlasError
from atlas.viewer.inline import embedded_size, inline_html

NOTEBOOK_ORIGIN = "https://notebooks.example.org"  # the page's origin: not the kernel's address, and not served by it


def test_to_dataframe_has_one_row_per_kept_cell(bundle: Path) -> None:  # noqa: F811
    reader = open_bundle(bundle)
    for grid in reader.grids:
        cells = json.loads((bundle / "levels" / str(grid) / "cells.json").read_text())
        table = reader.level(grid).to_dataframe()
        assert len(table) == len(cells) > 0
        assert list(table[["i", "j"]].itertuples(index=False, name=None)) == [(c["i"], c["j"]) for c in cells]
        assert table["count"].tolist() == [c["count"] for c in cells]
        assert table["top_class"].tolist() == [c["top_classes"][0]["label"] for c in cells]
        assert np.allclose(table["fidelity_cosine"], [c["fidelity"]["cosine"] for c in cells])
        checked = [np.nan if c["path_check"] is None else c["path_check"]["cosine"] for c in cells]
        assert np.allclose(table["path_check_cosine"], checked, equal_nan=True)


def test_poster_is_the_whole_grid_and_scales_down(bundle: Path) -> None:  # noqa: F811
    reader = open_bundle(bundle)
    full = reader.poster(4, max_side=None)
    assert full.size == (4 * 96, 4 * 96)
    small = reader.poster(4, max_side=100)
    assert small.size == (100, 100)
    on_disk = np.asarray(Image.open(bundle / "tiles" / "4.png").convert("RGB"))
    assert np.array_equal(np.asarray(full.convert("RGB")), on_disk)
    with pytest.raises(AtlasError, match="no grid 3"):
        reader.poster(3)


def test_the_inline_page_holds_the_viewer_files_not_the_store(bundle: Path) -> None:  # noqa: F811
    page = inline_html(bundle)
    assert page.startswith("<iframe srcdoc=")
    assert "activations/" not in page and "127.0.0.1" not in page and "localhost" not in page
    whole = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert 0 < embedded_size(bundle) < whole
    print(f"\n[inline] viewer files {embedded_size(bundle):,} of the bundle's {whole:,} bytes; the output is {len(page):,} characters")
    assert open_bundle(bundle)._repr_html_() == page


def test_a_bundle_past_the_size_limit_is_served_instead(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    page = inline_html(bundle, max_bytes=1000)
    served = re.fullmatch(r'<iframe src="(http://127\.0\.0\.1:(\d+)/)".*', page)
    assert served is not None and "srcdoc" not in page
    with urllib.request.urlopen(served.group(1) + "manifest.json", timeout=10) as response:
        assert json.loads(response.read())["name"] == "browse"
    assert inline_html(bundle, max_bytes=1000) == page, "one server per bundle"

    # With jupyter-server-proxy the notebook server forwards to that port, under the hub's prefix for this user.
    monkeypatch.setitem(sys.modules, "jupyter_server_proxy", types.ModuleType("jupyter_server_proxy"))
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/someone/")
    assert f'src="/user/someone/proxy/{served.group(2)}/"' in inline_html(bundle, max_bytes=1000)


def test_the_inline_viewer_shows_the_atlas_on_a_page_from_another_origin(browser: Any, bundle: Path) -> None:  # noqa: F811
    """The notebook page comes from NOTEBOOK_ORIGIN and every other request is refused, so the viewer can only show
    what the output itself carries: as in a browser that cannot reach the kernel's machine."""
    notebook_page = f"<!doctype html><html><body><h1>notebook</h1>{open_bundle(bundle)._repr_html_()}</body></html>"
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))

    def route(request: Any) -> None:
        if request.request.url.startswith(NOTEBOOK_ORIGIN):
            request.fulfill(status=200, content_type="text/html", body=notebook_page)
        else:
            outside.append(request.request.url)
            request.abort()

    page.route("**/*", route)
    page.goto(f"{NOTEBOOK_ORIGIN}/user/someone/lab/tree/atlas.ipynb")
    frame = page.frame_locator("iframe")
    viewer = next(f for f in page.frames if f != page.main_frame)
    viewer.wait_for_function("window.atlas && window.atlas.ready && window.atlas.firstTileMs !== null", timeout=60_000)
    assert viewer.evaluate("window.atlasEmbedded.files") > 10
    assert viewer.evaluate("window.atlas.currentGrid()") == 2, "the whole atlas opens on the coarsest grid"

    viewer.click("#zoom-in")
    viewer.wait_for_function("window.atlas.currentGrid() === 4")
    viewer.wait_for_function(
        "(() => { const v = window.atlas.viewer.viewport;"
        " return v.getZoom(true) === v.getZoom(false) && v.getCenter(true).equals(v.getCenter(false)); })()"
    )
    target = viewer.evaluate(
        """() => {
          const a = window.atlas, box = document.getElementById('atlas').getBoundingClientRect();
          const cx = box.left + box.width / 2, cy = box.top + box.height / 2;
          let best = null;
          for (const c of a.keptCells(4)) {
            const p = a.cellCenter(4, c.i, c.j);
            const inside = p.x > box.left + 4 && p.x < box.right - 4 && p.y > box.top + 4 && p.y < box.bottom - 4;
            const d = (p.x - cx) ** 2 + (p.y - cy) ** 2;
            if (inside && (!best || d < best.d)) best = {d, x: p.x, y: p.y, i: c.i, j: c.j};
          }
          return best;
        }"""
    )
    cells = json.loads((bundle / "levels" / "4" / "cells.json").read_text())
    cell = next(c for c in cells if (c["i"], c["j"]) == (target["i"], target["j"]))
    offset = page.locator("iframe").bounding_box()
    page.mouse.move(offset["x"] + target["x"], offset["y"] + target["y"])
    tip = frame.locator("#tip")
    tip.wait_for(state="visible")
    assert cell["top_classes"][0]["label"] in tip.inner_text()
    assert f"average of {cell['count']} activation" in tip.inner_text()

    page.mouse.click(offset["x"] + target["x"], offset["y"] + target["y"])
    frame.locator("#panel").wait_for(state="visible")
    viewer.wait_for_function("(() => { const i = document.getElementById('panel-icon'); return i.complete && i.naturalWidth === 48; })()")
    viewer.wait_for_function(
        "[...document.querySelectorAll('#panel-examples img')].length > 0 &&"
        " [...document.querySelectorAll('#panel-examples img')].every(i => i.complete && i.naturalWidth > 0)"
    )

    # The class heatmap reads attribution.npy by byte ranges when served; embedded, the whole file answers.
    label = cell["top_classes"][0]["label"]
    frame.locator("#class-search").fill(label)
    frame.locator("#class-search").press("Enter")
    frame.locator("#legend").wait_for(state="visible")
    assert label in frame.locator("#legend").inner_text()
    assert viewer.evaluate("window.atlas.errors") == []
    assert errors == [], errors
    assert outside == [], "the viewer reached outside the notebook page"
    context.close()
