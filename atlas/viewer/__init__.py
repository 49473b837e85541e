"""The atlas viewer: a static page (HTML, JS, CSS) copied into every bundle; no build step, no CDN.

The bundle gets ``index.html`` at its root and the rest under ``viewer/``. The
page reads ``manifest.json``, shows each grid's Deep Zoom pyramid with
OpenSeadragon (vendored: ``openseadragon.min.js`` 6.1.1 from the npm package
``openseadragon``, BSD-3-Clause, its license alongside, source-map comment
removed), switches to finer grids as one zooms in, and fetches a grid's
``cells.json`` and ``attribution.npy`` when it needs them. The script is native
ES modules (``MODULES``), so the page must be served over HTTP (``atlas serve``
or any static server): browsers do not load modules from file:// URLs. The
modules without DOM are tested by node (tests/js/).
"""

from __future__ import annotations

from importlib import resources

from atlas.bundle import VIEWER, VIEWER_ASSETS, BundleWriter
from atlas.io import write_bytes
from atlas.storage import Location

# The page's native ES modules, no bundler: viewer.js is the entry index.html loads; the others it imports.
MODULES = (
    "viewer.js",
    "attribution.js",
    "cells.js",
    "class_labels.js",
    "classes.js",
    "crossfade.js",
    "dom.js",
    "feature_links.js",
    "features.js",
    "format.js",
    "grids.js",
    "heatmap.js",
    "label_layer.js",
    "layer_chooser.js",
    "layers.js",
    "net.js",
    "npy.js",
    "overlay.js",
    "pair.js",
    "panel.js",
    "picker.js",
    "subset.js",
    "title.js",
    "url_state.js",
    "view_switch.js",
    "views.js",
)
ASSETS = ("index.html", *MODULES, "viewer.css", "openseadragon.min.js", "openseadragon-LICENSE.txt")


def asset_bytes(name: str) -> bytes:
    return resources.files(__package__).joinpath("assets", name).read_bytes()


def install_viewer(bundle: BundleWriter) -> list[Location]:
    """Copy the page into the bundle (``index.html`` + ``viewer/``); files already identical are left alone."""
    written = []
    for name in ASSETS:
        target = bundle.path(VIEWER if name == "index.html" else f"{VIEWER_ASSETS}/{name}")
        data = asset_bytes(name)
        if not target.exists() or target.read_bytes() != data:
            write_bytes(target, data)
        written.append(target)
    return written
