"""The MNIST files and their IDX format: a big-endian header, then raw uint8 values.

Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one
big-endian uint32 per dimension. Images are 3-D (count, 28, 28), labels 1-D (count,).
torchvision reads these files too, but raises bare exceptions on a damaged or missing one;
every problem here is one IdxError that names the file.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from betavae.core import files
from betavae.errors import BetaVAEError, counted

UINT8 = 0x08
MAGIC = bytes((0, 0, UINT8))  # how every IDX file of unsigned bytes starts; then its number of dimensions
IDX_TYPES = {b"\x08": "unsigned byte", b"\x09": "signed byte", b"\x0b": "16-bit integer", b"\x0c": "32-bit integer",
             b"\x0d": "float", b"\x0e": "double"}  # the type byte of the IDX format, and what it stores
GZIP_MAGIC = b"\x1f\x8b"
IMAGE_SIDE = 28
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
MNIST_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000
MAX_BYTES = 2**30  # 1.3 million 28x28 images; MNIST's largest file is 47 MB


class IdxError(BetaVAEError, ValueError):
    """A file that is not the IDX data it should be; the message names the file."""


def encode(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = MAGIC + bytes((array.ndim,)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def decode(data: bytes, name: str = "IDX data") -> np.ndarray:
    _check_magic(data, name)
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxError(f"{name}: truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise IdxError(f"{name}: {len(data)} bytes, but its header {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _check_magic(data: bytes, name: str) -> None:
    """Refuse, saying what it is instead, data that does not start as MNIST's IDX files do: a file of
    another kind (text, an image, MNIST's own .gz download), IDX of another value type, or of a
    number of dimensions that is neither images' nor labels'."""
    start = " ".join(f"{byte:02x}" for byte in data[:4])
    if not data:
        raise IdxError(f"{name}: empty, not an IDX file")
    if not (MAGIC.startswith(data[:3]) or (data[:2] == MAGIC[:2] and data[2:3] in IDX_TYPES)):
        hint = "; it is gzip-compressed: unpack it first (gunzip -k)" if data.startswith(GZIP_MAGIC) else ""
        raise IdxError(f"{name}: not an IDX file (it starts with bytes {start}; an IDX file of unsigned bytes, as "
                       f"MNIST's are, starts with {' '.join(f'{byte:02x}' for byte in MAGIC)}){hint}")
    if len(data) < 4:
        raise IdxError(f"{name}: truncated ({counted(len(data), 'byte')}, no IDX header)")
    if data[2] != UINT8:
        raise IdxError(f"{name}: an IDX file of {IDX_TYPES[data[2:3]]} values (it starts with bytes {start}); "
                       f"MNIST's hold unsigned bytes (type 0x{UINT8:02x})")
    if data[3] not in (1, 3):
        raise IdxError(f"{name}: an IDX file of {data[3]} dimensions (it starts with bytes {start}); expected 3 "
                       "(images: 00 00 08 03) or 1 (labels: 00 00 08 01)")


def read_images(path: Path) -> np.ndarray:
    images = decode(_read(path), str(path))
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise IdxError(f"{path}: shape {images.shape}, expected (N, {IMAGE_SIDE}, {IMAGE_SIDE})")
    if not len(images):
        raise IdxError(f"{path}: holds no images")
    return images


def read_labels(path: Path) -> np.ndarray:
    labels = decode(_read(path), str(path))
    if labels.ndim != 1:
        raise IdxError(f"{path}: shape {labels.shape}, expected (N,) labels")
    if not labels.size:
        raise IdxError(f"{path}: holds no labels")
    if labels.max() > 9:
        raise IdxError(f"{path}: label {labels.max()} outside 0-9")
    return labels


def _read(path: Path) -> bytes:
    return files.read_bytes(path, MAX_BYTES, "an IDX file", IdxError)
