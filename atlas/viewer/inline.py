"""The viewer inside a notebook output: ``Bundle.show()`` and ``Bundle._repr_html_()``.

Why the page carries the bundle's files itself: a notebook's browser is often not on the kernel's machine (JupyterHub,
a remote server, VS Code remote), so an iframe pointing at a server on the kernel's 127.0.0.1 cannot load there.
The ways around that each need something installed on the side the user may not control: a widget (anywidget) needs
the ipywidgets front end in the *server's* environment, jupyter-server-proxy needs a server extension. An ``<iframe
srcdoc>`` holding the viewer and the files it reads (manifest, cells, icons, example patches, tiles; never the
activation store) needs nothing: any front end that shows HTML output shows it, a saved notebook too (once
trusted: Jupyter strips iframes from untrusted outputs), and it reaches no server. ``notebook/embed.js`` points the
viewer's fetches, its tile requests and its image sources at those embedded files. Its cost is size: an atlas whose
files exceed ``max_bytes`` is served instead (``served_html``): through jupyter-server-proxy when it is installed (the notebook server forwards to the kernel's
machine, so a remote browser reaches it), else by a local server, which only a browser on the kernel's machine sees.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
import os
import re
import threading
from importlib import resources
from pathlib import Path

from atlas.bundle.paths import ACTIVATIONS, CLASS_INDEX, EXAMPLES, LEVELS, MANIFEST, TILES
from atlas.errors import AtlasError
from atlas.viewer import MODULES, asset_bytes

# Not a viewer asset (bundles never get it): only the embedded page loads it, before the viewer's modules.
EMBED_SHIM = resources.files(__package__).joinpath("notebook", "embed.js")

DEFAULT_MAX_BYTES = 48 << 20  # a notebook holds its outputs: past this an embedded atlas makes the .ipynb unwieldy
IMPORT = re.compile(r'from "\./([a-z_]+\.js)"')
MODULE_PREFIX = "atlas-viewer/"


def viewer_files(root: Path) -> dict[str, Path]:
    """What the page reads of a bundle, by bundle path: the manifest, each grid's cells, icons and attribution, the
    example patches, the Deep Zoom tiles and the class index. Left out: the activation store and layout (the bulk),
    each grid's directions, posters, sub-bundles and dot-files (markers)."""
    found = {MANIFEST: root / MANIFEST}
    if (root / CLASS_INDEX).is_file():
        found[CLASS_INDEX] = root / CLASS_INDEX
    for folder in (LEVELS, EXAMPLES, TILES):
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if not path.is_file() or any(part.startswith(".") for part in relative.split("/")) or ACTIVATIONS in relative.split("/"):
                continue
            if path.name == "directions.npy" or (folder == TILES and path.suffix == ".png" and path.parent.name == TILES):
                continue
            found[relative] = path
    return found


def embedded_size(root: Path) -> int:
    return sum(path.stat().st_size for path in viewer_files(root).values())


def embedded_page(root: Path) -> str:
    """The viewer as one self-contained HTML document holding the bundle's files (see the module docstring)."""
    files = {
        relative: {
            "type": mimetypes.guess_type(relative)[0] or "application/octet-stream",
            "data": base64.b64encode(path.read_bytes()).decode(),
        }
        for relative, path in viewer_files(root).items()
    }
    imports = {
        MODULE_PREFIX + name: "data:text/javascript;base64," + base64.b64encode(_module_source(name).encode()).decode() for name in MODULES
    }
    page = asset_bytes("index.html").decode()
    page = page.replace('<link rel="stylesheet" href="viewer/viewer.css">', f"<style>{asset_bytes('viewer.css').decode()}</style>")
    scripts = (
        f'<script type="application/json" id="atlas-files">{_script_text(json.dumps(files))}</script>\n'
        f"<script>{_script_text(EMBED_SHIM.read_text())}</script>\n"
        f"<script>{_script_text(asset_bytes('openseadragon.min.js').decode())}</script>\n"
        f'<script type="importmap">{_script_text(json.dumps({"imports": imports}))}</script>\n'
        f'<script type="module">import "{MODULE_PREFIX}viewer.js";</script>'
    )
    page = page.replace(
        '<script src="viewer/openseadragon.min.js"></script>\n<script type="module" src="viewer/viewer.js"></script>', scripts
    )
    if MODULE_PREFIX not in page:
        raise RuntimeError("index.html no longer loads viewer/viewer.js as inline.py expects: update embedded_page")
    return page


def _module_source(name: str) -> str:
    """A viewer module with its relative imports made bare, so the import map resolves them to the embedded modules."""
    return IMPORT.sub(lambda m: f'from "{MODULE_PREFIX}{m.group(1)}"', asset_bytes(name).decode())


def _script_text(text: str) -> str:
    return text.replace("</", "<\\/")  # a "</script>" inside JSON or JS would end the element early


def iframe(srcdoc: str | None = None, src: str | None = None, height: int = 640) -> str:
    source = f'srcdoc="{html.escape(srcdoc, quote=True)}"' if srcdoc is not None else f'src="{html.escape(src or "", quote=True)}"'
    return f'<iframe {source} style="width: 100%; height: {height}px; border: 1px solid #ddd;" allow="fullscreen"></iframe>'


def inline_html(root: Path, height: int = 640, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The notebook output for a bundle: the embedded page, or past ``max_bytes`` the served one."""
    if not (root / MANIFEST).is_file():
        raise AtlasError(f"{root}: no {MANIFEST} yet; show the bundle once `atlas run` has finished it")
    if embedded_size(root) <= max_bytes:
        return iframe(srcdoc=embedded_page(root), height=height)
    return served_html(root, height)


_servers: dict[Path, str] = {}
_servers_lock = threading.Lock()


def served_html(root: Path, height: int = 640) -> str:
    """An iframe on a server for the bundle started in this kernel (once per bundle), reached through
    jupyter-server-proxy where it is installed, else at the local address (a browser on this machine only)."""
    from atlas.viewer.serve import open_server

    with _servers_lock:
        if root not in _servers:
            server = open_server(root, "127.0.0.1", 0, None)
            threading.Thread(target=server.serve_forever, daemon=True, name=f"atlas-serve-{root.name}").start()
            _servers[root] = str(server.socket.getsockname()[1])
        port = _servers[root]
    try:
        import jupyter_server_proxy  # noqa: F401 -- only whether the notebook server forwards /proxy/PORT/
    except ImportError:
        return iframe(src=f"http://127.0.0.1:{port}/", height=height)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    return iframe(src=f"{prefix.rstrip('/')}/proxy/{port}/", height=height)
