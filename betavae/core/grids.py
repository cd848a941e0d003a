"""Pictures the model draws: mosaics of decoded digits (samples, reconstructions, interpolations,
latent traversals) as uint8 tensors (betavae/pipeline/pictures.py makes files of them).

Where a new picture goes: a mosaic of images the model decodes belongs here (training's snapshots,
the plot stage and the `betavae` command share these); a chart with axes, labels or legends is a
matplotlib figure and belongs in figures.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from betavae.core.model import ConvVAE

SAMPLES = 64  # prior samples in a grid: the training snapshots, the plot stage, `betavae sample`
COLUMNS = 8  # images per row of a grid
GAP = 2  # white pixels between images in a grid, and around it
SCALE = 2  # pixels per image pixel in a saved grid, so digits stay crisp when shown larger


def prior_latents(seed: int, latent_dim: int, count: int = SAMPLES) -> torch.Tensor:
    """(count, latent_dim) draws from N(0, I) that depend on the seed alone (on the CPU), so the
    snapshots, the plot stage and `betavae sample --seed` decode the same latents."""
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))


def mosaic(images: torch.Tensor, columns: int = COLUMNS) -> torch.Tensor:
    """images (N, 1, H, W) in [0, 1] -> uint8 (rows * (H + 2) + 2, min(N, columns) * (W + 2) + 2) * SCALE:
    `columns` images to a row (fewer if there are fewer images), white gaps of 2 pixels, the last
    row completed with white cells. The same pixels as torchvision's make_grid(padding=2,
    pad_value=1), which is not used because importing torchvision costs a process 2.5 s of a
    2-core CPU's start-up (tests/test_grids.py holds the two equal)."""
    count, _, height, width = images.shape
    columns = min(columns, count)
    rows = -(-count // columns)
    x = images.detach().float().cpu().clamp(0, 1)[:, 0]  # (N, H, W)
    x = torch.cat([x, x.new_ones(rows * columns - count, height, width)])  # (rows * columns, H, W)
    x = nn.functional.pad(x, (GAP, 0, GAP, 0), value=1.0)  # each cell with the gap above and left of it
    x = x.reshape(rows, columns, height + GAP, width + GAP).permute(0, 2, 1, 3)  # (rows, H + 2, columns, W + 2)
    grid = nn.functional.pad(x.reshape(rows * (height + GAP), columns * (width + GAP)), (0, GAP, 0, GAP), value=1.0)
    pixels = grid.mul(255).round().to(torch.uint8)
    return pixels.repeat_interleave(SCALE, 0).repeat_interleave(SCALE, 1)


@torch.no_grad()
def reconstructions(model: ConvVAE, x: torch.Tensor, columns: int = COLUMNS) -> torch.Tensor:
    """x (N, 1, 28, 28), N a multiple of columns -> (2N, 1, 28, 28): each row of inputs followed by
    the row of their reconstructions from the posterior mean."""
    mu, _ = model.encode(x)
    return interleave_rows(x, model.pixel_probabilities(mu), columns)


def interleave_rows(top: torch.Tensor, bottom: torch.Tensor, columns: int = COLUMNS) -> torch.Tensor:
    """Two (N, ...) batches -> (2N, ...) ordered so a mosaic of `columns` shows each row of `top`
    above the matching row of `bottom`. A last row that is not full is completed with blank (white)
    cells."""
    blank = -len(top) % columns
    top, bottom = (torch.cat([batch, batch.new_ones(blank, *batch.shape[1:])]) for batch in (top, bottom))
    pairs = torch.stack([top.reshape(-1, columns, *top.shape[1:]), bottom.reshape(-1, columns, *top.shape[1:])], 1)
    return pairs.reshape(-1, *top.shape[1:])


@torch.no_grad()
def interpolations(model: ConvVAE, starts: torch.Tensor, ends: torch.Tensor, steps: int) -> torch.Tensor:
    """starts, ends (R, 1, 28, 28) -> (R * steps, 1, 28, 28): R rows walking linearly in latent space
    from each start's posterior mean to its end's."""
    start_mu, _ = model.encode(starts)  # (R, Z)
    end_mu, _ = model.encode(ends)
    weights = torch.linspace(0, 1, steps, device=start_mu.device).view(1, steps, 1)
    path = start_mu[:, None] * (1 - weights) + end_mu[:, None] * weights  # (R, steps, Z)
    return model.pixel_probabilities(path.reshape(-1, path.shape[-1]))


@torch.no_grad()
def traversal(model: ConvVAE, base: torch.Tensor, dimensions: list[int], values: torch.Tensor) -> torch.Tensor:
    """base (Z,), values (S,) -> (len(dimensions) * S, 1, 28, 28): for each dimension a row of
    decodings of `base` with that one dimension set to each value, the others left as they are."""
    latents = base.repeat(len(dimensions), len(values), 1)  # (D, S, Z)
    for row, dimension in enumerate(dimensions):
        latents[row, :, dimension] = values.to(latents)
    return model.pixel_probabilities(latents.reshape(-1, base.shape[-1]))
