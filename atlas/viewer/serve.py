"""`atlas serve RUN_DIR`: a small static file server for one bundle, for viewing it in a browser.

A bundle on an object store (``atlas serve s3://bucket/outputs/name``) is first
copied down, minus its activation store, to ``~/.cache/atlas/bundles/`` (or
``--cache DIR``), and served from there; a browser cannot read s3:// itself.

It serves regular files inside the run folder and nothing else: a request
whose decoded path has a ``..`` or ``.`` segment, an empty segment (``//etc``),
a backslash or a NUL is refused (403/400); a path that resolves, through
symlinks, outside the folder is refused (403); folders are never listed (a
folder named with a trailing slash serves its ``index.html``, anything else is 404); dot-files (stage markers) are
404. Only GET and HEAD are answered (any other method: 405 with ``Allow: GET, HEAD``); a single byte ``Range``
is honoured (206), as static servers and object stores do, and ``If-None-Match`` / ``If-Modified-Since`` against
the file's ETag and modification time answer 304, so a browser revalidating a tile gets no body.

Each connection has its own daemon thread and a socket timeout (``CONNECTION_TIMEOUT``): a client that connects
and sends nothing, stops halfway through its request, or stops reading the response holds only its own thread,
and is disconnected once it has been silent or stalled that long. tests/test_serve_load.py checks both, and
measures the server under load.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mimetypes
import os
import socket
import sys
import time
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from atlas.bundle import VIEWER, copy_for_viewing
from atlas.errors import AtlasError
from atlas.storage import location, protocol, url

DEFAULT_CACHE = Path("~/.cache/atlas/bundles").expanduser()  # where a bundle on a store is copied to be served
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
PORT_TRIES = 50  # without --port: 8000, or the next free one up to 8049
CONNECTION_TIMEOUT = 20.0  # seconds a connection may stay silent, or leave a response unread, before it is closed
LISTEN_BACKLOG = 128  # connections the kernel queues before they are accepted (the stdlib's 5 drops a viewer's burst of tiles)
ALLOWED_METHODS = ("GET", "HEAD")
DISCARD_LIMIT = 64 << 20  # bytes of a refused request's body read and dropped, so that closing does not reset the connection
DISCARD_SECONDS = 5.0  # ... for at most this long

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
        real = os.path.realpath(os.path.join(real, VIEWER))  # a folder's viewer (a comparison links to its bundles'), never a listing
        if not real.startswith(root + os.sep):
            raise RefusedPath(HTTPStatus.FORBIDDEN)  # an index.html that is a symlink out of the bundle
    if not os.path.isfile(real):
        raise RefusedPath(HTTPStatus.NOT_FOUND)  # missing, or a folder: never listed
    return real


def make_handler(root: Path, log: Callable[[str], None] | None = None, timeout: float = CONNECTION_TIMEOUT) -> type[BaseHTTPRequestHandler]:
    real_root = os.path.realpath(root)
    connection_timeout = timeout

    class BundleHandler(BaseHTTPRequestHandler):
        server_version = "atlas-serve"
        sys_version = ""
        # Set on the socket by StreamRequestHandler: reading the request and each write of the response give up after it.
        # A read that times out is logged and its connection closed by http.server; a write, by _send below.
        timeout = connection_timeout

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.command not in ALLOWED_METHODS:
                self._refuse_method()
                return False
            return True

        def do_GET(self) -> None:
            self._send(body=True)

        def do_HEAD(self) -> None:
            self._send(body=False)

        def _refuse_method(self) -> None:
            """405 with the methods this server answers; send_error cannot add the Allow header RFC 9110 requires."""
            self.close_connection = True
            self.log_error("code 405, method %s not allowed", self.command)
            body = f"405 Method Not Allowed: atlas serve answers {' and '.join(ALLOWED_METHODS)} only\n".encode()
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", ", ".join(ALLOWED_METHODS))
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self._discard_body()

        def _discard_body(self) -> None:
            """Read and drop the body a refused request declared, within DISCARD_LIMIT and DISCARD_SECONDS.

            Closing a socket with unread data resets the connection, and a client still sending its PUT would see a
            broken pipe instead of the 405 (nginx's "lingering close").
            """
            try:
                left = min(int(self.headers.get("Content-Length") or 0), DISCARD_LIMIT)
            except ValueError:
                return
            deadline = time.monotonic() + DISCARD_SECONDS
            with contextlib.suppress(OSError):
                while left > 0 and time.monotonic() < deadline:
                    chunk = self.rfile.read1(min(left, 1 << 16))
                    if not chunk:
                        return
                    left -= len(chunk)

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
                stat = os.fstat(handle.fileno())
                size = stat.st_size
                etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
                modified = formatdate(stat.st_mtime, usegmt=True)
                if not_modified(self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since"), etag, int(stat.st_mtime)):
                    self.send_response(HTTPStatus.NOT_MODIFIED)
                    self._validators(etag, modified)
                    self.end_headers()
                    return
                if_range = self.headers.get("If-Range")
                try:
                    span = byte_range(self.headers.get("Range"), size) if if_range in (None, etag, modified) else None
                except RangeNotSatisfiable:
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
                self._validators(etag, modified)
                self.send_header("X-Content-Type-Options", "nosniff")
                try:
                    self.end_headers()
                    if body:
                        handle.seek(start)
                        _copy(handle, self.wfile, end - start + 1)
                except (ConnectionError, TimeoutError) as err:  # the browser moved on (a tile left the view), or stopped reading
                    self.close_connection = True
                    if isinstance(err, TimeoutError):
                        self.log_error("client stopped reading %s for %s s; connection closed", self.path, self.timeout)

        def _validators(self, etag: str, modified: str) -> None:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.send_header("Cache-Control", "no-cache")  # revalidate each time (a re-run rewrites tiles): a 304 when unchanged

        def log_message(self, format: str, *args: object) -> None:
            if log is not None:
                log(f"{self.address_string()} {format % args}")

    return BundleHandler


def not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, mtime: int) -> bool:
    """Whether a conditional GET/HEAD is answered 304 (RFC 9110 13.1.2, 13.1.3: If-None-Match, when sent, decides alone)."""
    if if_none_match is not None:
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or etag in tags
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return False  # not an HTTP date: ignored, as RFC 9110 says
    return since.tzinfo is not None and mtime <= since.timestamp()


class RangeNotSatisfiable(Exception):
    """A byte range that starts past the end of the file (416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` / ``a-`` / ``-n`` range as inclusive (start, end), or None (serve it whole).

    The viewer reads one class's column of a grid's attribution this way. Several ranges, or a header that is not
    a byte range, get the whole file, which RFC 9110 allows. A range starting past the end raises RangeNotSatisfiable.
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
        raise RangeNotSatisfiable(header)
    return start, min(end, size - 1)


def _copy(source: io.BufferedIOBase, target: io.BufferedIOBase, length: int) -> None:
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
    daemon_threads = True  # a stalled client's thread never holds up shutdown
    request_queue_size = LISTEN_BACKLOG


class BundleServer6(BundleServer):
    address_family = socket.AF_INET6


def open_server(
    run_dir: Path,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    log: Callable[[str], None] | None = None,
    timeout: float = CONNECTION_TIMEOUT,
) -> BundleServer:
    """Bind a server for ``run_dir``; ``port=None`` takes 8000 or the next free port, ``0`` any free port.

    ``timeout``: seconds a connection may stay silent or leave its response unread before it is closed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AtlasError(f"atlas serve {run_dir}: no such folder; give a run folder such as outputs/default")
    if not (run_dir / VIEWER).is_file():
        raise AtlasError(f"atlas serve {run_dir}: no viewer there (index.html); run `atlas run` to build the tiles and viewer")
    handler = make_handler(run_dir, log, timeout)
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
    host, port = server.socket.getsockname()[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    return f"http://{shown}:{port}/"


def local_copy(bundle_url: str, cache: Path | None = None) -> Path:
    """A bundle on a store (s3://...), mirrored into a local folder the server can read; a local path is returned as is."""
    root = location(bundle_url)
    if isinstance(root, Path):
        return root
    folder = cache or DEFAULT_CACHE / protocol(root) / root.path.strip("/")
    print(f"atlas: copying the viewer's files of {url(root)} to {folder} ...", flush=True)
    fetched = copy_for_viewing(root, folder)
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
