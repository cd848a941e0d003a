"""The training loop: seeded, batched on the device, checkpointed every epoch, resumable.

One epoch = one pass over a fresh seeded permutation of the training images, a training step
(betavae/training/step.py) per batch. After each epoch: validation (never augmented), metrics and
snapshots to DVCLive, and the training state for resuming (betavae/training/resume.py). Under
torchrun the same loop runs in every process on its share of each batch
(betavae/training/distributed.py).

The epoch models/model.pt keeps is the one with the best validation metric, `select.metric`: the
β-weighted loss with one posterior sample per image (the default), or the importance-weighted NLL
with `select.samples` samples, the bound the literature reports. With `select.patience` > 0 the run
stops once that many epochs pass without a better one (early stopping); a resumed run stops where
the unbroken one would have, as the history it resumes holds the best epoch.

DVCLive writes to a directory beside the checkpoint while the run is unfinished; the finished run's
logs replace the committed ones at the end, together with model.pt, so a run that stops early
leaves every committed output as it was.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from betavae.compat.code_dependencies import code_fingerprint
from betavae.core import grids, metrics, schedules
from betavae.core.data import INFERENCE_BATCH, Split, load_train_val, ordered_batches, to_float
from betavae.core.footprint import training_memory_bytes
from betavae.core.model import ConvVAE, ModelConfig
from betavae.core.objective import beta_weighted, kl_per_dimension, reconstruction_per_image
from betavae.errors import BetaVAEError, os_reason
from betavae.pipeline import atomic, modelfile
from betavae.pipeline.params import Params
from betavae.speed import runtime
from betavae.training import distributed, resume
from betavae.training.state import BestEpoch, Outputs, Progress, Trainer
from betavae.training.step import Step

SNAPSHOT_RECONSTRUCTIONS = 16  # validation images shown with their reconstructions in each snapshot


class TrainingDiverged(BetaVAEError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(params: Params, data_dir: Path, outputs: Outputs, resume_mode: str = "auto",
          log: Callable[[str], None] = print, between_epochs: Callable[[], None] = lambda: None) -> Progress:
    """Train to params.epochs (or an early stop), resuming a matching checkpoint; write model.pt and
    the DVCLive logs. between_epochs runs in process 0 after each epoch's checkpoint (the stage checks
    params.yaml)."""
    world = distributed.world_from_environment()
    trainer = prepare(params, data_dir, world)
    quiet_unless_main = log if world.is_main else _quiet
    try:
        with distributed.peers_watched(world):
            progress = resume.restore(trainer, outputs.checkpoint, resume_mode, quiet_unless_main)
            step = make_step(trainer, quiet_unless_main)
            _run_epochs(trainer, step, progress, outputs, between_epochs, quiet_unless_main)
            distributed.check_in_sync(trainer.model, world)
            model_bytes = _model_file(trainer, step, progress).to_bytes() if world.is_main else None
            if world.is_main:
                with atomic.Together() as finished:
                    finished.bytes(outputs.model, model_bytes)
                    finished.directory(outputs.live_dir, resume.live_directory(outputs))
            _write_on_every_machine(outputs, model_bytes, world)
        if world.local_rank == 0:
            resume.discard(outputs)  # finished: a later run starts afresh (resume.py)
    finally:
        distributed.leave(world)
    return progress


def _write_on_every_machine(outputs: Outputs, model_bytes: bytes | None, world: distributed.World) -> None:
    """Process 0's model and logs, written by the first process of every other machine too, so that
    each machine's DVC run has its outputs; a machine that shares process 0's disk already has them."""
    if world.size == 1:
        return
    files = {path.relative_to(outputs.live_dir).as_posix(): path.read_bytes()
             for path in sorted(outputs.live_dir.rglob("*")) if path.is_file()} if world.is_main else None
    model_bytes, files = distributed.from_main((model_bytes, files), world)  # after process 0 has written
    if world.is_main or world.local_rank != 0:
        return
    if outputs.model.is_file() and outputs.model.read_bytes() == model_bytes:
        return
    staged = resume.live_directory(outputs)
    atomic.remove_directory(staged)
    for name, data in files.items():
        atomic.write_bytes(staged / name, data)
    with atomic.Together() as finished:
        finished.bytes(outputs.model, model_bytes)
        finished.directory(outputs.live_dir, staged)


def make_step(trainer: Trainer, log: Callable[[str], None] = print) -> Step:
    """The run's training step, captured as a CUDA graph where it can be (one CUDA device, one process,
    cuda_graphs on, compile off), else eager. A capture that fails says why and runs eagerly."""
    params, compute = trainer.params, trainer.compute
    capture = compute.device.type == "cuda" and trainer.world.size == 1 and params.cuda_graphs and not params.compile
    if not capture:
        return Step(trainer, capture=False)
    try:
        return Step(trainer, capture=True)
    except Exception as error:  # a driver or library that refuses to capture: the same step, eagerly
        log(f"warning: the training step could not be captured as a CUDA graph ({str(error).splitlines()[0][:200]});"
            " it runs eagerly")
        torch.cuda.synchronize(compute.device)
        return Step(trainer, capture=False)


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
    runtime.check_memory(training_memory_bytes(config, params.batch_size // world.size, params.train_samples),
                         f"training with z_dim {params.z_dim}, batch_size {params.batch_size} and train_samples "
                         f"{params.train_samples}", compute.device)
    distributed.join(world, compute.device)
    distributed.check_same_run(params.training(), code_fingerprint(), world)
    runtime.make_deterministic(distributed.rank_seed(params.seed, world.rank), compute.device)
    train_split, val_split = load_train_val(data_dir, params.seed, params.data.limit, params.data.val_size,
                                           params.data.binarize)
    model = ConvVAE(config)
    model = compute.place(distributed.prepare_model(model, world, compute.device))
    # The learning rate is set every step by the training step (betavae/training/step.py), from the schedule.
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.base_lr, weight_decay=params.weight_decay,
                                  capturable=compute.device.type == "cuda")
    generator = torch.Generator(compute.device).manual_seed(params.seed)
    step_forward = distributed.wrap(model, world, compute.device)
    if compute.compile:
        step_forward = runtime.compiled(step_forward)
    return Trainer(params, compute, world, model, step_forward, optimizer, generator,
                   train_split.to(compute.device), val_split.to(compute.device))


def _run_epochs(trainer: Trainer, step: Step, progress: Progress, outputs: Outputs,
                between_epochs: Callable[[], None], log: Callable[[str], None]) -> None:
    params, steps = trainer.params, trainer.steps_per_epoch
    live = (TrainingLog(resume.live_directory(outputs), progress, params.select.metric)
            if trainer.world.is_main else None)
    bar = tqdm(total=params.epochs * steps, initial=progress.epochs_done * steps, unit="step",
               dynamic_ncols=True, mininterval=1.0, disable=not trainer.world.is_main)
    try:
        for epoch in range(progress.epochs_done + 1, params.epochs + 1):
            if stopping_early(params, progress):
                break
            started = time.perf_counter()
            train_metrics = train_epoch(trainer, step, epoch, bar)
            if trainer.world.is_main:
                epoch_log, latent_kl = _epoch_log(trainer, epoch, train_metrics, started)
                _finish_epoch(trainer, progress, epoch_log, latent_kl, live)
            # After validation drew its noise, so that every process's RNG state is the epoch's end.
            resume.save(outputs.checkpoint, trainer, progress)
            if trainer.world.is_main:
                between_epochs()
                bar.set_postfix(epoch=epoch, val=f"{epoch_log[f'val/{params.select.metric}']:.2f}", refresh=False)
    finally:
        bar.close()
    if live is not None:  # not after a failure: each epoch's log is complete when it is written
        live.end()
    if stopping_early(params, progress) and progress.epochs_done < params.epochs:
        log(f"stopped early after epoch {progress.epochs_done}: no better validation {params.select.metric} "
            f"in the {params.select.patience} epochs since epoch {progress.best.epoch}")


def stopping_early(params: Params, progress: Progress) -> bool:
    """Whether select.patience epochs have passed since the best one (never when patience is 0)."""
    patience = params.select.patience
    return patience > 0 and progress.epochs_done - progress.best.epoch >= patience


def train_epoch(trainer: Trainer, step: Step, epoch: int, bar: tqdm | None = None) -> dict:
    """One pass over the training images; returns the epoch's mean train loss, recon and KL over
    all processes. Nothing is read back to the host until the epoch ends."""
    params, world = trainer.params, trainer.world
    trainer.model.train()
    step.start_epoch(epoch)
    for _ in range(step.steps):
        step()
        if bar is not None:
            bar.update()
    totals, first_bad = step.epoch_sums()
    distributed.sum_across(totals, world)
    distributed.min_across(first_bad, world)
    first_bad_step = int(first_bad.item())
    if first_bad_step < step.steps:
        raise TrainingDiverged(f"loss became non-finite at epoch {epoch}, batch {first_bad_step + 1} "
                               f"of {step.steps}; the checkpoint of epoch {epoch - 1} is kept "
                               "(lower max_lr or grad_clip and rerun)")
    recon, kl = (totals / (step.steps * world.size)).tolist()
    return {"loss": beta_weighted(recon, kl, params.beta), "recon": recon, "kl": kl}


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
            logits, mu, logvar, _ = model(x)
        recon_sum += reconstruction_per_image(logits.float(), x).sum().double()
        kl_sums += kl_per_dimension(mu.float(), logvar.float()).sum(0).double()
    latent_kl = (kl_sums / len(split)).tolist()
    recon, kl = recon_sum.item() / len(split), sum(latent_kl)
    if not (math.isfinite(recon) and math.isfinite(kl)):
        raise TrainingDiverged(f"validation loss is non-finite (recon {recon}, kl {kl})")
    return {"loss": beta_weighted(recon, kl, beta), "recon": recon, "kl": kl}, latent_kl


def validation_nll(trainer: Trainer, epoch: int) -> float:
    """The importance-weighted NLL of the validation images with select.samples samples each, from
    noise that depends on the seed and the epoch alone (the run's own random streams are untouched)."""
    params, compute = trainer.params, trainer.compute
    generator = torch.Generator(compute.device).manual_seed((params.seed + epoch) % 2**63)
    found = metrics.per_image(trainer.model, trainer.val, params.select.samples, compute, generator)
    nll = -found.log_likelihood.mean().item()
    if not math.isfinite(nll):
        raise TrainingDiverged(f"validation NLL is non-finite ({nll})")
    return nll


def _epoch_log(trainer: Trainer, epoch: int, train_metrics: dict, started: float) -> tuple[dict, list[float]]:
    params = trainer.params
    val_metrics, latent_kl = validate(trainer.model, trainer.val, params.beta, trainer.compute)
    if params.select.metric == "nll":
        val_metrics["nll"] = validation_nll(trainer, epoch)
    last_step = schedules.last_step(epoch, trainer.steps_per_epoch)
    epoch_log = {
        "epoch": epoch,
        **{f"train/{key}": value for key, value in train_metrics.items()},
        **{f"val/{key}": value for key, value in val_metrics.items()},
        "lr": schedules.learning_rate(last_step, params.base_lr, params.max_lr, params.warmup_epochs, params.epochs),
        "kl_weight": schedules.kl_weight(last_step, params.beta, params.kl_anneal_epochs),
        "epoch_seconds": time.perf_counter() - started,
    }
    return epoch_log, latent_kl


def _finish_epoch(trainer: Trainer, progress: Progress, epoch_log: dict, latent_kl: list[float],
                  live: TrainingLog) -> None:
    epoch, metric = epoch_log["epoch"], trainer.params.select.metric
    progress.epochs_done = epoch
    progress.history.append(epoch_log)
    if epoch_log[f"val/{metric}"] < progress.best.value:
        weights = {name: tensor.detach().clone().cpu() for name, tensor in trainer.model.state_dict().items()}
        progress.best = BestEpoch(epoch, epoch_log[f"val/{metric}"], weights, latent_kl)
    last = epoch == trainer.params.epochs or stopping_early(trainer.params, progress)
    if epoch % trainer.params.snapshot_every == 0 or last:
        progress.snapshots.update(_snapshots(trainer, epoch))
    live.write(progress, upto=epoch)


@torch.no_grad()
def _snapshots(trainer: Trainer, epoch: int) -> dict[str, torch.Tensor]:
    """DVCLive image name -> uint8 mosaic; `<series>/<epoch>.png` names make one series per kind,
    which DVC's VS Code extension shows with an epoch slider."""
    model = trainer.model.eval()
    latents = grids.prior_latents(trainer.params.seed, model.config.latent_dim).to(trainer.compute.device)
    x = trainer.compute.to_layout(to_float(trainer.val.images[:SNAPSHOT_RECONSTRUCTIONS]))
    return {f"samples/{epoch}.png": grids.mosaic(model.pixel_probabilities(latents)),
            f"reconstructions/{epoch}.png": grids.mosaic(grids.reconstructions(model, x))}


class TrainingLog:
    """The unfinished run's DVCLive log, beside the checkpoint: every write DVCLive makes is made through
    here, and one that fails (a full disk, a quota, the file size limit) is an OutputError naming the
    log, never a traceback from inside DVCLive. The committed model and logs are untouched: they are
    replaced only when the run finishes (`train`), and a rerun resumes after the last epoch saved."""

    def __init__(self, directory: Path, progress: Progress, metric: str):
        self.directory, self.metric = directory, metric
        with self._writing():
            from dvclive import Live  # heavy import, and only training needs it

            # Metrics and plots are declared in dvc.yaml; DVC, not DVCLive, owns experiments.
            self.live = Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)
            for epoch_log in progress.history:  # a resumed run rewrites the logs of the epochs it skips
                _log(self.live, progress, metric, upto=epoch_log["epoch"])

    def write(self, progress: Progress, upto: int) -> None:
        with self._writing():
            _log(self.live, progress, self.metric, upto)

    def end(self) -> None:
        with self._writing():
            self.live.end()

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as error:
            raise atomic.OutputError(f"cannot write the training log in {self.directory}: {os_reason(error)}; the "
                                     "committed model and logs were left as they were") from None


def _log(live, progress: Progress, metric: str, upto: int) -> None:
    """Log epoch `upto`'s metrics and snapshots, with the best epoch as of then."""
    epoch_log = progress.history[upto - 1]
    best = min(progress.history[:upto], key=lambda logged: logged[f"val/{metric}"])
    live.step = upto
    for name, value in epoch_log.items():
        if name != "epoch":
            live.log_metric(name, value)
    for name, pixels in progress.snapshots.items():
        if int(Path(name).stem) == upto:
            live.log_image(name, pixels.numpy())
    live.summary["best_epoch"] = best["epoch"]
    live.summary[f"best_val_{metric}"] = best[f"val/{metric}"]
    live.make_summary()


def _model_file(trainer: Trainer, step: Step, progress: Progress) -> modelfile.ModelFile:
    best, compute = progress.best, trainer.compute
    provenance = modelfile.Provenance(torch=str(torch.__version__), device=compute.device.type,
                                      precision="fp32" if compute.autocast_dtype is None else "bf16",
                                      processes=trainer.world.size, step="cuda-graph" if step.captured else "eager",
                                      code=code_fingerprint())
    return modelfile.ModelFile(trainer.model.config, trainer.params, best.epoch,
                               modelfile.Selection(trainer.params.select.metric, best.value), tuple(best.latent_kl),
                               provenance, best.weights)


def _quiet(_: str) -> None:
    pass
