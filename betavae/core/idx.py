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
from betavae.errors import BetaVAEError

UINT8 = 0x08
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
    header = struct.pack(">HBB", 0, UINT8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def decode(data: bytes, name: str = "IDX data") -> np.ndarray:
    if len(data) < 4:
        raise IdxError(f"{name}: truncated ({len(data)} bytes, no IDX header)")
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != UINT8 or ndim not in (1, 3):
        raise IdxError(f"{name}: bad magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
                       "(expected 0x00000801 for labels or 0x00000803 for images)")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxError(f"{name}: truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise IdxError(f"{name}: {len(data)} bytes, but its header {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


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
