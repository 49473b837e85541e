"""atlas serve (``atlas.viewer.serve``): a server that serves the bundle and nothing else."""

from __future__ import annotations

import http.client
import socket
import threading
from pathlib import Path

import pytest

from atlas.errors import AtlasError
from atlas.viewer.serve import open_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("serve")
    bundle = tmp_path / "bundle"
    (bundle / "tiles" / "4_files" / "0").mkdir(parents=True)
    (bundle / ".stages").mkdir()
    (bundle / "index.html").write_text("<!doctype html><title>atlas</title>")
    (bundle / "manifest.json").write_text('{"format": "activation-atlas/1"}')
    (bundle / "tiles" / "4.dzi").write_text("<Image/>")
    (bundle / "tiles" / "4_files" / "0" / "0_0.jpg").write_bytes(b"\xff\xd8tile")
    (bundle / ".stages" / "render.json").write_text('{"key": "k"}')
    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    (secret_dir / "secret.txt").write_text("TOP-SECRET")
    (tmp_path / "secret.txt").write_text("TOP-SECRET")
    (bundle / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (bundle / "escape_dir").symlink_to(secret_dir, target_is_directory=True)
    (bundle / "inside.json").symlink_to(bundle / "manifest.json")  # a link that stays inside is fine
    server = open_server(bundle, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def raw_get(port: int, target: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    """Send ``target`` exactly as written (no client-side normalisation of ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", f"127.0.0.1:{port}")
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, dict(response.getheaders())


def test_serve_gives_the_bundle_files(served: int) -> None:
    status, body, headers = raw_get(served, "/")
    assert status == 200 and b"<title>atlas</title>" in body and headers["Content-Type"].startswith("text/html")
    status, body, headers = raw_get(served, "/tiles/4_files/0/0_0.jpg")
    assert status == 200 and body == b"\xff\xd8tile" and headers["Content-Type"] == "image/jpeg"
    assert raw_get(served, "/tiles/4.dzi")[2]["Content-Type"] == "application/xml"
    assert raw_get(served, "/manifest.json?cache=1")[0] == 200
    assert raw_get(served, "/inside.json")[0] == 200
    status, body, headers = raw_get(served, "/manifest.json", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "BREW", "get"])
def test_serve_answers_get_and_head_only(served: int, method: str) -> None:
    for target in ("/manifest.json", "/missing.json", "/../secret.txt"):
        status, body, headers = raw_get(served, target, method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", (method, target, status)
        assert b"activation-atlas" not in body and b"TOP-SECRET" not in body


def test_serve_refuses_a_post_with_a_body_cleanly(served: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", served, timeout=10)
    connection.request("PUT", "/manifest.json", body=b"x" * 100_000, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "GET, HEAD"
    response.read()
    connection.close()
    assert raw_get(served, "/manifest.json")[1] == b'{"format": "activation-atlas/1"}'  # untouched


def test_serve_answers_a_revalidation_with_304(served: int) -> None:
    status, _, headers = raw_get(served, "/tiles/4_files/0/0_0.jpg")
    etag, modified = headers["ETag"], headers["Last-Modified"]
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    for conditions in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"other", W/{etag}'},
        {"If-None-Match": "*"},
        {"If-Modified-Since": modified},
    ):
        got_status, got_body, got_headers = conditional_get(served, "/tiles/4_files/0/0_0.jpg", conditions)
        assert got_status == 304 and got_body == b"" and got_headers["ETag"] == etag, conditions
    for conditions in (
        {"If-None-Match": '"other"'},
        {"If-None-Match": '"other"', "If-Modified-Since": modified},  # If-None-Match, when sent, decides alone
        {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
        {"If-Modified-Since": "not a date"},
        {"Range": "bytes=0-1", "If-Range": '"other"'},  # the file changed since the client's part: the whole file
    ):
        assert conditional_get(served, "/tiles/4_files/0/0_0.jpg", conditions)[:2] == (200, b"\xff\xd8tile"), conditions
    assert conditional_get(served, "/tiles/4_files/0/0_0.jpg", {"Range": "bytes=0-1", "If-Range": etag})[:2] == (206, b"\xff\xd8")


def conditional_get(port: int, target: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", target, headers=headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, dict(response.getheaders())


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/tiles/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/tiles/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/tiles/..%2f..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/./manifest.json",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/tiles/%2f%2e%2e%2f%2e%2e%2fsecret.txt",
        "http://127.0.0.1/../secret.txt",
        "/..\\secret.txt",
        "/%5c..%5csecret.txt",
        "/escape.txt",
        "/escape_dir/secret.txt",
        "/manifest.json%00.png",
    ],
)
def test_serve_refuses_paths_that_leave_the_bundle(served: int, target: str) -> None:
    status, body, _ = raw_get(served, target)
    assert b"TOP-SECRET" not in body and b"root:" not in body
    # http.server itself folds a leading "//" into "/", so "//etc/passwd" is simply not in the bundle (404).
    assert status in ((400, 403, 404) if target == "//etc/passwd" else (400, 403)), (target, status)


def test_serve_never_lists_folders_or_shows_dot_files(served: int) -> None:
    for target in ("/tiles/", "/tiles", "/tiles/4_files/0/", "/.stages/render.json", "/.stages/", "/missing.png"):
        status, body, _ = raw_get(served, target)
        assert status == 404, target
        assert b"0_0.jpg" not in body and b"4.dzi" not in body and b"render.json" not in body


def test_serve_refuses_a_busy_port_and_a_folder_without_a_viewer(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "index.html").write_text("<!doctype html>")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(AtlasError, match="in use"):
            open_server(tmp_path / "bundle", port=taken.getsockname()[1])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AtlasError, match="no viewer"):
        open_server(empty, port=0)
    with pytest.raises(AtlasError, match="no such folder"):
        open_server(tmp_path / "nowhere", port=0)


def ranged_get(port: int, target: str, byte_range: str) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", target, headers={"Range": byte_range})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, dict(response.getheaders())


@pytest.mark.parametrize(
    ("byte_range", "status", "part"),
    [
        ("bytes=0-4", 206, slice(0, 5)),
        ("bytes=9-", 206, slice(9, None)),
        ("bytes=-6", 206, slice(-6, None)),
        ("bytes=30-1000", 206, slice(30, None)),  # an end past the file is cut to it
        ("bytes=5-2", 200, slice(None)),  # not a valid range: the whole file
        ("bytes=0-1,4-5", 200, slice(None)),  # several ranges: the whole file, which RFC 9110 allows
        ("items=0-4", 200, slice(None)),
    ],
)
def test_serve_answers_a_byte_range(served: int, byte_range: str, status: int, part: slice) -> None:
    whole = b'{"format": "activation-atlas/1"}'
    got_status, body, headers = ranged_get(served, "/manifest.json", byte_range)
    assert got_status == status and body == whole[part], (got_status, body)
    assert headers["Accept-Ranges"] == "bytes" and int(headers["Content-Length"]) == len(body)
    if status == 206:
        start = len(whole) - len(body) if byte_range.startswith("bytes=-") else int(byte_range[6:].split("-")[0])
        assert headers["Content-Range"] == f"bytes {start}-{start + len(body) - 1}/{len(whole)}"


def test_serve_refuses_a_range_past_the_end(served: int) -> None:
    status, body, headers = ranged_get(served, "/manifest.json", "bytes=500-600")
    assert status == 416 and body == b"" and headers["Content-Range"] == "bytes */32"
