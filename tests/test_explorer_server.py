"""The explorer's page server (betavae/uses/explorer.py) serves the page's own files and nothing else,
and answers every request, well-formed or not, with an HTTP status (no traceback, no dropped
connection). Raw sockets, so that requests a browser would never send can be sent."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from betavae.uses import explorer


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A page directory (with links in and out of it) beside a secret, served on a free port."""
    base = tmp_path_factory.mktemp("site")
    page, outside = base / "page", base / "outside"
    page.mkdir()
    outside.mkdir()
    for name in explorer.PAGE_FILES:
        (page / name).write_text(f"contents of {name}")
    (page / "vendor").mkdir()
    (page / "vendor" / "runtime.wasm").write_bytes(b"\0asm")
    (page / ".hidden").write_text("not for the browser")
    (outside / "secret.txt").write_text("SECRET")
    (page / "leak.txt").symlink_to(outside / "secret.txt")
    (page / "leakdir").symlink_to(outside)
    (page / "inside.json").symlink_to(page / explorer.EXPLORER)
    (page / "loop").symlink_to(page / "loop")
    running = explorer.server(page, port=0)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running.server_address[1]
    running.shutdown()
    running.server_close()


def _exchange(port: int, request: bytes, timeout: float = 15) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(port: int, request: bytes) -> int:
    response = _exchange(port, request)
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


def _get(port: int, target: str) -> tuple[int, bytes]:
    response = _exchange(port, f"GET {target} HTTP/1.0\r\n\r\n".encode("latin-1"))
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_the_pages_files_are_served_with_their_types(site):
    assert _get(site, "/") == (200, b"contents of index.html")
    assert _get(site, "/explorer.json") == (200, b"contents of explorer.json")
    assert _get(site, "/vendor/runtime.wasm") == (200, b"\0asm")
    assert _get(site, "/inside.json")[0] == 200  # a link that stays inside the page
    head = _exchange(site, b"GET /vendor/runtime.wasm HTTP/1.0\r\n\r\n").split(b"\r\n\r\n")[0]
    assert b"Content-Type: application/wasm" in head and b"Content-Length: 4" in head
    assert _exchange(site, b"HEAD /index.html HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\n")  # no body


@pytest.mark.parametrize("target", [
    "/leak.txt", "/leakdir/secret.txt", "/../outside/secret.txt", "/%2e%2e/outside/secret.txt",
    "/vendor/..%2f..%2foutside/secret.txt", "/.hidden", "/loop", "/missing.js", "/vendor",
    "/" + "a" * 300, "/%2Fetc%2Fpasswd",
])
def test_nothing_outside_the_pages_files_is_served(site, target):
    status, body = _get(site, target)
    assert status == 404 and b"SECRET" not in body


@pytest.mark.parametrize("request_bytes, status", [
    (b"\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.0 extra\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"GET /%ff%fe HTTP/1.0\r\n\r\n", 400),
    (b"GET /a%00b HTTP/1.0\r\n\r\n", 400),
    (b"GET /a\\b HTTP/1.0\r\n\r\n", 400),
    (b"GET http://elsewhere/index.html HTTP/1.0\r\n\r\n", 400),
    (b"GET //elsewhere/index.html HTTP/1.0\r\n\r\n", 404),  # read as the path /elsewhere/index.html
    (b"GET index.html HTTP/1.0\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", 501),
    (b"DELETE /index.html HTTP/1.0\r\n\r\n", 501),
    (b"GET /" + b"x" * (explorer.MAX_PATH + 10) + b" HTTP/1.0\r\n\r\n", 414),
    (b"GET / HTTP/1.0\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
])
def test_a_request_that_is_not_well_formed_gets_an_error_status(site, request_bytes, status):
    assert _status(site, request_bytes) == status
    assert _get(site, "/")[0] == 200  # and the server goes on


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.binary(min_size=0, max_size=300).filter(lambda data: b"\n" not in data))
def test_any_request_line_gets_a_status_never_a_dropped_connection(site, line):
    status = _status(site, line + b"\r\n\r\n")
    assert status == 200 or 400 <= status < 600


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n "), max_size=120))
def test_no_path_reaches_a_file_outside_the_page(site, path):
    status, body = _get(site, "/" + path)
    assert b"SECRET" not in body
    assert status in (200, 400, 404, 414)


def test_a_port_in_use_is_one_line(site):
    with pytest.raises(explorer.ServeError, match=f"cannot listen on 127.0.0.1:{site}"):
        explorer.server(os.path.dirname(__file__) + "/../reports/explorer", site)
