"""Random rotation and translation for a whole batch at once: one affine matrix per image, one
grid_sample call for the batch, parameters drawn from a dedicated seeded generator.

torchvision's RandomAffine transforms one image per call on the CPU (the benchmark's conventional
loop uses it); this warps a batch on the training device in one kernel. Drawing (`draw_affine`) and
warping (`warp`) are separate, so a data-parallel process can draw for the whole batch and warp its
share of it exactly as a single process would (betavae/training/step.py).

Nearest-neighbour sampling is the default, as in torchvision's RandomRotation/RandomAffine: it
only moves pixels. Bilinear sampling averages neighbours at every sub-pixel position, which turns
crisp strokes grey, and a Bernoulli decoder trained on those targets learns to predict blur
(docs/investigations.md has the measurement).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, rotation_degrees: float, translate: float, generator: torch.Generator,
                  interpolation: str = "nearest") -> torch.Tensor:
    """x (B, C, H, W) -> x warped by a per-image rotation in [-rotation, rotation] degrees and a shift
    in [-translate, translate] of the image side on each axis; uncovered pixels become 0. Nothing is
    drawn when both are 0."""
    if rotation_degrees == 0 and translate == 0:
        return x
    return warp(x, draw_affine(x.shape[0], rotation_degrees, translate, generator).to(x.dtype), interpolation)


def draw_affine(batch: int, rotation_degrees: float, translate: float,
                generator: torch.Generator) -> torch.Tensor:
    """(B, 2, 3) matrices mapping output to input coordinates in affine_grid's [-1, 1] frame."""
    # (B, 3): angle, shift_x, shift_y, each uniform in [-1, 1) before scaling
    draws = torch.rand(batch, 3, generator=generator, device=generator.device) * 2 - 1
    angle = draws[:, 0] * math.radians(rotation_degrees)
    shift = draws[:, 1:] * (2 * translate)  # the image side spans 2 in this frame
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor, interpolation: str = "nearest") -> torch.Tensor:
    """x (B, C, H, W), theta (B, 2, 3) -> output pixel at u takes x at theta @ [u, 1]."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
