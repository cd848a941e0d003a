"""Learning-rate and KL-weight schedules, as functions of training progress in epochs.

Progress t is fractional (step / steps_per_epoch), so both schedules move every optimiser step; the
values training logs for an epoch, and the warnings below, are those at its last step (`last_step`).
"""

from __future__ import annotations

import math
from typing import Protocol

from betavae.errors import counted

# What training logs of the schedules every epoch (their values at its last step), with a label for each.
LOGGED = {"lr": "learning rate", "kl_weight": "KL weight (effective β)"}


class Schedule(Protocol):
    """What the schedules read of the params (betavae.pipeline.params.Params has these)."""

    epochs: int
    beta: float
    base_lr: float
    max_lr: float
    warmup_epochs: int
    kl_anneal_epochs: int
    batch_size: int
    train_images: int  # images the optimiser sees per epoch


def steps_per_epoch(params: Schedule) -> int:
    """Optimiser steps in an epoch: the full batches of the training images."""
    return params.train_images // params.batch_size


def last_step(epoch: int, steps: int) -> float:
    """Progress t at the last optimiser step of `epoch` (1-based) of `steps` steps: where training logs the
    schedules (betavae/training/loop.py), and where the warnings read them at the last epoch."""
    return epoch - 1 / steps


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


def warnings(params: Schedule) -> list[str]:
    """Schedules longer than training are run as given (a quick `-S epochs=3` run never reaches the
    peak, as in the spec's own script); say so, naming the key, with the value training logs at its
    last step."""
    found, end, training = [], last_step(params.epochs, steps_per_epoch(params)), counted(params.epochs, "epoch")
    if params.warmup_epochs > params.epochs:
        peak = learning_rate(end, params.base_lr, params.max_lr, params.warmup_epochs, params.epochs)
        found.append(f"warmup_epochs ({params.warmup_epochs}) is longer than training ({training}): the learning "
                     f"rate only rises, to {peak:.3g} at the last step (max_lr {params.max_lr:g})")
    if params.kl_anneal_epochs > params.epochs:
        weight = kl_weight(end, params.beta, params.kl_anneal_epochs)
        found.append(f"kl_anneal_epochs ({params.kl_anneal_epochs}) is longer than training ({training}): the KL "
                     f"weight ends at {weight:.3g} at the last step, not beta ({params.beta:g})")
    return found
