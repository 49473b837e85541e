"""`atlas serve RUN_DIR`: a small static file server for one bundle, for viewing it in a browser.

A bundle on an object store (``atlas serve s3://bucket/outputs/name``) is first
copied down, minus its activation store, to ``~/.cache/atlas/bundles/`` (or
``--cache DIR``), and served from there; a browser cannot read s3:// itself.

It serves regular files inside the run folder and nothing else: a request
whose decoded path has a ``..`` or ``.`` segment, an empty segment (``//etc``),
a backslash or a NUL is refused (403/400); a path that resolves, through
symlinks, outside the folder is refused (403); folders are never listed (a
folder named with a trailing slash serves its ``index.html``, anything else is 404); dot-files (stage markers) are
404. Only GET and HEAD are answered; a single byte ``Range`` is honoured (206), as static servers and object stores do.
"""

from __future__ import annotations

import contextlib
import errno
import mimetypes
import os
import socket
import sys
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from atlas.bundle import Bundle, copy_for_viewing
from atlas.errors import AtlasError
from atlas.storage import location, protocol, url

DEFAULT_CACHE = Path("~/.cache/atlas/bundles").expanduser()  # where a bundle on a store is copied to be served
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
PORT_TRIES = 50  # without --port: 8000, or the next free one up to 8049

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".dzi": "application/xml",
    ".xml": "application/xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".npy": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
}


class RefusedPath(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


def resolve_request(root: str, target: str) -> str:
    """The real path of the file a request target names inside ``root`` (already a real path), or raise RefusedPath."""
    # Origin form ("/a/b?q") is cut by hand: urlsplit would read "//etc/passwd" as a host and a path.
    raw = urlsplit(target).path if "://" in target.split("/", 1)[0] else target.split("?", 1)[0].split("#", 1)[0]
    if not raw.startswith("/"):
        raise RefusedPath(HTTPStatus.BAD_REQUEST)
    decoded = unquote(raw, errors="strict")
    if "\x00" in decoded or "\\" in decoded:
        raise RefusedPath(HTTPStatus.BAD_REQUEST)
    parts = decoded[1:].split("/")
    if parts[-1] == "":
        parts.pop()  # a trailing slash names a folder
    if any(part in (".", "..") for part in parts):
        raise RefusedPath(HTTPStatus.FORBIDDEN)
    if any(part == "" for part in parts):
        raise RefusedPath(HTTPStatus.FORBIDDEN)  # "//etc/passwd": an absolute path smuggled in
    if any(part.startswith(".") for part in parts):
        raise RefusedPath(HTTPStatus.NOT_FOUND)
    real = os.path.realpath(os.path.join(root, *parts))
    if real != root and not real.startswith(root + os.sep):
        raise RefusedPath(HTTPStatus.FORBIDDEN)  # a symlink leading out of the bundle
    if os.path.isdir(real):
        if parts and not raw.endswith("/"):
            raise RefusedPath(HTTPStatus.NOT_FOUND)  # its page would load its files from the parent folder
        real = os.path.realpath(os.path.join(real, "index.html"))  # a folder's viewer (a comparison links to its bundles'), never a listing
        if not real.startswith(root + os.sep):
            raise RefusedPath(HTTPStatus.FORBIDDEN)  # an index.html that is a symlink out of the bundle
    if not os.path.isfile(real):
        raise RefusedPath(HTTPStatus.NOT_FOUND)  # missing, or a folder: never listed
    return real


def make_handler(root: Path, log: Callable[[str], None] | None = None) -> type[BaseHTTPRequestHandler]:
    real_root = os.path.realpath(root)

    class BundleHandler(BaseHTTPRequestHandler):
        server_version = "atlas-serve"
        sys_version = ""

        def do_GET(self) -> None:
            self._send(body=True)

        def do_HEAD(self) -> None:
            self._send(body=False)

        def _send(self, body: bool) -> None:
            try:
                path = resolve_request(real_root, self.path)
            except (RefusedPath, UnicodeDecodeError) as err:
                self.send_error(err.status if isinstance(err, RefusedPath) else HTTPStatus.BAD_REQUEST)
                return
            try:
                handle = open(path, "rb")  # noqa: SIM115 -- closed by the `with` below, after the 404 branch
            except OSError:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            with handle:
                size = os.fstat(handle.fileno()).st_size
                span = byte_range(self.headers.get("Range"), size)
                if span == "unsatisfiable":
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = span if span is not None else (0, size - 1)
                self.send_response(HTTPStatus.PARTIAL_CONTENT if span is not None else HTTPStatus.OK)
                self.send_header("Content-Type", content_type(path))
                self.send_header("Content-Length", str(end - start + 1))
                if span is not None:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                if body:
                    handle.seek(start)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the browser moved on (a tile left the view)
                        _copy(handle, self.wfile, end - start + 1)

        def log_message(self, format: str, *args: object) -> None:
            if log is not None:
                log(f"{self.address_string()} {format % args}")

    return BundleHandler


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=a-b`` / ``a-`` / ``-n`` range as inclusive (start, end), "unsatisfiable", or None (serve it whole).

    The viewer reads one class's column of a grid's attribution this way. Several ranges, or a header that is not
    a byte range, get the whole file, which RFC 9110 allows.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if first == "":
            if not last:
                return None
            start, end = max(0, size - int(last)), size - 1  # the last n bytes
        else:
            start, end = int(first), (int(last) if last else size - 1)
    except ValueError:
        return None
    if start < 0 or end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _copy(source: BinaryIO, target: BinaryIO, length: int) -> None:
    while length > 0:
        data = source.read(min(length, 1 << 16))
        if not data:
            return
        target.write(data)
        length -= len(data)


def content_type(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


class BundleServer(ThreadingHTTPServer):
    daemon_threads = True


class BundleServer6(BundleServer):
    address_family = socket.AF_INET6


def open_server(run_dir: Path, host: str = DEFAULT_HOST, port: int | None = None, log: Callable[[str], None] | None = None) -> BundleServer:
    """Bind a server for ``run_dir``; ``port=None`` takes 8000 or the next free port, ``0`` any free port."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AtlasError(f"atlas serve {run_dir}: no such folder; give a run folder such as outputs/default")
    if not (run_dir / "index.html").is_file():
        raise AtlasError(f"atlas serve {run_dir}: no viewer there (index.html); run `atlas run` to build the tiles and viewer")
    handler = make_handler(run_dir, log)
    server_class = BundleServer6 if ":" in host else BundleServer
    candidates = [port] if port is not None else list(range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES))
    for candidate in candidates:
        try:
            return server_class((host, candidate), handler)
        except OSError as err:
            if err.errno == errno.EADDRINUSE and candidate != candidates[-1]:
                continue
            if err.errno == errno.EADDRINUSE:
                raise AtlasError(f"atlas serve: port {candidate} is in use; give another with --port (0 picks a free one)") from None
            raise AtlasError(f"atlas serve: cannot listen on {host}:{candidate} ({err.strerror})") from None
    raise AssertionError("unreachable")


def url_of(server: BundleServer) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    return f"http://{shown}:{port}/"


def local_copy(bundle_url: str, cache: Path | None = None) -> Path:
    """A bundle on a store (s3://...), mirrored into a local folder the server can read; a local path is returned as is."""
    root = location(bundle_url)
    if isinstance(root, Path):
        return root
    folder = cache or DEFAULT_CACHE / protocol(root) / root.path.strip("/")
    print(f"atlas: copying the viewer's files of {url(root)} to {folder} ...", flush=True)
    fetched = copy_for_viewing(Bundle(root), folder)
    print(f"atlas: {fetched} file(s) fetched (files already there and unchanged are kept)", flush=True)
    return folder


def serve(run_dir: Path | str, host: str = DEFAULT_HOST, port: int | None = None, verbose: bool = False, cache: Path | None = None) -> None:
    """Serve ``run_dir`` (a folder, or a bundle URL copied down first) until interrupted, printing the address first."""
    run_dir = local_copy(str(run_dir), cache)
    server = open_server(run_dir, host, port, (lambda line: print(line, file=sys.stderr, flush=True)) if verbose else None)
    print(f"atlas: serving {run_dir} at {url_of(server)} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
