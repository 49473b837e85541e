"""The bundle a user browses: tiles, dataset patches and the viewer, checked on disk and in headless Chromium.

The browser tests drive Debian's ``chromium`` with Playwright (no browser
download) against `atlas serve` on a small real run. They skip, saying why,
where /usr/bin/chromium or the playwright package is missing; CI installs both.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from atlas.images import load_image
from atlas.tiles import patch_box
from atlas.tiles.patches import model_view
from atlas_pipelines.commands.cli import main

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "outputs" / "screenshots"
DOCS_SCREENSHOT = REPO / "docs" / "viewer.png"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip

ARGS = [
    "--scheduler", "sync",
    "--set", "model.input_size=96",
    "--set", "collect.positions_per_image=3",
    "--set", "collect.shard_size=8",
    "--set", "layout.fit_sample=60",
    "--set", "layout.n_neighbors=20",
    "--set", "layout.min_dist=0.99",  # spread 51 points over most cells of the 4 x 4 grid
    "--set", "grid.sizes=[2,4]",
    "--set", "grid.min_count=1",
    "--set", "render.steps=64",
    "--set", "render.icon_size=48",
    "--set", "tiles.examples_per_cell=4",
]  # fmt: skip


def child_env() -> dict[str, str]:
    # glibc malloc makes PyTorch on CPU many times slower unless these are set when the process starts
    # (docs/architecture.md, section 7); `atlas run` sets them for its workers, a shell user may set them for sync runs.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def run_output(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`atlas run` as a command, on the real photo folder; returns the bundle and what the run printed."""
    out = tmp_path_factory.mktemp("viewer")
    command = [
        sys.executable,
        "-m",
        "atlas_pipelines.commands.cli",
        "run",
        "--images",
        str(photo_folder),
        "--out",
        str(out),
        "--name",
        "browse",
        *ARGS,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "browse", proc.stdout


@pytest.fixture(scope="module")
def bundle(run_output: tuple[Path, str]) -> Path:
    return run_output[0]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# ---- on disk ----


def test_run_writes_tiles_posters_patches_and_the_viewer(photo_folder: Path, run_output: tuple[Path, str]) -> None:
    bundle, printed = run_output
    assert f"atlas serve {bundle}" in printed.splitlines()[-1], "the run ends with the command that shows the atlas"
    manifest = read_json(bundle / "manifest.json")
    assert manifest["viewer"] == "index.html" and (bundle / "index.html").is_file()
    assert {p.name for p in (bundle / "viewer").iterdir()} >= {
        "viewer.js",
        "viewer.css",
        "openseadragon.min.js",
        "openseadragon-LICENSE.txt",
    }
    assert manifest["tiles"]["scale"] == 2 and "nearest-neighbour" in manifest["tiles"]["scaling"]  # 48 px icons, 96 px cells
    assert manifest["stages"]["tiles"]["cached"] is False
    for level in manifest["levels"]:
        size = level["grid"]
        assert level["dzi"] == f"tiles/{size}.dzi" and level["poster"] == f"tiles/{size}.png"
        assert level["cell_px"] == 96 and level["canvas_px"] == size * 96
        root = ET.parse(bundle / level["dzi"]).getroot()
        assert root.get("Format") == "jpg" and root.get("TileSize") == "256" and root.get("Overlap") == "1"
        assert (bundle / f"tiles/{size}_files/0/0_0.jpg").is_file()
        assert Image.open(bundle / level["poster"]).size == (size * 96, size * 96)

        cells = read_json(bundle / level["cells"])
        attribution = np.load(bundle / level["attribution"])
        assert attribution.dtype == np.float16 and attribution.flags.f_contiguous
        assert attribution.shape == (len(cells), 1000)
        for n, cell in enumerate(cells):
            top = cell["top_classes"][0]
            assert int(np.argmax(attribution[n])) == top["index"] or np.isclose(attribution[n].max(), top["score"], rtol=2e-3)
            assert float(attribution[n, top["index"]]) == pytest.approx(top["score"], rel=2e-3, abs=2e-3)
            linked = [e for e in cell["examples"] if "patch" in e]
            assert len(linked) == min(4, len(cell["examples"])) and cell["examples"][: len(linked)] == linked
            for example in linked:
                assert example["patch"] == f"examples/{example['image_id']}_{example['y']}_{example['x']}.jpg"
                assert (bundle / example["patch"]).is_file()
    assert not list((bundle / "tiles").glob(".canvas-*")), "canvas files are temporary"

    # A second run reuses the tiles.
    assert main(["run", "--images", str(photo_folder), "--out", str(bundle.parent), "--name", "browse", *ARGS]) == 0
    assert read_json(bundle / "manifest.json")["stages"]["tiles"]["cached"] is True


def test_patches_are_the_region_each_example_was_sampled_from(photo_folder: Path, bundle: Path) -> None:
    manifest = read_json(bundle / "manifest.json")
    names = (bundle / "images" / "images.txt").read_text().splitlines()
    layer_hw = tuple(manifest["layer_shape"][1:])
    assert layer_hw == (6, 6)  # blocks.4 of EfficientNet-Lite0 at 96 px: stride 16, patches of 48 px
    examples = [e for e in read_json(bundle / "levels" / "4" / "cells.json")[0]["examples"] if "patch" in e]
    for example in examples:
        image, error = load_image(photo_folder / names[example["image_id"]], 89_478_485)
        assert error is None
        box = patch_box(example["y"], example["x"], layer_hw, 96)
        expected = np.asarray(model_view(image, 96, 3).crop(box), dtype=np.float64)
        patch = Image.open(bundle / example["patch"])
        assert patch.format == "JPEG" and patch.size == (48, 48)
        assert np.abs(np.asarray(patch, dtype=np.float64) - expected).mean() < 6.0


# ---- in the browser ----


@contextmanager
def atlas_serve(folder: Path) -> Iterator[str]:
    """`atlas serve` in its own process, as a user starts it; yields the URL it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "atlas_pipelines.commands.cli", "serve", str(folder), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=REPO,
    )  # fmt: skip
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        line = proc.stdout.readline() if selector.select(timeout=60) else ""
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, f"atlas serve printed {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield match.group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server_url(bundle: Path) -> Iterator[str]:
    with atlas_serve(bundle) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install Debian's chromium package (apt-get install chromium) for the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Visit:
    """One page load of the viewer, recording console errors, failed requests and every response."""

    def __init__(self, browser: Any, url: str, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.responses: list[tuple[int, str]] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        self.page.on("response", lambda r: self.responses.append((r.status, r.url)))
        self.page.goto(url)
        self.page.wait_for_function("window.atlas && window.atlas.ready && window.atlas.firstTileMs !== null", timeout=30_000)

    def settle(self) -> None:
        """Wait until the pan and zoom animations have reached their targets."""
        self.page.wait_for_function(
            "(() => { const v = window.atlas.viewer.viewport;"
            " return v.getZoom(true) === v.getZoom(false) && v.getCenter(true).equals(v.getCenter(false)); })()"
        )

    def requested(self, fragment: str) -> list[str]:
        return [url for _, url in self.responses if fragment in url]

    def assert_clean(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.failed == [], f"failed requests: {self.failed}"
        assert [r for r in self.responses if r[0] >= 400] == [], "every request succeeds"
        assert self.page.evaluate("window.atlas.errors") == []

    def centre_cell(self) -> dict[str, Any]:
        """The kept cell of the grid on screen whose centre is nearest the middle of the atlas, among those a pointer
        can reach there (not under a panel, the minimap or a label)."""
        return self.page.evaluate(
            """() => {
              const a = window.atlas, level = a.levels.find(l => l.grid === a.currentGrid());
              const box = document.getElementById('atlas').getBoundingClientRect();
              const cx = box.left + box.width / 2, cy = box.top + box.height / 2;
              let best = null;
              for (const c of a.keptCells(level.grid)) {
                const p = a.cellCenter(level.grid, c.i, c.j);
                const inside = p.x > box.left + 4 && p.x < box.right - 4 && p.y > box.top + 4 && p.y < box.bottom - 4
                  && document.getElementById('atlas').contains(document.elementFromPoint(p.x, p.y));
                const d = (p.x - cx) ** 2 + (p.y - cy) ** 2;
                if (inside && (!best || d < best.d)) best = {d, x: p.x, y: p.y, i: c.i, j: c.j, grid: level.grid};
              }
              return best;
            }"""
        )

    def close(self) -> None:
        self.context.close()


def cell_on_disk(bundle: Path, grid: int, i: int, j: int) -> dict[str, Any]:
    return next(c for c in read_json(bundle / "levels" / str(grid) / "cells.json") if (c["i"], c["j"]) == (i, j))


def test_viewer_zooms_from_the_coarse_grid_to_the_fine_one(browser: Any, server_url: str, bundle: Path) -> None:
    started = time.perf_counter()
    visit = Visit(browser, server_url, viewport={"width": 1200, "height": 760})
    first_tile_ms = visit.page.evaluate("window.atlas.firstTileMs")
    print(
        f"\n[viewer] first tile drawn {first_tile_ms:.0f} ms after navigation start ({time.perf_counter() - started:.2f} s incl. browser context)"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "timing.json").write_text(json.dumps({"first_tile_ms": first_tile_ms}) + "\n")

    visit.page.wait_for_load_state("networkidle")
    assert visit.page.evaluate("window.atlas.currentGrid()") == 2, "the whole atlas opens on the coarsest grid"
    assert visit.requested("/tiles/2_files/"), "the coarse grid's tiles load"
    assert not visit.requested("/tiles/4_files/"), "a hidden grid loads nothing"

    box = visit.page.locator("#atlas").bounding_box()
    visit.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(8):  # wheel zoom, as a user does
        visit.page.mouse.wheel(0, -240)
        visit.page.wait_for_timeout(60)
    visit.page.wait_for_function("window.atlas.currentGrid() === 4")
    visit.page.wait_for_load_state("networkidle")
    assert visit.requested("/tiles/4_files/"), "zooming in loads the finer grid's tiles"

    centre = visit.page.evaluate("window.atlas.viewer.viewport.getCenter().x")
    visit.page.locator("#atlas .openseadragon-canvas").focus()
    visit.page.keyboard.press("ArrowRight")
    visit.settle()
    assert visit.page.evaluate("window.atlas.viewer.viewport.getCenter().x") != centre, "the keyboard pans"
    visit.assert_clean()
    visit.close()


def test_hover_shows_the_label_and_click_opens_the_examples(browser: Any, server_url: str, bundle: Path) -> None:
    visit = Visit(browser, server_url, viewport={"width": 1200, "height": 760})
    page = visit.page
    page.click("#zoom-in")  # twice the whole-atlas zoom: grid 4's cells are as large as grid 2's were
    page.wait_for_function("window.atlas.currentGrid() === 4")
    visit.settle()  # aim at a cell once the zoom has finished
    target = visit.centre_cell()
    cell = cell_on_disk(bundle, 4, target["i"], target["j"])
    label = cell["top_classes"][0]["label"]

    page.mouse.move(target["x"], target["y"])
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    assert label in tip.inner_text()
    assert f"average of {cell['count']} activation" in tip.inner_text()
    assert "icon fidelity" in tip.inner_text()

    page.mouse.click(target["x"], target["y"])
    page.locator("#panel").wait_for(state="visible")
    assert label in page.inner_text("#panel-title")
    page.wait_for_function("(() => { const i = document.getElementById('panel-icon'); return i.complete && i.naturalWidth === 48; })()")
    patches = [e for e in cell["examples"] if "patch" in e]
    assert page.locator("#panel-examples img").count() == len(patches) > 0
    page.wait_for_function("[...document.querySelectorAll('#panel-examples img')].every(i => i.complete && i.naturalWidth > 0)")
    assert visit.requested(patches[0]["patch"])

    # For the screenshot: the whole atlas at the finer grid (locked from the toolbar), the cell hovered.
    page.select_option("#grid-select", "4")
    page.click("#home")
    visit.settle()
    page.wait_for_load_state("networkidle")
    spot = page.evaluate(f"window.atlas.cellCenter(4, {target['i']}, {target['j']})")
    page.mouse.move(spot["x"], spot["y"])
    tip.wait_for(state="visible")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "viewer.png"))
    _refresh_docs_screenshot(SCREENSHOTS / "viewer.png")
    assert page.evaluate("window.atlas.currentGrid()") == 4, "a locked grid stays whatever the zoom"

    # The class search turns the atlas into a heatmap of attribution to that class.
    page.fill("#class-search", label)
    page.keyboard.press("Enter")
    page.locator("#legend").wait_for(state="visible")
    assert label in page.inner_text("#legend")
    assert visit.requested("/levels/4/attribution.npy"), "\n".join(u for _, u in visit.responses)
    painted = page.evaluate(
        "(() => { const c = document.getElementById('overlay'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let k = 3; k < d.length; k += 4) if (d[k] > 0) n++; return n / (d.length / 4); })()"
    )
    assert painted > 0.05, "cells are shaded by their attribution"

    # The view is in the URL: reopening the link shows the same grid, cell and heatmap.
    visit.settle()
    page.wait_for_function("location.hash.includes('class=')")
    link = page.url
    assert "g=4" in link and f"cell=4%3A{target['i']}%2C{target['j']}" in link and "class=" in link
    visit.assert_clean()
    visit.close()

    again = Visit(browser, link, viewport={"width": 1200, "height": 760})
    again.page.locator("#panel").wait_for(state="visible")
    assert again.page.evaluate("window.atlas.currentGrid()") == 4
    assert again.page.evaluate("window.atlas.selected()") == {"grid": 4, "i": target["i"], "j": target["j"]}
    assert label in again.page.inner_text("#panel-title") and label in again.page.inner_text("#legend")
    again.assert_clean()
    again.close()


def test_viewer_fits_a_phone(browser: Any, server_url: str, bundle: Path) -> None:
    phone = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
    visit = Visit(browser, server_url, **phone)
    page = visit.page
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scrolling"
    target = visit.centre_cell()
    page.touchscreen.tap(target["x"], target["y"])
    page.locator("#panel").wait_for(state="visible")
    panel = page.locator("#panel").bounding_box()
    assert panel["x"] >= 0 and panel["x"] + panel["width"] <= 390 and panel["y"] + panel["height"] <= 844
    atlas_box = page.locator("#atlas").bounding_box()
    assert atlas_box["height"] > 250, "the atlas keeps room above the panel"
    page.wait_for_function("[...document.querySelectorAll('#panel-examples img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(SCREENSHOTS / "viewer-phone.png"))
    visit.assert_clean()
    visit.close()


def _refresh_docs_screenshot(screenshot: Path) -> None:
    """docs/viewer.png (the README's) is made from the test's screenshot: written when missing, or
    refreshed with ATLAS_UPDATE_SCREENSHOT=1, so that a plain test run leaves the work tree clean."""
    if DOCS_SCREENSHOT.exists() and os.environ.get("ATLAS_UPDATE_SCREENSHOT") != "1":
        return
    image = Image.open(screenshot).convert("RGB")
    small = image.resize((900, round(image.height * 900 / image.width)), Image.Resampling.LANCZOS)
    DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    temp = DOCS_SCREENSHOT.with_suffix(".tmp.png")
    for colours in (128, 64, 32):  # a palette PNG small enough to commit (< 300 KB)
        small.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(temp, optimize=True)
        if temp.stat().st_size < 300_000:
            break
    shutil.move(temp, DOCS_SCREENSHOT)
    assert DOCS_SCREENSHOT.stat().st_size < 300_000


def test_the_page_loads_cells_by_block_and_one_class_at_a_time(browser: Any, server_url: str, bundle: Path) -> None:
    """A fine grid is never fetched whole: the cell index, the blocks in view, and one class's column of attribution."""
    visit = Visit(browser, server_url, viewport={"width": 1200, "height": 760})
    page = visit.page
    page.select_option("#grid-select", "4")
    page.wait_for_function("window.atlas.currentGrid() === 4")
    visit.settle()
    page.wait_for_load_state("networkidle")
    assert visit.requested("/levels/4/cell_index.npy") and visit.requested("/levels/4/blocks/")
    assert not visit.requested("/cells.json"), "cells.json is for other tools; the page reads the split files"
    index = np.load(bundle / "levels" / "4" / "cell_index.npy")
    kept = page.evaluate("window.atlas.keptCells(4)")
    rows, columns = np.nonzero(index >= 0)
    assert sorted((c["i"], c["j"]) for c in kept) == sorted(zip(columns.tolist(), rows.tolist()))

    target = visit.centre_cell()
    page.mouse.move(target["x"], target["y"])
    page.locator("#tip").wait_for(state="visible")
    assert cell_on_disk(bundle, 4, target["i"], target["j"])["top_classes"][0]["label"] in page.inner_text("#tip")

    label = page.inner_text("#tip .tip-title")
    page.fill("#class-search", label)
    page.keyboard.press("Enter")
    page.locator("#legend").wait_for(state="visible")
    ranges = page.evaluate(
        "performance.getEntriesByType('resource').filter(e => e.name.includes('attribution.npy')).map(e => e.transferSize)"
    )
    attribution = bundle / "levels" / "4" / "attribution.npy"
    statuses = [status for status, url in visit.responses if url.endswith("/levels/4/attribution.npy")]
    assert statuses and set(statuses) == {206}, statuses  # the header, then one class's column: Range requests only
    assert len(ranges) == 2 and max(ranges) < attribution.stat().st_size, (ranges, attribution.stat().st_size)
    visit.assert_clean()
    visit.close()


def test_a_page_opened_as_a_file_says_to_serve_it(browser: Any, bundle: Path) -> None:
    """Browsers run no ES module from file://, so the page says how to open it instead of loading for ever."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(bundle.joinpath("index.html").as_uri())
    page.locator("#message").wait_for(state="visible")
    assert "atlas serve RUN_DIR" in page.inner_text("#message")
    context.close()


# ---- the examples view, the minimap, class labels and the cross-fade (issue 25) ----


def deepest_tile_region(files: Path, cell_px: int, i: int, j: int) -> np.ndarray:
    """Cell (i, j) of a pyramid's full-resolution level, read from the one tile that holds it whole."""
    deepest = max((int(p.name) for p in files.iterdir()), default=0)
    column, row = (i * cell_px) // 256, (j * cell_px) // 256
    tile = np.asarray(Image.open(files / str(deepest) / f"{column}_{row}.jpg").convert("RGB"), dtype=np.float64)
    left, top = i * cell_px - column * 256 + (1 if column else 0), j * cell_px - row * 256 + (1 if row else 0)
    return tile[top : top + cell_px, left : left + cell_px]


def test_tiles_build_an_examples_and_a_split_pyramid_of_each_grid(bundle: Path) -> None:
    manifest = read_json(bundle / "manifest.json")
    assert manifest["tiles"]["views"]["examples"]["layout"] in ("best", "mosaic")
    for level in manifest["levels"]:
        size = level["grid"]
        assert level["views"] == {"examples": f"tiles/examples/{size}.dzi", "both": f"tiles/both/{size}.dzi"}
        for view in ("examples", "both"):
            root = ET.parse(bundle / level["views"][view]).getroot()
            assert root.get("TileSize") == "256" and root.get("Format") == "jpg"
        cells = [c for c in read_json(bundle / level["cells"]) if c["i"] * 96 % 256 <= 160 and c["j"] * 96 % 256 <= 160]
        assert cells, "some cell sits inside one tile"
        for cell in cells:
            best = next(e["patch"] for e in cell["examples"] if "patch" in e)
            patch = np.asarray(Image.open(bundle / best).convert("RGB").resize((96, 96), Image.Resampling.LANCZOS), dtype=np.float64)
            icon = np.asarray(Image.open(bundle / cell["icon"]).convert("RGB").resize((47, 47), Image.Resampling.LANCZOS), dtype=np.float64)
            shown = deepest_tile_region(bundle / "tiles" / "examples" / f"{size}_files", 96, cell["i"], cell["j"])
            assert np.abs(shown - patch).mean() < 8, "the examples view shows the cell's best real patch"
            split = deepest_tile_region(bundle / "tiles" / "both" / f"{size}_files", 96, cell["i"], cell["j"])
            assert np.abs(split[24:71, :47] - icon).mean() < 12, "the split view's left half is the icon"
            small = np.asarray(Image.open(bundle / best).convert("RGB").resize((47, 47), Image.Resampling.LANCZOS), dtype=np.float64)
            assert np.abs(split[24:71, 49:96] - small).mean() < 12, "and its right half the best patch"


def cell_pixels(page: Any, spot: dict[str, Any], half: float) -> np.ndarray:
    """The screen around a point, as RGB floats (a screenshot clipped to the square)."""
    import io

    png = page.screenshot(clip={"x": spot["x"] - half, "y": spot["y"] - half, "width": 2 * half, "height": 2 * half})
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)


def picture(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    side = image.width
    inner = image.crop((side // 5, side // 5, side - side // 5, side - side // 5))
    return np.asarray(inner.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)


def test_the_view_switch_shows_real_examples_with_the_same_hover_and_panel(browser: Any, server_url: str, bundle: Path) -> None:
    visit = Visit(browser, server_url, viewport={"width": 1200, "height": 760})
    page = visit.page
    assert page.evaluate("window.atlas.views()") == ["icons", "examples", "both"]
    assert page.locator("#views").is_visible()
    visit.page.wait_for_load_state("networkidle")
    target = visit.centre_cell()
    cell = cell_on_disk(bundle, target["grid"], target["i"], target["j"])
    half = page.evaluate(f"window.atlas.cellCenter({target['grid']}, 1, 0).x - window.atlas.cellCenter({target['grid']}, 0, 0).x") * 0.3
    icon, best = picture(bundle / cell["icon"]), picture(bundle / next(e["patch"] for e in cell["examples"] if "patch" in e))
    page.mouse.move(target["x"], target["y"])
    page.locator("#tip").wait_for(state="visible")
    tip = page.inner_text("#tip")
    page.mouse.move(5, 5)
    shown_icons = cell_pixels(page, target, half)

    with page.expect_response(lambda r: f"/tiles/examples/{target['grid']}_files/" in r.url):  # its own tiles
        page.click("#views button[data-view=examples]")
    page.wait_for_function("window.atlas.view() === 'examples'")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(400)
    shown_examples = cell_pixels(page, target, half)
    assert np.abs(shown_examples - best).mean() < np.abs(shown_examples - icon).mean(), "the cell shows its real example"
    assert np.abs(shown_icons - icon).mean() < np.abs(shown_icons - best).mean(), "and the icons view its icon"
    page.mouse.move(target["x"], target["y"])
    page.wait_for_function(f"window.atlas.lastTip && window.atlas.lastTip.i === {target['i']} && window.atlas.lastTip.j === {target['j']}")
    assert page.inner_text("#tip") == tip, "the hover label is the same in every view"

    page.locator("#atlas .openseadragon-canvas").focus()
    with page.expect_response(lambda r: f"/tiles/both/{target['grid']}_files/" in r.url):
        page.keyboard.press("v")
    page.wait_for_function("window.atlas.view() === 'both'")
    page.wait_for_load_state("networkidle")
    page.mouse.click(target["x"], target["y"])
    page.locator("#panel").wait_for(state="visible")
    assert page.evaluate("window.atlas.selected()") == {"grid": target["grid"], "i": target["i"], "j": target["j"]}
    assert cell["top_classes"][0]["label"] in page.inner_text("#panel-title")
    page.wait_for_function("location.hash.includes('view=both')")
    link = page.url
    visit.assert_clean()
    visit.close()

    again = Visit(browser, link, viewport={"width": 1200, "height": 760})
    assert again.page.evaluate("window.atlas.view()") == "both"
    assert again.page.get_attribute("#views button[data-view=both]", "aria-pressed") == "true"
    first_tile = again.page.evaluate("window.atlas.firstTileMs")
    print(f"\n[viewer] split view opened from a link: first tile drawn {first_tile:.0f} ms after navigation start")
    again.assert_clean()
    again.close()


def test_the_minimap_outlines_the_view_and_stays_clear_of_the_panel(browser: Any, server_url: str) -> None:
    for viewport, extra in (({"width": 1200, "height": 760}, {}), ({"width": 390, "height": 844}, {"is_mobile": True, "has_touch": True})):
        visit = Visit(browser, server_url, viewport=viewport, **extra)
        page = visit.page
        minimap = page.locator("#minimap")
        minimap.wait_for(state="visible")
        box, stage = minimap.bounding_box(), page.locator("#atlas").bounding_box()
        assert 72 <= box["width"] <= 182 and box["width"] < stage["width"] / 2 and box["height"] < stage["height"] / 2
        assert box["x"] >= stage["x"] and box["x"] + box["width"] <= stage["x"] + stage["width"] <= viewport["width"], (
            "inside the atlas area"
        )
        assert box["y"] >= stage["y"] and box["y"] + box["height"] <= stage["y"] + stage["height"]
        region = page.locator("#minimap .displayregion")
        whole = region.bounding_box()
        page.click("#zoom-in")
        visit.settle()
        page.wait_for_timeout(300)
        zoomed = region.bounding_box()
        assert zoomed["width"] < whole["width"] * 0.7, "zoomed in, the outline shrinks to the part on screen"
        target = visit.centre_cell()
        page.mouse.click(target["x"], target["y"]) if not extra else page.touchscreen.tap(target["x"], target["y"])
        page.locator("#panel").wait_for(state="visible")
        box, panel = minimap.bounding_box(), page.locator("#panel").bounding_box()
        overlaps = (
            box["x"] < panel["x"] + panel["width"]
            and panel["x"] < box["x"] + box["width"]
            and box["y"] < panel["y"] + panel["height"]
            and panel["y"] < box["y"] + box["height"]
        )
        assert not overlaps, f"the minimap {box} does not cover the panel {panel}"
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        visit.assert_clean()
        visit.close()


def test_class_labels_appear_zoomed_in_and_the_key_turns_them_off(browser: Any, server_url: str, bundle: Path) -> None:
    visit = Visit(browser, server_url, viewport={"width": 1200, "height": 760})
    page = visit.page
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.atlas.labels()") == [], "the whole atlas carries no labels"
    painted = "(() => { const c = document.getElementById('labels'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; for (let k = 3; k < d.length; k += 4) if (d[k] > 0) n++; return n; })()"
    assert page.evaluate(painted) == 0
    page.click("#zoom-in")
    page.click("#zoom-in")
    visit.settle()
    page.wait_for_function("window.atlas.labels().length > 0")
    labels = page.evaluate("window.atlas.labels()")
    grid = page.evaluate("window.atlas.currentGrid()")
    for placed in labels:
        assert placed["grid"] == grid
        assert placed["label"] == cell_on_disk(bundle, grid, placed["i"], placed["j"])["top_classes"][0]["label"]
    assert len({(p["i"], p["j"]) for p in labels}) == len(labels)
    assert page.evaluate(painted) > 50, "the labels are drawn"

    page.locator("#atlas .openseadragon-canvas").focus()
    page.keyboard.press("l")
    page.wait_for_function("window.atlas.labels().length === 0")
    assert page.evaluate(painted) == 0
    assert page.get_attribute("#labels-toggle", "aria-pressed") == "false"
    page.wait_for_function("location.hash.includes('labels=0')")
    page.keyboard.press("l")
    page.wait_for_function("window.atlas.labels().length > 0")
    visit.assert_clean()
    visit.close()


def test_zooming_cross_fades_between_grids(browser: Any, server_url: str) -> None:
    visit = Visit(browser, server_url, viewport={"width": 1200, "height": 760})
    page = visit.page
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.atlas.opacities()") == [1, 0]
    page.evaluate(
        "window.fadeSamples = []; (function sample() { window.fadeSamples.push(window.atlas.opacities());"
        " if (window.fadeSamples.length < 600) requestAnimationFrame(sample); })();"
    )
    page.click("#zoom-in")
    page.wait_for_function("window.atlas.currentGrid() === 4")
    page.wait_for_function("(() => { const o = window.atlas.opacities(); return o[0] === 1 && o[1] === 1; })()")
    samples = page.evaluate("window.fadeSamples")
    between = [s for s in samples if 0 < s[1] < 1]
    assert between and all(s[0] == 1 for s in between), "the finer grid fades in over the coarser, still opaque"
    assert len({round(s[1], 2) for s in between}) >= 3, f"a fade over several frames, not a jump: {between}"

    page.evaluate(
        "window.fadeSamples = []; (function sample() { window.fadeSamples.push(window.atlas.opacities()); if (window.fadeSamples.length < 600) requestAnimationFrame(sample); })();"
    )
    page.click("#home")
    page.wait_for_function("window.atlas.currentGrid() === 2")
    page.wait_for_function("(() => { const o = window.atlas.opacities(); return o[0] === 1 && o[1] === 0; })()")
    going = [s for s in page.evaluate("window.fadeSamples") if 0 < s[1] < 1]
    assert going and all(s[0] == 1 for s in going), "zooming out, the finer grid fades out over the coarser"
    visit.assert_clean()
    visit.close()


def test_a_bundle_tiled_before_the_examples_view_opens_with_icons_alone(browser: Any, bundle: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(bundle, old, ignore=lambda folder, names: ["activations"] if Path(folder) == bundle else [])
    manifest = read_json(old / "manifest.json")
    manifest["tiles"].pop("views")
    for level in manifest["levels"]:
        level.pop("views")
    (old / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(old / "tiles" / "examples")
    shutil.rmtree(old / "tiles" / "both")
    with atlas_serve(old) as url:
        visit = Visit(browser, url + "#view=examples", viewport={"width": 1200, "height": 760})
        assert visit.page.evaluate("window.atlas.views()") == ["icons"]
        assert visit.page.evaluate("window.atlas.view()") == "icons", "a link asking for examples shows the icons"
        assert not visit.page.locator("#views").is_visible()
        visit.page.keyboard.press("v")
        visit.page.wait_for_load_state("networkidle")
        assert not visit.requested("/tiles/examples/")
        visit.assert_clean()
        visit.close()
