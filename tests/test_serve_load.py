"""atlas serve under load and against slow clients, on a real bundle (a small `atlas run`), over loopback only.

The load is a fixed mix of the requests a viewer makes: tiles, JSON, HEADs, missing files (404), byte ranges of
the poster PNG (206) and revalidations (304), from threads each opening its own http.client connection. Every
response is checked (status and body against the file on disk); nothing asserts on latency except a generous
liveness bound while stalled clients hold connections. `pytest -m faults -s tests/test_serve_load.py` prints the
figures of the full run (5,000 requests, 64 concurrent).
"""

from __future__ import annotations

import http.client
import random
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_pipeline import SMALL
from test_viewer_browser import atlas_serve

from atlas.viewer.serve import open_server
from atlas_pipelines.commands.cli import main

LIVENESS_SECONDS = 5.0  # a request made while stalled clients hold connections completes within this: liveness, not speed
SHORT_TIMEOUT = 1.0  # the in-process server's connection timeout, so the tests see stalled connections closed


@pytest.fixture(scope="module")
def bundle(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve_load")
    assert main(["run", "--images", str(photo_folder), "--out", str(out), "--name", "load", "--scheduler", "sync", *SMALL]) == 0
    return out / "load"


@pytest.fixture(scope="module")
def port(bundle: Path) -> Iterator[int]:
    """`atlas serve` in its own process, as a user starts it, with its default connection timeout."""
    with atlas_serve(bundle) as url:
        yield int(urlsplit(url).port or 0)


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    status: int
    body: bytes  # what the response must carry (empty for HEAD and 304, which must send none; a 404's page is not checked)
    headers: dict[str, str] = field(default_factory=dict)
    answer_headers: dict[str, str] = field(default_factory=dict)  # headers the response must carry, with these values


def request_mix(bundle: Path, port: int, count: int, seed: int = 0) -> list[Request]:
    """``count`` requests in a viewer's proportions: 4 tiles, 2 JSON, 1 HEAD, 1 missing, 1 range of the poster, 1 revalidation."""
    tiles = sorted(path for path in (bundle / "tiles").rglob("*") if path.suffix in (".jpg", ".webp"))
    jsons = sorted(path for path in bundle.rglob("*.json") if not any(part.startswith(".") for part in path.relative_to(bundle).parts))
    posters = sorted((bundle / "tiles").glob("*.png"))
    assert len(tiles) >= 5 and len(jsons) >= 3 and posters, "the small run should have written tiles, JSON and a poster"
    poster = posters[-1]
    poster_bytes = poster.read_bytes()

    def target(path: Path) -> str:
        return "/" + path.relative_to(bundle).as_posix()

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("HEAD", target(tiles[0]))
    etag = connection.getresponse().getheader("ETag") or ""
    connection.close()
    assert etag, "the server sends an ETag for revalidation"

    rng = random.Random(seed)
    plan: list[Request] = []
    for n in range(count):
        kind = n % 10
        if kind < 4:
            path = rng.choice(tiles)
            plan.append(Request("GET", target(path), 200, path.read_bytes()))
        elif kind < 6:
            path = rng.choice(jsons)
            plan.append(Request("GET", target(path), 200, path.read_bytes()))
        elif kind == 6:
            path = rng.choice(jsons)
            plan.append(Request("HEAD", target(path), 200, b"", answer_headers={"Content-Length": str(path.stat().st_size)}))
        elif kind == 7:
            missing = rng.choice(["/tiles/4_files/9/99_99.jpg", "/levels/64/cells.json", "/nothing.png", "/tiles/missing/"])
            plan.append(Request("GET", missing, 404, b""))
        elif kind == 8:
            start = rng.randrange(len(poster_bytes))
            end = min(len(poster_bytes) - 1, start + rng.randrange(1, 4096))
            asked = {"Range": f"bytes={start}-{end}"}
            answer = {"Content-Range": f"bytes {start}-{end}/{len(poster_bytes)}"}
            plan.append(Request("GET", target(poster), 206, poster_bytes[start : end + 1], asked, answer))
        else:
            plan.append(Request("GET", target(tiles[0]), 304, b"", {"If-None-Match": etag}, {"ETag": etag}))
    return plan


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    seconds: float
    latencies: list[float]  # seconds, one per request that got a response
    errors: list[str]
    statuses: Counter[int]  # of the responses received

    def summary(self) -> str:
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return (
            f"{self.requests} requests, {self.concurrency} concurrent: p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, "
            f"{self.requests / self.seconds:.0f} requests/s, {len(self.errors)} errors"
        )


def one_request(port: int, request: Request) -> tuple[float, int | None, str | None]:
    """Latency of one request on its own connection, the response's status, and what was wrong with it (None: as expected)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(request.method, request.target, headers=request.headers)
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as err:  # a reset, a refused connection, a timeout, a torn response
        return time.perf_counter() - started, None, f"{request.method} {request.target}: {err!r}"
    finally:
        connection.close()
    latency = time.perf_counter() - started
    return latency, response.status, _wrong_with(request, response, body)


def _wrong_with(request: Request, response: http.client.HTTPResponse, body: bytes) -> str | None:
    what = f"{request.method} {request.target}"
    if response.status != request.status:
        return f"{what}: {response.status}, expected {request.status}"
    if request.status != 404 and body != request.body:
        return f"{what}: {len(body)} bytes differ from the expected {len(request.body)}"
    wrong = {name: response.getheader(name) for name, value in request.answer_headers.items() if response.getheader(name) != value}
    return f"{what}: headers {wrong}, expected {request.answer_headers}" if wrong else None


def drive(port: int, plan: list[Request], concurrency: int) -> LoadReport:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda request: one_request(port, request), plan))
    seconds = time.perf_counter() - started
    latencies = [latency for latency, _, _ in results]
    statuses = Counter(status for _, status, _ in results if status is not None)
    return LoadReport(len(plan), concurrency, seconds, latencies, [error for _, _, error in results if error], statuses)


@contextmanager
def idle_client(port: int) -> Iterator[socket.socket]:
    """Connects and sends nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        yield sock


@contextmanager
def half_request(port: int) -> Iterator[socket.socket]:
    """Sends half a request line and stalls."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /manifest.json HT")
        yield sock


class SlowReader:
    """Asks for a file larger than the socket buffers and reads the response one byte per second, in its own thread."""

    def __init__(self, port: int, target: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window, so the server's writes block
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self.received = 0
        self.closed_by_server = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            if not self.sock.recv(1):
                self.closed_by_server = True
                return
            self.received += 1
            self.stop.wait(1.0)

    def drain(self) -> int:
        """Stop reading slowly, read the rest at full speed, and give the bytes received in all."""
        self.stop.set()
        self.thread.join()
        while not self.closed_by_server:
            chunk = self.sock.recv(1 << 16)
            self.received += len(chunk)
            self.closed_by_server = not chunk
        self.sock.close()
        return self.received


@pytest.fixture(scope="module")
def big_file(bundle: Path) -> str:
    """A 16 MB file (sparse: no disk written), more than the loopback socket buffers hold, so a slow reader stalls writes."""
    path = bundle / "tiles" / "big_poster.png"
    with path.open("wb") as handle:
        handle.truncate(16 << 20)
    return "/tiles/big_poster.png"


def timed_get(port: int, target: str = "/manifest.json") -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=LIVENESS_SECONDS * 4)
    connection.request("GET", target)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, time.perf_counter() - started


def test_serve_under_a_small_load_while_clients_stall(bundle: Path, port: int) -> None:
    plan = request_mix(bundle, port, 500)
    with idle_client(port), half_request(port):
        report = drive(port, plan, concurrency=32)
    print(f"\natlas serve, small load: {report.summary()}")
    assert report.errors == [], report.errors[:10]
    assert report.statuses == Counter(request.status for request in plan)


def test_slow_and_half_open_clients_do_not_block_others(port: int, big_file: str) -> None:
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(idle_client(port))
            stack.enter_context(half_request(port))
        readers = [SlowReader(port, big_file) for _ in range(2)]
        time.sleep(0.5)  # the stalled ones are connected and their threads blocked
        for target in ("/manifest.json", "/index.html", "/missing.json"):
            status, seconds = timed_get(port, target)
            assert status == (404 if target == "/missing.json" else 200)
            assert seconds < LIVENESS_SECONDS, f"{target} took {seconds:.1f} s while slow clients held connections"
        for reader in readers:
            assert not reader.closed_by_server  # the default timeout (20 s) has not run out: still connected, still stalled
            reader.drain()


@pytest.fixture(scope="module")
def short_timeout(bundle: Path) -> Iterator[tuple[int, list[str]]]:
    """The same server in this process, with a 1 s connection timeout and its log kept."""
    log: list[str] = []
    server = open_server(bundle, port=0, log=log.append, timeout=SHORT_TIMEOUT)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], log
    server.shutdown()
    server.server_close()


def test_stalled_connections_are_closed_after_the_timeout(short_timeout: tuple[int, list[str]], big_file: str) -> None:
    port, log = short_timeout
    for stall in (idle_client, half_request):
        with stall(port) as sock:
            started = time.perf_counter()
            assert sock.recv(1024) == b""  # the server closed it, without an answer
            assert time.perf_counter() - started < SHORT_TIMEOUT + LIVENESS_SECONDS
    reader = SlowReader(port, big_file)
    time.sleep(SHORT_TIMEOUT + 2)  # a byte a second: the server's write stalls, and gives up after the timeout
    assert reader.drain() < 16 << 20 and reader.closed_by_server  # cut off, not served for 16 million seconds
    assert any("Request timed out" in line for line in log) and any("stopped reading /tiles/big_poster.png" in line for line in log)
    assert timed_get(port)[0] == 200


@pytest.mark.faults
def test_serve_load_figures(bundle: Path, port: int, big_file: str) -> None:
    """The figures for the README: 5,000 requests, 64 concurrent, while an idle, a half-sent and a slow-reading client stall."""
    plan = request_mix(bundle, port, 5000, seed=1)
    with idle_client(port), half_request(port):
        reader = SlowReader(port, big_file)
        report = drive(port, plan, concurrency=64)
        reader.drain()
    print(f"\natlas serve, load: {report.summary()}")
    assert report.errors == [], report.errors[:10]
    assert report.statuses == Counter(request.status for request in plan), "every request was answered, as planned"
    assert sorted(report.statuses) == [200, 206, 304, 404], "the server answered every kind of request in the mix"
