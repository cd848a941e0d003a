"""The training loop: seeded, batched on the device, checkpointed every epoch, resumable.

One epoch = one pass over a fresh seeded permutation of the training images. Each step: gather a
uint8 batch, augment it, forward, β-VAE loss with the annealed KL weight, backward, clip, AdamW step
at the scheduled learning rate. After each epoch: validation (never augmented), metrics to DVCLive,
snapshots when due, and an atomic checkpoint of everything a resumed run needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from betavae import atomic, checkpoint, images, runtime, schedules
from betavae.augment import random_affine
from betavae.data import Split, load_train_val, shuffled_batches, to_float
from betavae.loss import LossTerms, beta_vae_loss, kl_per_image, reconstruction_per_image
from betavae.model import ConvVAE, ModelConfig
from betavae.params import Params

VALIDATION_BATCH = 1000
SNAPSHOT_SAMPLES = 64
SNAPSHOT_RECONSTRUCTIONS = 16
GRID_COLUMNS = 8
RESUME_MODES = ("auto", "never", "require")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ResumeRefused(RuntimeError):
    """--resume require was given but there is no checkpoint this run may continue from."""


@dataclasses.dataclass(frozen=True)
class Outputs:
    model: Path
    checkpoint: Path
    live_dir: Path
    snapshot_dir: Path


@dataclasses.dataclass
class Progress:
    """What survives between epochs besides weights and RNGs."""

    epoch: int = 0  # epochs completed
    best_epoch: int = 0
    best_val_loss: float = math.inf
    best_model: dict | None = None
    history: list[dict] = dataclasses.field(default_factory=list)
    snapshots: dict[str, bytes] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Session:
    params: Params
    run: runtime.Runtime
    model: ConvVAE
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # shuffling and augmentation; reparameterisation and dropout use the global RNG
    train: Split
    val: Split
    fixed_latents: torch.Tensor  # (64, Z): the same prior draws at every snapshot
    forward: Callable  # the model's forward for training steps: the model itself, or compiled
    code: dict[str, str]  # code_fingerprint() at the start: what this run's epochs were trained by

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.params.batch_size


def train(params: Params, data_dir: Path, outputs: Outputs, resume: str = "auto",
          log: Callable[[str], None] = print) -> Progress:
    session = start_session(params, data_dir)
    progress = _resume(session, outputs.checkpoint, resume, log)
    _restore_outputs(progress, outputs)
    live = _open_live(outputs.live_dir, progress.history)
    bar = tqdm(total=params.epochs * session.steps_per_epoch, initial=progress.epoch * session.steps_per_epoch,
               unit="step", dynamic_ncols=True, mininterval=1.0)
    try:
        for epoch in range(progress.epoch + 1, params.epochs + 1):
            record = _train_and_validate(session, epoch, bar)
            _finish_epoch(session, progress, record, outputs, live)
            bar.set_postfix(epoch=epoch, val_loss=f"{record['val/loss']:.2f}", refresh=False)
    finally:
        bar.close()
        live.end()
    _write_model(session, progress, outputs.model)
    return progress


def start_session(params: Params, data_dir: Path) -> Session:
    """Everything a run needs before its first step: seeded RNGs, data on the device, model, optimiser."""
    run = runtime.resolve(params)
    runtime.make_deterministic(params.seed, run.device)
    train_split, val_split = load_train_val(data_dir, params)
    config = ModelConfig(latent_dim=params.z_dim, dropout=params.dropout)
    model = ConvVAE(config).to(run.device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.base_lr, weight_decay=params.weight_decay)
    generator = torch.Generator(run.device).manual_seed(params.seed)
    latents = torch.randn(SNAPSHOT_SAMPLES, params.z_dim, generator=torch.Generator().manual_seed(params.seed))
    forward = torch.compile(model) if run.compile else model
    return Session(params, run, model, optimizer, generator, train_split.to(run.device),
                   val_split.to(run.device), latents.to(run.device), forward, code_fingerprint())


def _train_and_validate(session: Session, epoch: int, bar: tqdm) -> dict:
    started = time.perf_counter()
    train_metrics = _train_epoch(session, epoch, bar)
    val_metrics = evaluate_split(session.model, session.val, session.params.beta, session.run)
    t_end = epoch  # schedules' position after the epoch's last step
    p = session.params
    return {
        "epoch": epoch,
        **{f"train/{k}": v for k, v in train_metrics.items()},
        **{f"val/{k}": v for k, v in val_metrics.items()},
        "lr": schedules.learning_rate(t_end - 1 / session.steps_per_epoch, p.base_lr, p.max_lr,
                                      p.warmup_epochs, p.epochs),
        "kl_weight": schedules.kl_weight(t_end - 1 / session.steps_per_epoch, p.beta, p.kl_anneal_epochs),
        "epoch_seconds": time.perf_counter() - started,
    }


def _train_epoch(session: Session, epoch: int, bar: tqdm) -> dict:
    p, run = session.params, session.run
    session.model.train()
    steps = session.steps_per_epoch
    # Running sums stay on the device: reading them every step would stall a GPU.
    totals = torch.zeros(2, device=run.device)
    first_bad_step = torch.full((), -1, dtype=torch.long, device=run.device)
    for step, batch in enumerate(shuffled_batches(len(session.train), p.batch_size, session.generator)):
        terms = train_step(session, batch, t=epoch - 1 + step / steps)
        totals += torch.stack([terms.recon.detach(), terms.kl.detach()])
        bad = ~torch.isfinite(terms.loss.detach()) & (first_bad_step < 0)
        first_bad_step = torch.where(bad, step, first_bad_step)
        bar.update()
    if first_bad_step.item() >= 0:
        raise TrainingDiverged(f"loss became non-finite at epoch {epoch}, batch {first_bad_step.item() + 1} "
                               f"of {steps}; the checkpoint of epoch {epoch - 1} is kept "
                               "(lower max_lr or grad_clip and rerun)")
    recon, kl = (totals / steps).tolist()
    return {"loss": recon + p.beta * kl, "recon": recon, "kl": kl}


def train_step(session: Session, batch: torch.Tensor, t: float) -> LossTerms:
    """One optimiser step on the training images at index `batch`, t epochs into training."""
    p, run = session.params, session.run
    for group in session.optimizer.param_groups:
        group["lr"] = schedules.learning_rate(t, p.base_lr, p.max_lr, p.warmup_epochs, p.epochs)
    x = random_affine(to_float(session.train.images[batch]), p.augment.rotation,
                      p.augment.translate, session.generator, p.augment.interpolation)
    x = run.prepare(x)
    with run.autocast():
        logits, mu, logvar = session.forward(x)
    terms = beta_vae_loss(logits, x, mu, logvar, schedules.kl_weight(t, p.beta, p.kl_anneal_epochs))
    session.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    torch.nn.utils.clip_grad_norm_(session.model.parameters(), p.grad_clip)
    session.optimizer.step()
    return terms


@torch.no_grad()
def evaluate_split(model: ConvVAE, split: Split, beta: float, run: runtime.Runtime) -> dict:
    """Per-image means over split, one posterior sample per image, no augmentation."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=run.device)
    for start in range(0, len(split), VALIDATION_BATCH):
        x = run.prepare(to_float(split.images[start:start + VALIDATION_BATCH]))
        with run.autocast():
            logits, mu, logvar = model(x)
        recon = reconstruction_per_image(logits.float(), x).sum()
        kl = kl_per_image(mu.float(), logvar.float()).sum()
        totals += torch.stack([recon, kl]).double()
    recon, kl = (totals / len(split)).tolist()
    if not (math.isfinite(recon) and math.isfinite(kl)):
        raise TrainingDiverged(f"validation loss is non-finite (recon {recon}, kl {kl})")
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}


def _finish_epoch(session: Session, progress: Progress, record: dict, outputs: Outputs, live) -> None:
    epoch = record["epoch"]
    progress.epoch = epoch
    progress.history.append(record)
    if record["val/loss"] < progress.best_val_loss:
        progress.best_epoch, progress.best_val_loss = epoch, record["val/loss"]
        progress.best_model = {k: v.detach().clone().cpu() for k, v in session.model.state_dict().items()}
    _log_epoch(live, record, progress)
    if epoch % session.params.snapshot_every == 0 or epoch == session.params.epochs:
        for name, data in _snapshots(session, epoch).items():
            progress.snapshots[name] = data
            atomic.write_bytes(outputs.snapshot_dir / name, data)
    atomic.write_torch(outputs.checkpoint, _train_state(session, progress))


def _snapshots(session: Session, epoch: int) -> dict[str, bytes]:
    session.model.eval()
    x = session.run.prepare(to_float(session.val.images[:SNAPSHOT_RECONSTRUCTIONS]))
    return {
        f"samples_epoch_{epoch:03d}.png": images.sample_grid(session.model, session.fixed_latents, GRID_COLUMNS),
        f"recon_epoch_{epoch:03d}.png": images.reconstruction_grid(session.model, x, GRID_COLUMNS),
    }


def _open_live(live_dir: Path, history: list[dict]):
    from dvclive import Live  # heavy import, and only training needs it

    # Metrics and plots are declared in dvc.yaml by hand; DVC, not DVCLive, owns experiments.
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    best = Progress()
    for record in history:  # a resumed run rewrites the logs of the epochs it skips
        if record["val/loss"] < best.best_val_loss:
            best.best_epoch, best.best_val_loss = record["epoch"], record["val/loss"]
        _log_epoch(live, record, best)
    return live


def _log_epoch(live, record: dict, progress: Progress) -> None:
    live.step = record["epoch"]
    for name, value in record.items():
        if name != "epoch":
            live.log_metric(name, value)
    live.summary["best_epoch"] = progress.best_epoch
    live.summary["best_val_loss"] = progress.best_val_loss
    live.make_summary()


def _write_model(session: Session, progress: Progress, path: Path) -> None:
    record = checkpoint.model_record(progress.best_model, session.model.config,
                                     session.params.to_dict(), progress.best_epoch, progress.best_val_loss)
    atomic.write_torch(path, record)


# Resume ---------------------------------------------------------------------------------------

def _train_state(session: Session, progress: Progress) -> dict:
    cuda_rng = torch.cuda.get_rng_state_all() if session.run.device.type == "cuda" else []
    return {
        "format": checkpoint.TRAIN_STATE_FORMAT,
        "architecture": checkpoint.ARCHITECTURE,
        "params": session.params.to_dict(),
        "code": session.code,
        "epoch": progress.epoch,
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng, "generator": session.generator.get_state()},
        "best": {"epoch": progress.best_epoch, "val_loss": progress.best_val_loss, "model": progress.best_model},
        "history": progress.history,
        "snapshots": progress.snapshots,
    }


def _resume(session: Session, path: Path, mode: str, log: Callable[[str], None]) -> Progress:
    if mode not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {mode!r}")
    if mode == "never" or (mode == "auto" and not path.exists()):
        return Progress()
    try:
        state = checkpoint.read(path, checkpoint.TRAIN_STATE_FORMAT)
        _check_same_run(state, session)
        progress = _load_state(session, state)
    except (checkpoint.CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())
        if mode == "require":
            raise ResumeRefused(f"cannot resume: {reason}") from None
        log(f"not resuming, starting fresh: {reason}")
        return Progress()
    log(f"resuming from {path} after epoch {progress.epoch} of {session.params.epochs}")
    return progress


def _check_same_run(state: dict, session: Session) -> None:
    saved, current = state["params"], session.params.to_dict()
    # eval.* does not touch training; everything else does.
    changed = sorted(k for k in set(saved) | set(current)
                     if k != "eval" and saved.get(k) != current.get(k))
    if changed:
        raise checkpoint.CheckpointError(f"checkpoint was written with different params ({', '.join(changed)})")
    # DVC reruns the stage when its code changes but keeps the persistent checkpoint; resuming it
    # would finish, or pass off unchanged, a model that the old code trained.
    saved, current = state["code"], session.code
    changed = sorted(name for name in saved.keys() & current.keys() if saved[name] != current[name])
    if changed:
        raise checkpoint.CheckpointError(f"checkpoint was written by other code ({', '.join(changed)} changed)")


def code_fingerprint() -> dict[str, str]:
    """{"betavae/train.py": sha256 of its source, ...} for each module of this package loaded now.

    Compared on the modules both sides loaded: a module the training code newly imports shows
    up as a change in the module that imports it."""
    root = Path(__file__).resolve().parents[1]
    fingerprint = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and (name == "betavae" or name.startswith("betavae.")):
            source = Path(path).resolve()
            fingerprint[source.relative_to(root).as_posix()] = hashlib.sha256(source.read_bytes()).hexdigest()
    return dict(sorted(fingerprint.items()))


def _load_state(session: Session, state: dict) -> Progress:
    session.model.load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if session.run.device.type == "cuda" and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    session.generator.set_state(state["rng"]["generator"])
    best = state["best"]
    return Progress(epoch=int(state["epoch"]), best_epoch=int(best["epoch"]),
                    best_val_loss=float(best["val_loss"]), best_model=best["model"],
                    history=list(state["history"]), snapshots=dict(state["snapshots"]))


def _restore_outputs(progress: Progress, outputs: Outputs) -> None:
    """DVC deletes a stage's outputs before rerunning it; rewrite those the resumed epochs made,
    and drop grids a different earlier run left (when the script is run by hand)."""
    if outputs.snapshot_dir.is_dir():
        for stale in outputs.snapshot_dir.glob("*_epoch_*.png"):
            if stale.name not in progress.snapshots:
                stale.unlink()
    for name, data in progress.snapshots.items():
        atomic.write_bytes(outputs.snapshot_dir / name, data)
