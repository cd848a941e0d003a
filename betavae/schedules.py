"""Learning-rate and KL-weight schedules, as functions of training progress in epochs.

Progress t is fractional (step / steps_per_epoch), so both schedules move every optimiser step.
"""

from __future__ import annotations

import math


def learning_rate(t: float, base_lr: float, max_lr: float, warmup_epochs: float,
                  total_epochs: float) -> float:
    """Linear warm-up from base_lr to max_lr over [0, warmup], then a cosine back to base_lr at the end."""
    if t < warmup_epochs:
        return base_lr + (max_lr - base_lr) * t / warmup_epochs
    decay_epochs = total_epochs - warmup_epochs
    if decay_epochs <= 0:
        return max_lr
    progress = min(1.0, (t - warmup_epochs) / decay_epochs)
    return base_lr + (max_lr - base_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def kl_weight(t: float, beta: float, anneal_epochs: float) -> float:
    """Linear rise from 0 to beta over [0, anneal_epochs], then beta (Bowman et al. 2016's warm-up)."""
    if anneal_epochs <= 0:
        return beta
    return beta * min(1.0, t / anneal_epochs)
