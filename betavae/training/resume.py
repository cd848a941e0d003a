"""Resuming an interrupted training run: what is saved, and when it is used.

What is saved. After every epoch, process 0 writes the training state to the checkpoint path
(`--checkpoint`, models/checkpoint.pt in dvc.yaml), atomically: the model and optimiser, the shared
generator (shuffling and augmentation) and every process's own RNG (dropout, reparameterisation
noise; CUDA's too), the epochs done, the metric history, the best epoch so far (its weights,
its value of the selection metric and per-dimension KL), the snapshot mosaics, and what produced it: the training
params (params.stage_params(TRAIN)), a SHA-256 of each module training runs (dependencies.closure),
the model architecture and the number of processes.

When it is resumed. With resume mode "auto" (the default), a run continues after the last complete
epoch of a checkpoint written by the same training params, code, architecture and number of
processes; process 0 reads it and sends it to the others, so that on several machines, where only
process 0's has the file, every process resumes the same state. The whole state is checked by loading
it into scratch copies before any of it is applied, so a resumed run trains exactly the epochs that
are missing and ends with the same bytes as an uninterrupted run.

When it is refused or ignored. A checkpoint that differs in any of those, is damaged, or holds a
state that does not load is refused: "auto" says why and starts fresh, exactly as if there were no
checkpoint; "require" stops with the reason (ResumeRefused); "never" ignores the file.

What a resumed run rewrites. The DVCLive metrics and snapshot images of the epochs it skips, from
the state, into the unfinished run's log directory beside the checkpoint (`live_directory`): DVCLive
clears its directory when it starts. The committed logs (`--live`) are replaced only when the run
finishes, together with the model.

When it is deleted. A run that finishes deletes its checkpoint and log directory. The state exists
only while a run is unfinished, so it is never an output that DVC or git carries, and `dvc repro
--force` after a finished run trains from scratch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from betavae.compat.code_dependencies import code_fingerprint
from betavae.core.model import ARCHITECTURE
from betavae.errors import BetaVAEError, one_line
from betavae.pipeline import atomic, dotted, modelfile
from betavae.training import distributed
from betavae.training.state import BestEpoch, Outputs, Progress, Trainer

FORMAT = "betavae-train-state/4"  # 4: the best epoch's value of the selection metric (select.metric)
MODES = ("auto", "never", "require")


class ResumeRefused(BetaVAEError, RuntimeError):
    """resume mode "require", but there is no checkpoint this run may continue from."""


def save(path: Path, trainer: Trainer, progress: Progress) -> None:
    """Write the training state (process 0). Called in every process: the RNG states of all of them
    are gathered first, a collective under torchrun."""
    device = trainer.compute.device
    own = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    rng = distributed.gather(own, trainer.world)
    if not trainer.world.is_main:
        return
    best = progress.best
    atomic.write_torch(path, {
        "format": FORMAT,
        "architecture": ARCHITECTURE,
        "params": trainer.params.training(),
        "code": code_fingerprint(),
        "world_size": trainer.world.size,
        "epoch": progress.epochs_done,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "rng": {"generator": trainer.generator.get_state(), "processes": rng},
        "best": {"epoch": best.epoch, "value": best.value, "weights": best.weights,
                 "latent_kl": best.latent_kl},
        "history": progress.history,
        "snapshots": progress.snapshots,
    })


def restore(trainer: Trainer, path: Path, mode: str, log: Callable[[str], None]) -> Progress:
    """The progress to continue from: the checkpoint's, applied to trainer, or none."""
    if mode not in MODES:
        raise ValueError(f"resume mode must be one of {MODES}, got {mode!r}")
    if mode == "never":
        return Progress()
    # Every process resumes process 0's checkpoint: on several machines, only process 0's has one.
    state, problem = distributed.from_main(_read(path, mode) if trainer.world.is_main else None, trainer.world)
    if state is None and problem is None:
        return Progress()
    try:
        if problem is not None:
            raise modelfile.CheckpointError(problem)
        _check_same_run(state, trainer)
        progress = _check_state(state, trainer)
    except (BetaVAEError, KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        if mode == "require":
            raise ResumeRefused(f"cannot resume: {one_line(error)}") from None
        log(f"not resuming, starting fresh: {one_line(error)}")
        return Progress()
    _apply(state, trainer)
    log(f"resuming from {path} after epoch {progress.epochs_done} of {trainer.params.epochs}")
    return progress


def _read(path: Path, mode: str) -> tuple[dict | None, str | None]:
    """(the state at path, None), (None, why it cannot be read), or (None, None) where there is none to
    resume in mode auto."""
    if mode == "auto" and not path.exists():
        return None, None
    try:
        return modelfile.read_torch_file(path, (FORMAT,)), None
    except BetaVAEError as error:
        return None, one_line(error)


def live_directory(outputs: Outputs) -> Path:
    """Where an unfinished run's DVCLive logs go: beside its checkpoint, models/checkpoint.live/."""
    return outputs.checkpoint.with_suffix(".live")


def discard(outputs: Outputs) -> None:
    """Delete a finished run's training state."""
    atomic.remove(outputs.checkpoint)
    atomic.remove_directory(live_directory(outputs))


def _check_same_run(state: dict, trainer: Trainer) -> None:
    changed = dotted.differing(state["params"], trainer.params.training())
    if changed:
        raise modelfile.CheckpointError(f"checkpoint was written with different params ({', '.join(changed)})")
    # DVC reruns the stage when its code changes; finishing the old code's run would pass off its
    # model as the new code's.
    saved, current = state["code"], code_fingerprint()
    changed = sorted(name for name in saved.keys() | current.keys() if saved.get(name) != current.get(name))
    if changed:
        raise modelfile.CheckpointError(f"checkpoint was written by other code ({', '.join(changed)} changed)")
    if state["world_size"] != trainer.world.size:
        raise modelfile.CheckpointError(f"checkpoint was written by {state['world_size']} processes, "
                                         f"this run has {trainer.world.size}")


def _check_state(state: dict, trainer: Trainer) -> Progress:
    """Load every piece of the state into scratch copies: whatever is wrong with it fails here,
    before anything of the run is touched."""
    scratch = copy.deepcopy(trainer.model)
    scratch.load_state_dict(state["model"])
    optimizer = type(trainer.optimizer)(scratch.parameters())  # hyperparameters come from the state
    optimizer.load_state_dict(state["optimizer"])
    torch.Generator(trainer.generator.device).set_state(state["rng"]["generator"])
    own = state["rng"]["processes"][trainer.world.rank]
    torch.Generator().set_state(own["torch"])
    if trainer.compute.device.type == "cuda":
        torch.Generator(trainer.compute.device).set_state(own["cuda"])
    best = state["best"]
    if best["weights"] is not None:
        copy.deepcopy(trainer.model).load_state_dict(best["weights"])
    epochs_done = int(state["epoch"])
    history = [dict(logged) for logged in state["history"]]
    epochs_in_history = [logged["epoch"] for logged in history]
    if not 0 <= epochs_done <= trainer.params.epochs or epochs_in_history != list(range(1, epochs_done + 1)):
        raise ValueError(f"checkpoint holds {epochs_done} epochs but history for epochs {epochs_in_history}")
    snapshots = {str(name): pixels for name, pixels in state["snapshots"].items()}
    if not all(torch.is_tensor(p) and p.dtype == torch.uint8 and p.ndim == 2 for p in snapshots.values()):
        raise ValueError("checkpoint's snapshots are not uint8 images")
    return Progress(epochs_done=epochs_done, history=history,
                    best=BestEpoch(int(best["epoch"]), float(best["value"]), best["weights"],
                                   [float(value) for value in best["latent_kl"]]),
                    snapshots=snapshots)


def _apply(state: dict, trainer: Trainer) -> None:
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.generator.set_state(state["rng"]["generator"])
    own = state["rng"]["processes"][trainer.world.rank]
    torch.set_rng_state(own["torch"])
    if trainer.compute.device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda"], trainer.compute.device)
