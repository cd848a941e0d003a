"""The in-browser latent explorer (reports/explorer): the names of its files, and a server for it.

export.py writes the model files named here; the page (index.html, explorer.js) loads them with
the vendored onnxruntime-web. `server` serves the page on this machine: browsers load WebAssembly
and modules only over HTTP, not from file://, and a static file server is all it takes.

What it serves, and nothing else: GET and HEAD of a regular file inside the page's directory,
found by its path after resolving every symbolic link (a link that leads out of the directory is
not followed out; a name starting with a dot is not served). Every other request gets an HTTP error
status: 400 for a request that is not well-formed (an empty request line included), 404 for anything
outside the page, 501 for any other method, 414 for a path longer than MAX_PATH, 431 for too many or
too long headers; a client that stalls is dropped after TIMEOUT_S.
It listens on 127.0.0.1 alone, so nothing is exposed beyond this machine, and writes no log of
requests (docs/trust.md).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import typing
import urllib.parse
from pathlib import Path

from betavae.errors import BetaVAEError

ENCODER, DECODER, EXPLORER = "encoder.onnx", "decoder.onnx", "explorer.json"
HOST = "127.0.0.1"
PAGE_FILES = ("index.html", "explorer.js", ENCODER, DECODER, EXPLORER)
INDEX = "index.html"
MAX_PATH = 2048  # characters of a request's target
TIMEOUT_S = 10.0  # a client that sends nothing for this long is dropped
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
         ".json": "application/json", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
         ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8"}


class ServeError(BetaVAEError, OSError):
    """A page directory that is not the explorer's, or an address that cannot be listened on."""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    """Regular files of one directory, by GET or HEAD; an HTTP error status for everything else."""

    root: typing.ClassVar[Path]
    server_version = "betavae-explore"
    sys_version = ""
    timeout = TIMEOUT_S
    protocol_version = "HTTP/1.0"
    default_request_version = "HTTP/1.0"  # so that even a garbled request line gets a status line back

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _serve(self, with_body: bool) -> None:
        if len(self.path) > MAX_PATH:
            self.send_error(414)
            return
        found = self._file()
        if isinstance(found, int):
            self.send_error(found)
            return
        try:
            with found.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", TYPES.get(found.suffix.lower(), "application/octet-stream"))
                self.send_header("Content-Length", str(size))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                if with_body:
                    shutil.copyfileobj(file, self.wfile)
        except OSError:
            return  # the file went away, or the client did: nothing more can be said to it

    def _file(self) -> Path | int:
        """The file a request names, or the HTTP status that refuses it."""
        target = urllib.parse.urlsplit(self.path)
        if target.scheme or target.netloc or not target.path.startswith("/"):
            return 400
        try:
            name = urllib.parse.unquote(target.path, errors="strict")
        except UnicodeDecodeError:
            return 400
        if "\x00" in name or "\\" in name:
            return 400
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if any(part == ".." or part.startswith(".") for part in parts):
            return 404
        try:
            resolved = self.root.joinpath(*parts or [INDEX]).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):  # missing, a link loop, a name too long
            return 404
        if not resolved.is_relative_to(self.root) or not resolved.is_file():
            return 404
        return resolved

    def parse_request(self) -> bool:
        if not self.raw_requestline.strip():  # the base class closes without a word
            self.command, self.request_version, self.requestline = None, "HTTP/1.0", ""
            self.send_error(400, "Empty request line")
            return False
        return super().parse_request()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        with contextlib.suppress(OSError):  # the client is gone
            super().send_error(code, message, explain)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:  # a client that stalls or hangs up: drop it quietly
            self.close_connection = True
        except Exception:  # a request this handler did not foresee: a status, not a traceback
            self.close_connection = True
            self.send_error(500)

    def log_message(self, format, *args) -> None:  # a request log would bury the address on the terminal
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        """No traceback for a request the handler could not finish: the connection is closed."""


def server(directory: str | Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A server of `directory` on HOST:port (0: any free port), not yet serving; its
    `server_address[1]` is the port."""
    directory = Path(directory)
    missing = [name for name in PAGE_FILES if not (directory / name).is_file()]
    if missing:
        raise ServeError(f"{directory}: not the explorer page (missing {', '.join(missing)}); "
                         "`dvc repro export` writes the model files")
    handler = type("PageHandler", (_PageHandler,), {"root": directory.resolve()})
    try:
        return _Server((HOST, port), handler)
    except (OSError, OverflowError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ServeError(f"cannot listen on {HOST}:{port} ({reason}); "
                         "choose another --port (0 picks a free one)") from None


def url(running: http.server.ThreadingHTTPServer) -> str:
    return f"http://{HOST}:{running.server_address[1]}/"
