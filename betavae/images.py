"""Image grids written as PNG with numpy and matplotlib alone (no torchvision, see README)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI; must precede pyplot imports elsewhere
import matplotlib.image
import numpy as np
import torch

if TYPE_CHECKING:
    from betavae.model import ConvVAE


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


@torch.no_grad()
def sample_grid(model: ConvVAE, latents: torch.Tensor, columns: int) -> bytes:
    """latents (N, Z), draws from the prior -> the decoder's mean images, `columns` to a row."""
    return png_bytes(grid(torch.sigmoid(model.decode(latents)), columns))


@torch.no_grad()
def reconstruction_grid(model: ConvVAE, x: torch.Tensor, columns: int) -> bytes:
    """x (N, 1, 28, 28): rows of inputs above rows of their reconstructions from the posterior mean."""
    mu, _ = model.encode(x)
    return png_bytes(grid(interleave_rows(x, torch.sigmoid(model.decode(mu)), columns), columns))
