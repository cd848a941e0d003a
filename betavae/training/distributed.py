"""Data-parallel training under torchrun: which process this is, and the few collectives a run needs.

Started with `python`, a run is one process (rank 0 of 1) and every function here is an identity or
a no-op, so single-process training runs exactly the code it always has. Under `torchrun` with W
processes:
- every process draws the same seeded permutation and augmentation parameters and takes a
  contiguous share of each batch (`World.share`), so the images a step sees do not depend on W,
  and `batch_size` stays the global batch;
- each has its own stream for dropout and the reparameterisation noise (`rank_seed`);
- DistributedDataParallel averages the gradients during the backward pass; epoch metrics are
  summed across processes once per epoch; a non-finite loss on any process stops all of them at
  the end of that epoch;
- process 0 alone validates and writes (checkpoints, DVCLive logs, snapshots, the model); a DDP
  forward is a collective, so it validates the unwrapped model. On several machines, each with its
  own disk, every process resumes process 0's checkpoint (`from_main`), and each machine's first
  process writes the finished model and logs too, so that every machine's DVC run has its outputs;
- every process checks at the start that it trains the same params with the same code as process 0
  (`check_same_run`): several machines each run their own checkout;
- a collective that waits longer than BETAVAE_PEER_TIMEOUT seconds for a peer (a machine gone, a
  network cut) fails, and the run stops with one line naming it (betavae/pipeline/launch.py);
- batch norm: SyncBatchNorm on CUDA (statistics over the whole global batch); under gloo on the
  CPU, where SyncBatchNorm does not run, each process normalises with its share's statistics and
  the running statistics of process 0 are kept (DDP copies them to the others at every step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from betavae.errors import RANK_VARIABLE, WORLD_SIZE_VARIABLE, BetaVAEError, environment_integer, one_line
from betavae.pipeline import dotted, launch


class OutOfSync(BetaVAEError, RuntimeError):
    """The processes of a data-parallel run disagree: in number with the launcher, or in weights."""


class PeerLost(BetaVAEError, RuntimeError):
    """A collective failed because another process of the run stopped (the launcher says which)."""


@contextlib.contextmanager
def peers_watched(world: World):
    """Turn the failure of a collective into PeerLost: in a data-parallel run it means a peer died."""
    try:
        yield
    except RuntimeError as error:
        # Collectives raise DistError; DDP's gradient hooks in the backward pass re-raise the
        # transport's error (gloo's "Connection reset by peer", NCCL's) as a plain RuntimeError.
        transport = isinstance(error, dist.DistError) or any(word in str(error) for word in _TRANSPORT_WORDS)
        if world.size == 1 or isinstance(error, BetaVAEError) or not transport:
            raise
        raise PeerLost(one_line(error)[:200]) from None


_TRANSPORT_WORDS = ("gloo", "NCCL", "Connection reset", "Connection closed")


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> slice:
        """This process's contiguous part of a batch of batch_size (which size divides)."""
        part = batch_size // self.size
        return slice(None) if self.size == 1 else slice(self.rank * part, (self.rank + 1) * part)


def world_from_environment() -> World:
    """The World torchrun describes in the environment; one process without it."""
    world = World(rank=environment_integer(RANK_VARIABLE, 0), size=environment_integer(WORLD_SIZE_VARIABLE, 1, low=1),
                  local_rank=environment_integer("LOCAL_RANK", 0))
    if world.rank >= world.size:
        raise BetaVAEError(f"the environment sets {RANK_VARIABLE}={world.rank} and {WORLD_SIZE_VARIABLE}="
                           f"{world.size}: a process's rank must be below the number of processes (torchrun sets both)")
    return world


def join(world: World, device: torch.device) -> None:
    """Join the process group of a data-parallel run (nothing for one process)."""
    if world.size > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=launch.peer_timeout(dict(os.environ)))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)


def leave(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a process's own random stream: `seed` itself for process 0 (so one process is
    seeded as it always was), distinct 63-bit values for the others."""
    return (seed + rank * 0x9E3779B97F4A7C15) % 2**63


def prepare_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """Batch norm made synchronous where it can be (CUDA, more than one process)."""
    if world.size > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(model: nn.Module, world: World, device: torch.device) -> Callable:
    """What a training step calls: the model itself, or its DDP wrapper that averages gradients."""
    if world.size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_across(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """tensor summed over all processes (in place), one collective."""
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def min_across(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def gather(value: Any, world: World) -> list:
    """[value of process 0, value of process 1, ...] on every process."""
    if world.size == 1:
        return [value]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def from_main(value: Any, world: World) -> Any:
    """Process 0's value, on every process (the value the others pass is ignored)."""
    if world.size == 1:
        return value
    box = [value if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_run(params: dict, code: dict, world: World) -> None:
    """Every process must train process 0's params with process 0's code: on several machines each
    runs its own checkout, and a difference would train a model that none of them describes."""
    if world.size == 1:
        return
    with peers_watched(world):
        found = gather((socket.gethostname(), params, code), world)
    main_host, main_params, main_code = found[0]
    for rank, (host, other_params, other_code) in enumerate(found[1:], start=1):
        for what, differing in (("params", dotted.differing(main_params, other_params)),
                                ("code", sorted(name for name in main_code.keys() | other_code.keys()
                                                if main_code.get(name) != other_code.get(name)))):
            if differing:
                raise OutOfSync(f"process {rank} (on {host}) trains with other {what} than process 0 (on "
                                f"{main_host}): {', '.join(differing[:5])} differ; every machine needs the same "
                                "commit and params.yaml")


def check_in_sync(model: nn.Module, world: World) -> None:
    """Every process must end with bit-identical parameters; a difference is a bug, not noise."""
    if world.size == 1:
        return
    weights = torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])
    high, low = weights.clone(), weights.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    if not torch.equal(high, low):
        differing = int((high != low).sum())
        raise OutOfSync(f"the {world.size} processes ended with different weights ({differing} values differ)")
