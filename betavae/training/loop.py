"""The training loop: seeded, batched on the device, checkpointed every epoch, resumable.

One epoch = one pass over a fresh seeded permutation of the training images. Each step: gather a
uint8 batch, augment it, forward, β-VAE loss with the annealed KL weight, backward, clip, AdamW step
at the scheduled learning rate. After each epoch: validation (never augmented), metrics and
snapshots to DVCLive, and the training state for resuming (betavae/training/resume.py). Under torchrun the
same loop runs in every process on its share of each batch (betavae/training/distributed.py).

DVCLive writes to a directory beside the checkpoint while the run is unfinished; the finished run's
logs replace the committed ones at the end, with model.pt, so a run that stops early leaves every
committed output as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from betavae.core import grids, schedules
from betavae.core.augment import random_affine
from betavae.core.data import (
    INFERENCE_BATCH,
    Split,
    load_train_val,
    ordered_batches,
    sample_binary,
    shuffled_batches,
    to_float,
)
from betavae.core.footprint import training_memory_bytes
from betavae.core.model import ConvVAE, ModelConfig
from betavae.core.objective import LossTerms, beta_vae_loss, kl_per_dimension, reconstruction_per_image
from betavae.errors import BetaVAEError
from betavae.pipeline import atomic, modelfile
from betavae.pipeline.params import Params
from betavae.speed import runtime
from betavae.training import distributed, resume
from betavae.training.state import BestEpoch, Outputs, Progress, Trainer

SNAPSHOT_RECONSTRUCTIONS = 16  # validation images shown with their reconstructions in each snapshot


class TrainingDiverged(BetaVAEError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(params: Params, data_dir: Path, outputs: Outputs, resume_mode: str = "auto",
          log: Callable[[str], None] = print, between_epochs: Callable[[], None] = lambda: None) -> Progress:
    """Train to params.epochs, resuming a matching checkpoint; write model.pt and the DVCLive logs.
    between_epochs runs in process 0 after each epoch's checkpoint (the stage checks params.yaml)."""
    world = distributed.world_from_environment()
    trainer = prepare(params, data_dir, world)
    try:
        progress = resume.restore(trainer, outputs.checkpoint, resume_mode, log if world.is_main else _quiet)
        with distributed.peers_watched(world):
            _run_epochs(trainer, progress, outputs, between_epochs)
            distributed.check_in_sync(trainer.model, world)
        if world.is_main:
            _write_model(trainer, progress, outputs.model)
            atomic.replace_directory(outputs.live_dir, resume.live_directory(outputs))
            resume.discard(outputs)  # finished: a later run starts afresh (resume.py)
    finally:
        distributed.leave(world)
    return progress


def prepare(params: Params, data_dir: Path, world: distributed.World) -> Trainer:
    """Everything a run needs before its first step: seeded RNGs, data on the device, model, optimiser."""
    if params.world_size not in (None, world.size):
        raise distributed.OutOfSync(f"launcher {params.launcher!r} means {params.world_size} processes, "
                                    f"but {world.size} are running")
    if params.batch_size % world.size:  # validation checks this where the launcher names the count
        raise distributed.OutOfSync(f"batch_size {params.batch_size} is not divisible by the {world.size} "
                                    "processes running")
    compute = runtime.resolve(params.device, params.precision, params.channels_last, params.compile,
                              world.local_rank)
    config = ModelConfig(latent_dim=params.z_dim, dropout=params.dropout)
    runtime.check_memory(training_memory_bytes(config, params.batch_size // world.size),
                         f"training with z_dim {params.z_dim} and batch_size {params.batch_size}", compute.device)
    distributed.join(world, compute.device)
    runtime.make_deterministic(distributed.rank_seed(params.seed, world.rank), compute.device)
    train_split, val_split = load_train_val(data_dir, params.seed, params.data.limit, params.data.val_size,
                                           params.data.binarize)
    model = ConvVAE(config)
    model = compute.place(distributed.prepare_model(model, world, compute.device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.base_lr, weight_decay=params.weight_decay)
    generator = torch.Generator(compute.device).manual_seed(params.seed)
    step_forward = distributed.wrap(model, world, compute.device)
    if compute.compile:
        step_forward = torch.compile(step_forward)
    return Trainer(params, compute, world, model, step_forward, optimizer, generator,
                   train_split.to(compute.device), val_split.to(compute.device))


def _run_epochs(trainer: Trainer, progress: Progress, outputs: Outputs, between_epochs: Callable[[], None]) -> None:
    params, steps = trainer.params, trainer.steps_per_epoch
    live = _open_live(resume.live_directory(outputs), progress) if trainer.world.is_main else None
    bar = tqdm(total=params.epochs * steps, initial=progress.epochs_done * steps, unit="step",
               dynamic_ncols=True, mininterval=1.0, disable=not trainer.world.is_main)
    try:
        for epoch in range(progress.epochs_done + 1, params.epochs + 1):
            started = time.perf_counter()
            train_metrics = train_epoch(trainer, epoch, bar)
            if trainer.world.is_main:
                record, latent_kl = _record(trainer, epoch, train_metrics, started)
                _finish_epoch(trainer, progress, record, latent_kl, live)
            # After validation drew its noise, so that every process's RNG state is the epoch's end.
            resume.save(outputs.checkpoint, trainer, progress)
            if trainer.world.is_main:
                between_epochs()
                bar.set_postfix(epoch=epoch, val_loss=f"{record['val/loss']:.2f}", refresh=False)
    finally:
        bar.close()
        if live is not None:
            live.end()


def train_epoch(trainer: Trainer, epoch: int, bar: tqdm | None = None) -> dict:
    """One pass over the training images; returns the epoch's mean train loss, recon and KL over
    all processes. Nothing is read back to the host until the epoch ends."""
    params, compute, world = trainer.params, trainer.compute, trainer.world
    trainer.model.train()
    steps = trainer.steps_per_epoch
    totals = torch.zeros(2, device=compute.device)  # recon, KL summed over steps
    first_bad_step = torch.full((), steps, dtype=torch.long, device=compute.device)  # steps: none
    for step, batch in enumerate(shuffled_batches(len(trainer.train), params.batch_size, trainer.generator)):
        terms = train_step(trainer, batch, t=epoch - 1 + step / steps)
        totals += torch.stack([terms.recon.detach(), terms.kl.detach()])
        bad = ~torch.isfinite(terms.loss.detach())
        first_bad_step = torch.minimum(first_bad_step, torch.where(bad, step, steps))
        if bar is not None:
            bar.update()
    distributed.sum_across(totals, world)
    distributed.min_across(first_bad_step, world)
    if first_bad_step.item() < steps:
        raise TrainingDiverged(f"loss became non-finite at epoch {epoch}, batch {first_bad_step.item() + 1} "
                               f"of {steps}; the checkpoint of epoch {epoch - 1} is kept "
                               "(lower max_lr or grad_clip and rerun)")
    recon, kl = (totals / (steps * world.size)).tolist()
    return {"loss": recon + params.beta * kl, "recon": recon, "kl": kl}


def train_step(trainer: Trainer, batch: torch.Tensor, t: float) -> LossTerms:
    """One optimiser step on this process's share of the training images at index `batch`,
    t epochs into training."""
    params, compute = trainer.params, trainer.compute
    for group in trainer.optimizer.param_groups:
        group["lr"] = schedules.learning_rate(t, params.base_lr, params.max_lr, params.warmup_epochs, params.epochs)
    share = trainer.world.share(len(batch))
    x = random_affine(to_float(trainer.train.images[batch[share]]), params.augment.rotation,
                      params.augment.translate, trainer.generator, params.augment.interpolation,
                      batch_size=len(batch), share=share)
    if params.data.binarize == "dynamic":
        x = sample_binary(x, trainer.generator, batch_size=len(batch), share=share)
    x = compute.to_layout(x)
    with compute.autocast():
        logits, mu, logvar = trainer.step_forward(x)
    terms = beta_vae_loss(logits, x, mu, logvar, schedules.kl_weight(t, params.beta, params.kl_anneal_epochs))
    trainer.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), params.grad_clip)
    trainer.optimizer.step()
    return terms


@torch.no_grad()
def validate(model: ConvVAE, split: Split, beta: float, compute: runtime.Compute) -> tuple[dict, list[float]]:
    """Per-image mean loss, recon and KL over split (one posterior sample per image, no
    augmentation), and the mean KL of each latent dimension."""
    model.eval()
    recon_sum = torch.zeros((), dtype=torch.float64, device=compute.device)
    kl_sums = torch.zeros(model.config.latent_dim, dtype=torch.float64, device=compute.device)
    for x, _ in ordered_batches(split, INFERENCE_BATCH):
        x = compute.to_layout(x)
        with compute.autocast():
            logits, mu, logvar = model(x)
        recon_sum += reconstruction_per_image(logits.float(), x).sum().double()
        kl_sums += kl_per_dimension(mu.float(), logvar.float()).sum(0).double()
    latent_kl = (kl_sums / len(split)).tolist()
    recon, kl = recon_sum.item() / len(split), sum(latent_kl)
    if not (math.isfinite(recon) and math.isfinite(kl)):
        raise TrainingDiverged(f"validation loss is non-finite (recon {recon}, kl {kl})")
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}, latent_kl


def _record(trainer: Trainer, epoch: int, train_metrics: dict, started: float) -> tuple[dict, list[float]]:
    params = trainer.params
    val_metrics, latent_kl = validate(trainer.model, trainer.val, params.beta, trainer.compute)
    last_step = epoch - 1 / trainer.steps_per_epoch  # the schedules' position at the epoch's last step
    record = {
        "epoch": epoch,
        **{f"train/{key}": value for key, value in train_metrics.items()},
        **{f"val/{key}": value for key, value in val_metrics.items()},
        "lr": schedules.learning_rate(last_step, params.base_lr, params.max_lr, params.warmup_epochs, params.epochs),
        "kl_weight": schedules.kl_weight(last_step, params.beta, params.kl_anneal_epochs),
        "epoch_seconds": time.perf_counter() - started,
    }
    return record, latent_kl


def _finish_epoch(trainer: Trainer, progress: Progress, record: dict, latent_kl: list[float], live) -> None:
    epoch = record["epoch"]
    progress.epochs_done = epoch
    progress.history.append(record)
    if record["val/loss"] < progress.best.val_loss:
        weights = {name: tensor.detach().clone().cpu() for name, tensor in trainer.model.state_dict().items()}
        progress.best = BestEpoch(epoch, record["val/loss"], weights, latent_kl)
    if epoch % trainer.params.snapshot_every == 0 or epoch == trainer.params.epochs:
        progress.snapshots.update(_snapshots(trainer, epoch))
    _log(live, progress, upto=epoch)


@torch.no_grad()
def _snapshots(trainer: Trainer, epoch: int) -> dict[str, torch.Tensor]:
    """DVCLive image name -> uint8 mosaic; `<series>/<epoch>.png` names make one series per kind,
    which DVC's VS Code extension shows with an epoch slider."""
    model = trainer.model.eval()
    latents = grids.prior_latents(trainer.params.seed, trainer.params.z_dim).to(trainer.compute.device)
    x = trainer.compute.to_layout(to_float(trainer.val.images[:SNAPSHOT_RECONSTRUCTIONS]))
    return {f"samples/{epoch}.png": grids.mosaic(model.pixel_probabilities(latents)),
            f"reconstructions/{epoch}.png": grids.mosaic(grids.reconstructions(model, x))}


def _open_live(live_dir: Path, progress: Progress):
    from dvclive import Live  # heavy import, and only training needs it

    # Metrics and plots are declared in dvc.yaml by hand; DVC, not DVCLive, owns experiments.
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    for record in progress.history:  # a resumed run rewrites the logs of the epochs it skips
        _log(live, progress, upto=record["epoch"])
    return live


def _log(live, progress: Progress, upto: int) -> None:
    """Log epoch `upto`'s metrics and snapshots, with the best epoch as of then."""
    record = progress.history[upto - 1]
    best = min(progress.history[:upto], key=lambda r: r["val/loss"])
    live.step = upto
    for name, value in record.items():
        if name != "epoch":
            live.log_metric(name, value)
    for name, pixels in progress.snapshots.items():
        if int(Path(name).stem) == upto:
            live.log_image(name, pixels.numpy())
    live.summary["best_epoch"] = best["epoch"]
    live.summary["best_val_loss"] = best["val/loss"]
    live.make_summary()


def _write_model(trainer: Trainer, progress: Progress, path: Path) -> None:
    best = progress.best
    record = modelfile.model_record(best.weights, trainer.model.config, trainer.params.training(),
                                     best.epoch, best.val_loss, best.latent_kl)
    atomic.write_torch(path, record)


def _quiet(_: str) -> None:
    pass
