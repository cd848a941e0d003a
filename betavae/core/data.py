"""MNIST as uint8 tensors resident on the training device, split and batched with tensor ops.

Images stay uint8 (1 byte per pixel, 47 MB for all 60k) and become float only a batch at a time;
batches are index gathers from a seeded permutation, so no Python runs per sample.

Binarized MNIST, the data of the published likelihoods (docs/method.md): with `data.binarize:
dynamic`, every training image is a fresh draw of each pixel from Bernoulli(grey value) each time it
is seen (Burda et al. 2016; Tomczak & Welling 2018), and the validation and test images are drawn
once, from the fixed seeds below, so every model is scored on the same binary images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch

from betavae.core import idx

INFERENCE_BATCH = 1000  # images per forward pass outside training: validation, plots, the API
TEST_BINARIZATION_SEED = 0  # the one binarization of the test set every binarized NLL is measured on
VALIDATION_BINARIZATION_SEED = 1


@dataclasses.dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


def load_split(data_dir: Path, images_name: str, labels_name: str, limit: int = 0) -> Split:
    data_dir = Path(data_dir)
    images = idx.read_images(data_dir / images_name)
    labels = idx.read_labels(data_dir / labels_name)
    if len(images) != len(labels):
        raise idx.IdxError(f"{data_dir}: {len(images)} images but {len(labels)} labels")
    if limit:
        images, labels = images[:limit], labels[:limit]
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype("int64")))


def load_train_val(data_dir: Path, seed: int, limit: int, val_size: int, binarize: str) -> tuple[Split, Split]:
    """The training pool (the first `limit` images, or all) split by a permutation seeded by `seed`
    into the rest and `val_size` validation images; with dynamic binarization, the validation
    images binarized once."""
    pool = load_split(data_dir, idx.TRAIN_IMAGES, idx.TRAIN_LABELS, limit)
    expected = limit or idx.MNIST_TRAIN_IMAGES
    if len(pool) != expected:
        raise idx.IdxError(f"{data_dir}: {len(pool)} training images, params expect {expected}")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    val_index = order[:val_size].sort().values
    train_index = order[val_size:].sort().values
    val = _take(pool, val_index)
    if binarize == "dynamic":
        val = binarized(val, VALIDATION_BINARIZATION_SEED)
    return _take(pool, train_index), val


def load_test(data_dir: Path, limit: int = 0, binarize: str = "none") -> Split:
    """The test images (the first `limit`, or all); binarized once, from TEST_BINARIZATION_SEED,
    for a model of binary images (binarize: dynamic)."""
    test = load_split(data_dir, idx.TEST_IMAGES, idx.TEST_LABELS, limit)
    return binarized(test, TEST_BINARIZATION_SEED) if binarize == "dynamic" else test


def binarized(split: Split, seed: int) -> Split:
    """Each pixel 255 with probability grey / 255, else 0, drawn once from `seed` on the CPU: the
    same binary images on every machine and device."""
    draws = torch.rand(split.images.shape, generator=torch.Generator().manual_seed(seed))
    return Split((draws < split.images.float() / 255).to(torch.uint8) * 255, split.labels)


def bernoulli(x: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """x grey in [0, 1], uniform draws in [0, 1) of x's shape -> each pixel 1 where its draw is below
    its grey value, else 0: a Bernoulli(grey) draw of every pixel (dynamic binarization)."""
    return (uniform < x).to(x.dtype)


def _take(split: Split, index: torch.Tensor) -> Split:
    return Split(split.images[index], split.labels[index])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1]."""
    return images.unsqueeze(1).float().div_(255)


def ordered_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, as (float images (b, 1, 28, 28), labels (b,)) batches of at most batch_size."""
    for start in range(0, len(split), batch_size):
        yield to_float(split.images[start:start + batch_size]), split.labels[start:start + batch_size]
