"""The in-browser latent explorer (reports/explorer): the names of its files, and a server for it.

export.py writes the model files named here; the page (index.html, explorer.js) loads them with
the vendored onnxruntime-web. `server` serves the page on this machine: browsers load WebAssembly
and modules only over HTTP, not from file://, and a static file server is all it takes. It listens
on 127.0.0.1 alone, so nothing is exposed."""

from __future__ import annotations

import functools
import http.server
import typing
from pathlib import Path

from betavae.errors import BetaVAEError

ENCODER, DECODER, EXPLORER = "encoder.onnx", "decoder.onnx", "explorer.json"
HOST = "127.0.0.1"
PAGE_FILES = ("index.html", "explorer.js", ENCODER, DECODER, EXPLORER)


class ServeError(BetaVAEError, OSError):
    """A page directory that is not the explorer's, or an address that cannot be listened on."""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    # .mjs and .wasm need their types for the browser to run them; not every Python maps both.
    extensions_map: typing.ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def log_message(self, format, *args):  # a request log would bury the address on the terminal
        pass


def server(directory: str | Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A server of `directory` on HOST:port (0: any free port), not yet serving; its
    `server_address[1]` is the port."""
    directory = Path(directory)
    missing = [name for name in PAGE_FILES if not (directory / name).is_file()]
    if missing:
        raise ServeError(f"{directory}: not the explorer page (missing {', '.join(missing)}); "
                         "`dvc repro export` writes the model files")
    handler = functools.partial(_Quiet, directory=str(directory))
    try:
        return http.server.ThreadingHTTPServer((HOST, port), handler)
    except OSError as error:
        raise ServeError(f"cannot listen on {HOST}:{port} ({error.strerror or error}); "
                         "choose another --port (0 picks a free one)") from None


def url(running: http.server.ThreadingHTTPServer) -> str:
    return f"http://{HOST}:{running.server_address[1]}/"
