"""Image grids written as PNG with numpy and matplotlib alone (no torchvision, see README)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI; must precede pyplot imports elsewhere
import matplotlib.image
import numpy as np
import torch


def grid(images: torch.Tensor, columns: int, padding: int = 2) -> np.ndarray:
    """images (N, 1, H, W) in [0, 1] -> one uint8 (rows*(H+p)+p, columns*(W+p)+p) mosaic, white gaps."""
    images = images.detach().float().cpu().clamp(0, 1)
    count, _, height, width = images.shape
    rows = -(-count // columns)
    cell_h, cell_w = height + padding, width + padding
    mosaic = np.full((rows * cell_h + padding, columns * cell_w + padding), 255, dtype=np.uint8)
    pixels = (images[:, 0].numpy() * 255).round().astype(np.uint8)
    for i, image in enumerate(pixels):
        top, left = padding + (i // columns) * cell_h, padding + (i % columns) * cell_w
        mosaic[top:top + height, left:left + width] = image
    return mosaic


def interleave_rows(top: torch.Tensor, bottom: torch.Tensor, columns: int) -> torch.Tensor:
    """Two (N, ...) batches -> (2N, ...) ordered so a grid of `columns` shows a row of `top`
    above the matching row of `bottom` (inputs over their reconstructions)."""
    pairs = torch.stack([top.reshape(-1, columns, *top.shape[1:]),
                         bottom.reshape(-1, columns, *bottom.shape[1:])], 1)
    return pairs.reshape(-1, *top.shape[1:])


def png_bytes(mosaic: np.ndarray, scale: int = 2) -> bytes:
    """A grayscale mosaic as PNG bytes, scaled up by pixel repetition so digits stay crisp."""
    enlarged = np.kron(mosaic, np.ones((scale, scale), dtype=np.uint8))
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, enlarged, cmap="gray", vmin=0, vmax=255, format="png",
                            metadata={"Software": None})
    return buffer.getvalue()
