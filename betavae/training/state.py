"""What a training run holds, shared by the loop (train.py) and its checkpoint (resume.py): where it
writes, what it trains with, and what it has produced so far."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch

from betavae.core.data import Split
from betavae.core.model import ConvVAE
from betavae.pipeline.params import Params
from betavae.speed import runtime
from betavae.training import distributed


@dataclasses.dataclass(frozen=True)
class Outputs:
    model: Path  # the best-validation model file
    checkpoint: Path  # the training state, kept while the run is unfinished
    live_dir: Path  # DVCLive's metrics and snapshot images


@dataclasses.dataclass
class Trainer:
    """What a run trains with, set up once at its start (the same in every process)."""

    params: Params
    compute: runtime.Compute
    world: distributed.World
    model: ConvVAE  # the module whose weights are saved and validated
    step_forward: Callable  # what a training step calls (x, samples): the model, its DDP wrapper, or compiled
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # shuffling and augmentation: the same stream in every process
    train: Split
    val: Split

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.params.batch_size


@dataclasses.dataclass
class BestEpoch:
    """The epoch with the best validation metric so far (params' select.metric, lower is better):
    what model.pt will hold."""

    epoch: int = 0
    value: float = math.inf  # the validation metric at that epoch
    weights: dict | None = None  # the model's state dict at that epoch, on the CPU
    latent_kl: list[float] = dataclasses.field(default_factory=list)  # validation KL per latent dimension


@dataclasses.dataclass
class Progress:
    """What a run has produced so far: saved in the checkpoint after every epoch, returned at the end."""

    epochs_done: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # each epoch's logged metrics
    best: BestEpoch = dataclasses.field(default_factory=BestEpoch)
    snapshots: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # DVCLive image name -> uint8 mosaic
