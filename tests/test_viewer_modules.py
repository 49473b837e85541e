"""The viewer's native ES modules without a browser: node runs tests/js, and every module the page imports is
installed into bundles and served as JavaScript (a module script of another MIME type is refused by browsers).

The node tests skip, saying why, where ``node`` is missing; CI installs it. The browser tests
(test_viewer_browser.py, test_viewer_classes.py) drive the whole page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from atlas.viewer import ASSETS, MODULES, asset_bytes
from atlas.viewer.serve import content_type

REPO = Path(__file__).resolve().parents[1]
JS_TESTS = REPO / "tests" / "js"
ENTRY = re.compile(r'<script type="module" src="viewer/([^"]+)"></script>')
IMPORT = re.compile(r'^import [^;]* from "\./([^"]+)";$', re.MULTILINE)


def test_the_node_tests_of_the_pure_modules_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: install Node.js 18 or later (Debian's nodejs) for the viewer's JavaScript tests")
    files = sorted(str(p.relative_to(REPO)) for p in JS_TESTS.glob("*.test.mjs"))
    assert len(files) >= 5, files
    proc = subprocess.run([node, "--test", *files], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert re.search(r"^# fail 0$", proc.stdout, re.MULTILINE), proc.stdout[-3000:]


def imported_modules() -> set[str]:
    """Every module reachable from the entry script that index.html loads, by following relative imports."""
    seen: set[str] = set()
    todo = ENTRY.findall(asset_bytes("index.html").decode())
    assert todo == ["viewer.js"], "index.html loads one entry module"
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(IMPORT.findall(asset_bytes(name).decode()))
    return seen


def test_every_module_the_page_imports_is_installed_into_bundles() -> None:
    assert imported_modules() == set(MODULES)
    assert set(MODULES) <= set(ASSETS) and "index.html" in ASSETS
    folder = REPO / "atlas" / "viewer" / "assets"
    unlisted = {p.name for p in folder.glob("*.js")} - set(ASSETS)
    assert unlisted == set(), f"modules in {folder} that no bundle gets: {unlisted}"


def test_modules_are_served_as_javascript() -> None:
    for name in MODULES:
        assert content_type(f"viewer/{name}").startswith("text/javascript"), name
