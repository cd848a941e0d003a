"""Shared test fixtures: tiny synthetic MNIST IDX files and a tiny parameter set."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from betavae import idx
from betavae.download import FILES
from betavae.params import parse_params

TINY_TRAIN = 400
TINY_TEST = 100
TINY_PARAMS = {
    "epochs": 2, "warmup_epochs": 1, "kl_anneal_epochs": 1, "batch_size": 32, "z_dim": 4,
    "snapshot_every": 1, "data": {"limit": TINY_TRAIN, "val_size": 64}, "eval": {"iw_samples": 4},
    "augment": {"rotation": 10.0, "translate": 0.1},
}


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 28, 28) uint8 images and labels 0-9: each digit a bar at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        image[4 + 2 * label: 7 + 2 * label, 4:24] = 255
        image[4:24, 4 + 2 * label: 7 + 2 * label] = 200
    return images, labels.astype(np.uint8)


def write_mnist(directory: Path, train: int = TINY_TRAIN, test: int = TINY_TEST) -> dict[str, str]:
    """Write the four IDX files to directory; return their md5s keyed like download.FILES."""
    directory.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = synthetic_digits(train, seed=1)
    test_images, test_labels = synthetic_digits(test, seed=2)
    contents = {
        "train-images-idx3-ubyte": idx.encode(train_images),
        "train-labels-idx1-ubyte": idx.encode(train_labels),
        "t10k-images-idx3-ubyte": idx.encode(test_images),
        "t10k-labels-idx1-ubyte": idx.encode(test_labels),
    }
    assert set(contents) == set(FILES)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    return {name: hashlib.md5(data).hexdigest() for name, data in contents.items()}


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    write_mnist(tmp_path / "mnist")
    return tmp_path / "mnist"


@pytest.fixture
def tiny_params():
    return parse_params(TINY_PARAMS)
