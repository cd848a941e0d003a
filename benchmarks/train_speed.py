"""Training throughput: the project's loop against the conventional one and against the arithmetic floor.

    python benchmarks/train_speed.py            # a few minutes
    python benchmarks/train_speed.py --quick    # under a minute

In one process, same model, batch size, optimiser, loss and augmentation settings:
  project       the train stage's own step (betavae.train.train_step) on device-resident uint8 data
  conventional  a torch Dataset augmenting one image at a time, a shuffling DataLoader with
                num_workers = CPU count, default memory format, default (non-deterministic) settings
  floor         forward + backward + optimiser step on one batch already in memory
plus the evaluate stage's importance-weighted NLL throughput at the default eval.iw_samples.
Trials of the three loops are interleaved and medians reported, since a shared VM's speed drifts.
The stages keep freed memory in the process (betavae.runtime.retain_freed_memory); the setting is
process-wide, so all three loops run with it here (which flatters the conventional loop), and
--default-allocator measures them all without it.
Writes reports/bench/train_speed.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from betavae import atomic, evaluate, idx, runtime, schedules
from betavae import train as training
from betavae.augment import random_affine
from betavae.data import load_test, shuffled_batches, to_float
from betavae.loss import beta_vae_loss
from betavae.model import ConvVAE, ModelConfig
from betavae.params import load_params

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter trials (under a minute)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "mnist",
                        help="MNIST IDX directory; synthetic images of the same size if absent")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench" / "train_speed.json")
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc malloc's defaults instead of the stages' setting")
    args = parser.parse_args()
    retained = False if args.default_allocator else runtime.retain_freed_memory()
    trials, steps = (3, 8) if args.quick else (5, 30)

    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data if (args.data / "train-images-idx3-ubyte").exists() else _synthetic_mnist(Path(scratch))
        session = training.start_session(params, data_dir)
        conventional = Conventional(session, params)
        floor = Floor(session, params)
        project = Project(session)
        samples = {"project": [], "conventional": [], "floor": []}
        for trial in range(trials):
            for name, loop in (("project", project), ("conventional", conventional), ("floor", floor)):
                samples[name].append(loop.images_per_second(steps))
            print(f"trial {trial + 1}/{trials}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in samples.items()),
                  flush=True)
        conventional.close()
        nll = _nll_throughput(session, params, data_dir, images=256 if args.quick else 1024)
    report = _report(samples, floor.gflop_per_image, nll, params, data_dir == args.data, args.quick, retained)
    atomic.write_json(args.out, report)
    _print(report)
    print(f"written to {args.out}")


class Project:
    """The train stage's step, as the stage runs it: batches from the seeded per-epoch permutation."""

    def __init__(self, session: training.Session):
        self.session = session
        self.batches: list[torch.Tensor] = []

    def images_per_second(self, steps: int) -> float:
        session = self.session
        session.model.train()
        def step(i: int) -> None:
            if not self.batches:
                self.batches = shuffled_batches(len(session.train), session.params.batch_size, session.generator)
            training.train_step(session, self.batches.pop(), t=1.0 + i / 1000)
        with _deterministic(True):
            return _time(step, steps, session.params.batch_size, session.run.device)


class AugmentingDataset(Dataset):
    """The usual way: one image at a time, augmented with torch ops inside __getitem__."""

    def __init__(self, images: torch.Tensor, rotation: float, translate: float, interpolation: str):
        self.images, self.rotation, self.translate = images, rotation, translate
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[index].float().div(255).view(1, 1, 28, 28)
        return random_affine(x, self.rotation, self.translate, torch.default_generator, self.interpolation)[0]


class Conventional:
    def __init__(self, session: training.Session, params):
        self.params, self.device = params, session.run.device
        self.model = ConvVAE(ModelConfig(params.z_dim, params.dropout)).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=params.base_lr,
                                           weight_decay=params.weight_decay)
        dataset = AugmentingDataset(session.train.images.cpu(), params.augment.rotation,
                                    params.augment.translate, params.augment.interpolation)
        workers = os.cpu_count() or 1
        self.loader = DataLoader(dataset, batch_size=params.batch_size, shuffle=True, drop_last=True,
                                 num_workers=workers, persistent_workers=True,
                                 pin_memory=self.device.type == "cuda")
        self.iterator = iter(self.loader)

    def _next(self) -> torch.Tensor:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def images_per_second(self, steps: int) -> float:
        p, model = self.params, self.model
        model.train()
        def step(i: int) -> None:
            t = 1.0 + i / 1000
            for group in self.optimizer.param_groups:
                group["lr"] = schedules.learning_rate(t, p.base_lr, p.max_lr, p.warmup_epochs, p.epochs)
            x = self._next().to(self.device, non_blocking=True)
            logits, mu, logvar = model(x)
            loss = beta_vae_loss(logits, x, mu, logvar, schedules.kl_weight(t, p.beta, p.kl_anneal_epochs)).loss
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            self.optimizer.step()
        with _deterministic(False):
            return _time(step, steps, p.batch_size, self.device)

    def close(self) -> None:
        del self.iterator, self.loader


class Floor:
    """The arithmetic alone: one batch, already augmented and in memory, the project's fastest settings."""

    def __init__(self, session: training.Session, params):
        self.params, self.run = params, session.run
        self.model = ConvVAE(ModelConfig(params.z_dim, params.dropout)).to(self.run.device)
        if self.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=params.base_lr,
                                           weight_decay=params.weight_decay)
        x = to_float(session.train.images[: params.batch_size])
        self.x = self.run.prepare(random_affine(x, params.augment.rotation, params.augment.translate,
                                                torch.Generator(self.run.device).manual_seed(0),
                                                params.augment.interpolation))
        counter = FlopCounterMode(display=False)
        with counter:
            self._step()
        self.gflop_per_image = counter.get_total_flops() / params.batch_size / 1e9

    def _step(self) -> None:
        with self.run.autocast():
            logits, mu, logvar = self.model(self.x)
        loss = beta_vae_loss(logits, self.x, mu, logvar, self.params.beta).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.grad_clip)
        self.optimizer.step()

    def images_per_second(self, steps: int) -> float:
        self.model.train()
        with _deterministic(False):
            return _time(lambda i: self._step(), steps, self.params.batch_size, self.run.device)


def _time(step, steps: int, batch_size: int, device: torch.device) -> float:
    for i in range(3):  # warm-up: allocator, oneDNN primitive caches, DataLoader workers
        step(i)
    _sync(device)
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _deterministic:
    """The project runs in deterministic mode; the conventional loop and the floor use torch's defaults."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.saved = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(self.enabled, warn_only=True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.saved, warn_only=True)


def _nll_throughput(session: training.Session, params, data_dir: Path, images: int) -> dict:
    test = load_test(data_dir, images).to(session.run.device)
    model = session.model.eval()
    generator = torch.Generator(session.run.device).manual_seed(0)
    evaluate.per_image(model, load_test(data_dir, 128).to(session.run.device), params.eval.iw_samples,
                       session.run, generator)  # warm-up
    _sync(session.run.device)
    started = time.perf_counter()
    evaluate.per_image(model, test, params.eval.iw_samples, session.run, generator)
    _sync(session.run.device)
    per_second = len(test) / (time.perf_counter() - started)
    return {"images_per_s": per_second, "iw_samples": params.eval.iw_samples,
            "test_set_seconds": 10_000 / per_second}


def _report(samples: dict, gflop_per_image: float, nll: dict, params, real_data: bool, quick: bool,
            retained_freed_memory: bool) -> dict:
    median = {name: statistics.median(values) for name, values in samples.items()}
    steps_per_epoch = params.train_images // params.batch_size
    epoch_seconds = steps_per_epoch * params.batch_size / median["project"]
    return {
        "project": {"images_per_s": median["project"], "trials": samples["project"],
                    "epoch_seconds": epoch_seconds, "epochs_minutes": epoch_seconds * params.epochs / 60},
        "conventional": {"images_per_s": median["conventional"], "trials": samples["conventional"],
                         "num_workers": os.cpu_count()},
        "floor": {"images_per_s": median["floor"], "trials": samples["floor"],
                  "gflop_per_image": gflop_per_image, "gflops": median["floor"] * gflop_per_image},
        "speedup_vs_conventional": median["project"] / median["conventional"],
        "overhead_vs_floor": median["floor"] / median["project"],
        "evaluate_nll": nll,
        "settings": {"batch_size": params.batch_size, "channels_last": params.channels_last,
                     "precision": params.precision, "compile": params.compile, "quick": quick,
                     "retain_freed_memory": retained_freed_memory,
                     "data": "MNIST" if real_data else "synthetic images of MNIST's size"},
        "machine": _machine(),
    }


def _machine() -> dict:
    machine = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name()
    return machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _synthetic_mnist(directory: Path) -> Path:
    """Random uint8 images of MNIST's size: throughput does not depend on the pixels."""
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": rng.integers(0, 10, 60_000, dtype=np.uint8),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, 10_000, dtype=np.uint8)}
    for name, array in files.items():
        (directory / name).write_bytes(idx.encode(array))
    return directory


def _print(report: dict) -> None:
    rows = [("project (train stage's loop)", report["project"]["images_per_s"], ""),
            ("conventional (Dataset + DataLoader)", report["conventional"]["images_per_s"], ""),
            ("floor (fwd + bwd + step, one batch)", report["floor"]["images_per_s"],
             f"{report['floor']['gflops']:.1f} GFLOP/s")]
    print(f"\n{'loop':40s} {'images/s':>10s}")
    for name, rate, extra in rows:
        print(f"{name:40s} {rate:10.0f}  {extra}")
    print(f"speedup vs conventional {report['speedup_vs_conventional']:.2f}x, "
          f"overhead vs floor {report['overhead_vs_floor']:.2f}x")
    print(f"epoch {report['project']['epoch_seconds']:.1f} s, all epochs "
          f"{report['project']['epochs_minutes']:.1f} min (projected)")
    nll = report["evaluate_nll"]
    print(f"evaluate NLL: {nll['images_per_s']:.0f} test images/s at iw_samples={nll['iw_samples']} "
          f"({nll['test_set_seconds']:.0f} s for 10,000)")
    machine = report["machine"]
    print(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, torch {machine['torch']}"
          + (f", {machine['gpu']}" if "gpu" in machine else ""))


if __name__ == "__main__":
    main()
