"""Class atlases and comparisons in the viewer, in headless Chromium, on a small real run.

`atlas run` on the built-in photos, then `atlas classes` for one class atlas and one
comparison; `atlas serve` serves the parent folder, and the page is driven as in
tests/test_viewer_browser.py (Debian's chromium through Playwright; skipped where either
is missing): the class picker of the whole atlas, a class atlas's page, a comparison's
axis and patch experiment, and a copy of the bundle without classes/index.json.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_viewer_browser import CHROMIUM, CHROMIUM_ARGS, Visit, atlas_serve

from atlas.bundle import open_bundle
from atlas.classes import ClassRef, class_counts
from atlas.images.builtin_photos import BuiltinPhotos
from atlas_pipelines.commands.cli import main

SMALL = [
    "--set", "collect.n_images=60",
    "--set", "model.input_size=96",
    "--set", "collect.positions_per_image=4",
    "--set", "collect.shard_size=20",
    "--set", "layout.fit_sample=300",
    "--set", "layout.n_neighbors=8",
    "--set", "grid.sizes=[3]",
    "--set", "grid.min_count=1",
    "--set", "render.steps=6",
    "--set", "render.icon_size=32",
    "--set", "tiles.examples_per_cell=2",
]  # fmt: skip
CLASSES_SMALL = [
    "--set", "scheduler.address=sync",
    "--set", "classes.min_rows=3",
    "--set", "classes.n_neighbors=5",
    "--set", "classes.grid=3",
    "--set", "classes.pair_grid=4",
    "--set", "classes.min_count=1",
    "--set", "classes.patch.n_images=12",
    "--set", "classes.patch.sizes=[0.3, 0.5]",
    "--set", "classes.patch.icons=2",
]  # fmt: skip
SCREEN = {"viewport": {"width": 1200, "height": 760}}
NOT_FOUND = "Failed to load resource: the server responded with a status of 404"


class Built:
    """The parent atlas, its two most frequent classes (a has a class atlas), and the comparison a vs b."""

    def __init__(self, root: Path, a: ClassRef, b: ClassRef) -> None:
        self.root, self.a, self.b = root, a, b
        self.index = read_json(root / "classes" / "index.json")
        self.pair = self.index["pairs"][0]["folder"]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("viewer-classes")
    assert main(["run", "--out", str(out), "--name", "photos", "--scheduler", "sync", *SMALL]) == 0
    parent = open_bundle(out / "photos")
    store = parent.store()
    first, second = np.argsort(-class_counts(store, store.layout().n_classes), kind="stable")[:2]
    labels = parent.manifest["labels"]
    a, b = ClassRef(int(first), labels[first]), ClassRef(int(second), labels[second])
    # The patch experiment's images: the 60 collected photos as a folder, so it need not scan the other 926.
    photos = out / "patch-images"
    photos.mkdir()
    for record in BuiltinPhotos().read_ids(range(60)):
        record.image.save(photos / f"{record.image_id:03d}.png")
    patch_images = ["--set", f"classes.patch.images={photos}"]
    assert main(["classes", str(parent.root), "--class", a.name, "--compare", a.name, b.name, *CLASSES_SMALL, *patch_images]) == 0
    return Built(parent.root, a, b)


@pytest.fixture(scope="module")
def plain(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same atlas as if `atlas classes` had never finished: no classes/ (so no index.json), and the comparison's
    patch experiment found no image (patch.json's "note" form)."""
    root = tmp_path_factory.mktemp("viewer-plain") / "photos"
    shutil.copytree(built.root, root, ignore=shutil.ignore_patterns("activations", "classes", "patch-images"))
    report = read_json(root / built.pair / "patch.json")
    kept = ("pair", "question", "sizes", "size_fractions", "corner", "seed", "icons")
    note = {k: report[k] for k in kept} | {"n_images": 0, "note": f"no held-out image was classified as {built.a.name!r}"}
    (root / built.pair / "patch.json").write_text(json.dumps(note))
    return root


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install Debian's chromium package (apt-get install chromium) for the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server_url(built: Built) -> Iterator[str]:
    with atlas_serve(built.root) as url:
        yield url


@pytest.fixture(scope="module")
def plain_url(plain: Path) -> Iterator[str]:
    with atlas_serve(plain) as url:
        yield url


def wait_ready(page: Any) -> None:
    page.wait_for_function("window.atlas && window.atlas.ready && window.atlas.firstTileMs !== null", timeout=30_000)


def assert_clean_except(visit: Visit, missing: list[str]) -> None:
    """No console error, failed request or error response but the 404s of the files named (and Chromium's line for each)."""
    bad = [(status, url) for status, url in visit.responses if status >= 400]
    assert sorted(url.split("/", 3)[3] for _, url in bad) == sorted(missing), bad
    assert {status for status, _ in bad} <= {404}
    assert [e for e in visit.errors if not e.startswith(NOT_FOUND)] == [], visit.errors
    assert len(visit.errors) <= len(missing)
    assert visit.failed == [] and visit.page.evaluate("window.atlas.errors") == []


def hover_centre_cell(visit: Visit, bundle: Path) -> tuple[str, str]:
    """Hover the kept cell nearest the middle; the label the bundle gives it, and the tooltip's text."""
    visit.settle()
    target = visit.centre_cell()
    cells = read_json(bundle / "levels" / str(target["grid"]) / "cells.json")
    cell = next(c for c in cells if (c["i"], c["j"]) == (target["i"], target["j"]))
    visit.page.mouse.move(target["x"], target["y"])
    visit.page.locator("#tip").wait_for(state="visible")
    return cell["top_classes"][0]["label"], visit.page.inner_text("#tip")


def percent(x: float) -> str:
    """As the page writes a rate: 0% and 100% whole, otherwise one decimal (rounded half up, as JavaScript's toFixed)."""
    if x in (0, 1):
        return f"{round(100 * x)}%"
    return f"{Decimal(100 * x).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"


def test_the_class_picker_opens_class_atlases_and_gives_the_command_for_the_others(browser: Any, server_url: str, built: Built) -> None:
    visit = Visit(browser, server_url, **SCREEN)
    page = visit.page
    assert not visit.requested("classes/index.json"), "the picker reads the index when it is opened"
    page.click("#picker-button")
    page.wait_for_function("window.atlas.classIndexLoaded && document.querySelectorAll('#picker-list li').length > 0")
    a_folder = f"classes/{built.a.folder}"
    entries = page.eval_on_selector_all(
        "#picker-list li",
        "items => items.map(li => ({name: li.querySelector('a, button').innerText, text: li.innerText,"
        " href: li.querySelector('a') && li.querySelector('a').getAttribute('href')}))",
    )
    by_rows = [c for c in built.index["classes"] if not c["folder"]]
    by_rows.sort(key=lambda c: (-c["rows"], c["index"]))
    assert len(entries) == 200, "the first 200; the filter finds the rest"
    assert entries[0]["href"] == f"{a_folder}/index.html", "the class atlas built comes first"
    assert built.a.name in entries[0]["text"] and f"{built.index['classes'][built.a.index]['rows']} rows" in entries[0]["text"]
    assert [e["name"] for e in entries[1:4]] == [c["name"] for c in by_rows[:3]], "then the others, most rows first"
    pair_link = page.locator("#pair-list a")
    assert pair_link.count() == 1 and pair_link.get_attribute("href") == f"{built.pair}/index.html"
    assert pair_link.inner_text() == f"{built.a.name} vs {built.b.name}"

    # A class without an atlas: the command that builds it.
    labels = [c["name"] for c in built.index["classes"]]
    other = next(c for c in by_rows if c["rows"] > 0 and c["name"] != built.b.name and labels.count(c["name"]) == 1)
    page.fill("#picker-filter", other["name"])
    page.locator(f"#picker-list button[data-index='{other['index']}']").click()
    command = page.locator("#picker-command")
    command.wait_for(state="visible")
    assert f'atlas classes RUN_DIR --class "{other["name"]}"' in command.inner_text()
    assert str(built.root) in command.inner_text(), "where the bundle was written, as a hint for RUN_DIR"

    # The built one opens its page: what it is, the way back, and hover labels.
    page.fill("#picker-filter", "")
    page.locator("#picker-list a").first.click()
    page.wait_for_url(f"**/{a_folder}/index.html")
    wait_ready(page)
    assert page.inner_text("#title").startswith(f"Class atlas: {built.a.name}")
    assert page.evaluate("document.getElementById('back').href") == server_url + "index.html"
    label, tip = hover_centre_cell(visit, built.root / a_folder)
    assert label in tip and "average of" in tip
    visit.assert_clean()
    visit.close()


def test_a_comparison_labels_its_axis_and_shows_the_patch_experiment(browser: Any, server_url: str, built: Built) -> None:
    visit = Visit(browser, server_url + built.pair + "/index.html", **SCREEN)
    page = visit.page
    assert page.inner_text("#title").startswith(f"Comparison: {built.a.name} vs {built.b.name}")
    stage = page.locator("#stage").bounding_box()
    middle = stage["x"] + stage["width"] / 2

    def axis() -> tuple[dict[str, float], dict[str, float]]:
        return page.locator("#axis-left").bounding_box(), page.locator("#axis-right").bounding_box()

    left, right = axis()
    assert page.inner_text("#axis-left") == f"← favours {built.b.name}" and page.inner_text("#axis-right") == f"favours {built.a.name} →"
    assert (
        stage["x"] <= left["x"]
        and left["x"] + left["width"] < middle < right["x"]
        and right["x"] + right["width"] <= stage["x"] + stage["width"]
    )
    page.click("#zoom-in")
    visit.settle()
    assert axis() == (left, right), "the labels stay at the edges as the atlas zooms"

    report = read_json(built.root / built.pair / "patch.json")
    assert report["n_images"] > 0, "the collected photos hold an image the model puts in class a"
    box = page.locator("#patch")
    page.wait_for_function("window.atlas.patch !== undefined")
    assert report["question"] in box.inner_text()
    assert f"{report['n_images']} image" in box.inner_text() and ("held out" if report["held_out"] else "not held out") in box.inner_text()
    for kind in ("icon", "noise", "random_icon"):
        for entry in report[kind]["sizes"]:
            row = page.locator(f"#patch-table tr[data-kind='{kind}'][data-size='{entry['size']}']")
            assert row.count() == 1
            for rule, cls in (("corner", "corner"), ("best_corner", "best")):
                count = entry[rule]
                low, high = count["interval"]
                assert row.locator(f".{cls}-n").inner_text() == f"{count['flips']}/{count['n']}"
                assert row.locator(f".{cls}-rate").inner_text() == f"{percent(count['rate'])} ({percent(low)[:-1]}–{percent(high)})"

    label, tip = hover_centre_cell(visit, built.root / built.pair)
    assert label in tip and "favours" in tip
    visit.assert_clean()
    visit.close()


def test_without_a_class_index_the_picker_lists_the_labels_with_the_build_command(browser: Any, plain_url: str, built: Built) -> None:
    visit = Visit(browser, plain_url, **SCREEN)
    page = visit.page
    visit.assert_clean()  # loading the page requests nothing the bundle lacks
    page.click("#picker-button")
    page.wait_for_function("window.atlas.classIndexLoaded && document.querySelectorAll('#picker-list li').length > 0")
    assert "No class atlas has been built" in page.inner_text("#picker-note")
    labels = read_json(built.root / "manifest.json")["labels"]
    assert page.locator("#picker-list button").first.inner_text() == labels[0]
    page.fill("#picker-filter", built.a.name)
    page.locator(f"#picker-list button[data-index='{built.a.index}']").click()
    assert f'atlas classes RUN_DIR --class "{built.a.name}"' in page.inner_text("#picker-command")
    assert_clean_except(visit, ["classes/index.json"])
    visit.close()

    # The comparison's page, its patch experiment having found no image: the note, no table.
    visit = Visit(browser, plain_url + built.pair + "/index.html", **SCREEN)
    page = visit.page
    page.wait_for_function("window.atlas.patch !== undefined")
    assert "no held-out image was classified" in page.inner_text("#patch") and page.locator("#patch-table").count() == 0
    assert page.inner_text("#patch summary") == "Patch experiment: 0 images"
    label, tip = hover_centre_cell(visit, built.root / built.pair)
    assert label in tip
    visit.assert_clean()
    visit.close()
