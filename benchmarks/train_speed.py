"""Training throughput: the project's loop against the conventional one, the arithmetic floor and
the machine's own ceiling.

    python benchmarks/train_speed.py            # a few minutes
    python benchmarks/train_speed.py --quick    # about a minute

    python benchmarks/train_speed.py --out reports/bench/train_speed-h200.json   # on a GPU: measured as a GPU is

In one process, with the same model, batch size, optimiser, loss and augmentation settings:
  project       the train stage's own step (betavae/training/step.py) on device-resident uint8 data: on a
                CUDA device the whole step captured as a CUDA graph and replayed, elsewhere eager
  project_eager on a CUDA device, the same step run eagerly (what the graph saves)
  conventional  how the spec's kind of script is written: a Dataset that augments one image at a time
                with torchvision.transforms.v2.RandomAffine, a shuffling DataLoader with num_workers =
                CPU count, default memory format and (non-deterministic) settings
  floor         forward + backward + optimiser step on one batch already in memory (FLOPs counted)
  bf16 floor    the same in bf16 autocast, where the CPU has bf16 instructions (or on CUDA)
  stock floor   the floor with torch's own nn.ConvTranspose2d as the decoder's output layer instead
                of betavae.core.model.OutputTransposedConv (same weights): what that layer's rewrite gains here
  ceiling       on the CPU, a plain 2048 x 2048 fp32 matrix product (torch.mm): what this machine's cores can
                do at best; beside it the same product through oneDNN (a 1x1 convolution, the library the
                model's convolutions run in) and, where the CPU has bf16 instructions, in bf16. On a GPU, an
                8192 x 8192 product in bf16, in fp32 with TF32 and in plain fp32, warmed up and synchronised
plus, on a GPU, a profile of the project's step (torch.profiler: CUDA time per kernel, kernels a step),
plus the evaluate stage's importance-weighted NLL throughput at the default eval.iw_samples, and the
page faults of one training step with and without the stages' allocator setting
(betavae.speed.runtime.retain_freed_memory), each in a fresh process.
Trials of the loops are interleaved and medians reported, since a shared VM's speed drifts; compare
only ratios from one run. The allocator setting is process-wide, so all loops run with it here.
Writes reports/bench/train_speed.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py, beside this script
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import InterpolationMode, v2

from betavae.core import idx, metrics, schedules
from betavae.core.augment import random_affine
from betavae.core.data import load_test, to_float
from betavae.core.idx import MNIST_TEST_IMAGES
from betavae.core.model import ConvVAE, ModelConfig
from betavae.core.objective import beta_vae_loss
from betavae.errors import ArgumentParser, integer_in, output_file, run
from betavae.pipeline import atomic
from betavae.pipeline.params import Params, load_params
from betavae.speed import runtime
from betavae.training import distributed, loop
from betavae.training.state import Trainer
from betavae.training.step import Step

REPO = Path(__file__).resolve().parents[1]
MAX_TRIALS, MAX_STEPS = 100, 100_000  # bounds on the command line, far above any use


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter trials (about a minute)")
    parser.add_argument("--trials", type=integer_in(1, MAX_TRIALS),
                        help="interleaved trials of every loop (default: 5, --quick 3)")
    parser.add_argument("--steps", type=integer_in(1, MAX_STEPS), help="timed steps a trial (default: 30, --quick 8)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "mnist",
                        help="MNIST IDX directory; synthetic images of the same size if absent")
    parser.add_argument("--out", type=output_file(".json"), default=REPO / "reports" / "bench" / "train_speed.json")
    args = parser.parse_args()
    params = load_params(args.params)  # checked before any work
    faults = {mode: _step_page_faults(mode) for mode in ("default", "retain")}
    retained = runtime.retain_freed_memory()
    trials, steps = (3, 8) if args.quick else (5, 30)
    trials, steps = args.trials or trials, args.steps or steps
    with tempfile.TemporaryDirectory() as scratch:
        real = (args.data / idx.TRAIN_IMAGES).exists()
        data_dir = args.data if real else _synthetic_mnist(Path(scratch))
        trainer = loop.prepare(params, data_dir, distributed.World())
        gpu = trainer.compute.device.type == "cuda"
        project = Project(trainer, loop.make_step(trainer, print))
        timed = {"project": project, "conventional": Conventional(trainer), "floor": Floor(trainer, None),
                 "floor_stock_output_layer": Floor(trainer, None, stock_output_layer=True)}
        if gpu:
            eager = loop.prepare(params, data_dir, distributed.World())
            timed["project_eager"] = Project(eager, Step(eager, capture=False))
            timed.update({f"ceiling_{kind}": machine.GpuCeiling(kind, trainer.compute.device)
                          for kind in ("bf16", "tf32", "fp32")})
        else:
            timed.update({"ceiling": machine.Ceiling("mm"), "ceiling_onednn": machine.Ceiling("onednn")})
        if machine.has_bf16(trainer.compute.device):
            timed["floor_bf16"] = Floor(trainer, torch.bfloat16)
            if not gpu:
                timed["ceiling_bf16"] = machine.Ceiling("mm", torch.bfloat16)
        samples = {name: [] for name in timed}
        for trial in range(trials):
            for name, timed_loop in timed.items():
                samples[name].append(timed_loop.rate(steps))
            print(f"trial {trial + 1}/{trials}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in samples.items()),
                  flush=True)
        timed["conventional"].close()
        nll = _nll_throughput(trainer, params, data_dir, images=256 if args.quick else 1024)
        profile = {"graphed": cuda_profile(project, steps), "eager": cuda_profile(timed["project_eager"], steps)} \
            if gpu else None
    report = _report(samples, timed["floor"].gflop_per_image, nll, params, real, args.quick, retained, faults)
    if gpu:
        report.update(_gpu_report(samples, timed["floor"].gflop_per_image, profile, project.step.captured))
    atomic.write_json(args.out, report)
    _print(report)
    print(f"written to {args.out}")


class Project:
    """The train stage's step, as the stage runs it: batches from the seeded per-epoch order."""

    unit = "images/s"

    def __init__(self, trainer: Trainer, step: Step):
        self.trainer, self.step, self.left = trainer, step, 0

    def rate(self, steps: int) -> float:
        self.trainer.model.train()

        def one(_: int) -> None:
            if not self.left:
                self.step.start_epoch(2)
                self.left = self.step.steps
            self.step()
            self.left -= 1

        with _deterministic(True):
            return _images_per_second(one, steps, self.trainer.params.batch_size, self.trainer.compute.device)


def cuda_profile(project: Project, steps: int) -> dict:
    """torch.profiler over `steps` steps of the project's loop on CUDA: kernels launched a step, and
    the CUDA time of each kernel (the 15 largest), in ms a step."""
    from torch.profiler import ProfilerActivity, profile

    project.rate(3)  # warm
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as profiled:
        project.rate(steps)
    kernels = [event for event in profiled.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    per_kernel: dict[str, float] = {}
    for event in kernels:
        per_kernel[event.name] = per_kernel.get(event.name, 0.0) + event.device_time_total / 1e3
    timed_steps = steps + 3  # rate() runs three warm-up steps before its timed ones
    largest = sorted(per_kernel.items(), key=lambda item: -item[1])[:15]
    return {"steps": timed_steps, "kernels_per_step": len(kernels) / timed_steps,
            "cuda_ms_per_step": sum(per_kernel.values()) / timed_steps,
            "largest_kernels_ms_per_step": {name[:120]: round(ms / timed_steps, 4) for name, ms in largest}}


class AugmentingDataset(Dataset):
    """The usual way: one image at a time, augmented by torchvision inside __getitem__."""

    def __init__(self, images: torch.Tensor, params: Params):
        self.images = images
        mode = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}
        self.transform = v2.RandomAffine(degrees=params.augment.rotation,
                                         translate=(params.augment.translate, params.augment.translate),
                                         interpolation=mode[params.augment.interpolation])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.images[index].float().div(255).unsqueeze(0))


class Conventional:
    unit = "images/s"

    def __init__(self, trainer: Trainer):
        self.params, self.device = trainer.params, trainer.compute.device
        self.model = ConvVAE(ModelConfig(self.params.z_dim, self.params.dropout)).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.params.base_lr,
                                           weight_decay=self.params.weight_decay)
        dataset = AugmentingDataset(trainer.train.images.cpu(), self.params)
        self.loader = DataLoader(dataset, batch_size=self.params.batch_size, shuffle=True, drop_last=True,
                                 num_workers=os.cpu_count() or 1, persistent_workers=True,
                                 pin_memory=self.device.type == "cuda")
        self.iterator = iter(self.loader)

    def _next(self) -> torch.Tensor:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def rate(self, steps: int) -> float:
        p, model = self.params, self.model
        model.train()

        def step(i: int) -> None:
            t = 1.0 + i / 1000
            for group in self.optimizer.param_groups:
                group["lr"] = schedules.learning_rate(t, p.base_lr, p.max_lr, p.warmup_epochs, p.epochs)
            x = self._next().to(self.device, non_blocking=True)
            logits, mu, logvar, _ = model(x)
            loss = beta_vae_loss(logits, x, mu, logvar, schedules.kl_weight(t, p.beta, p.kl_anneal_epochs)).loss
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            self.optimizer.step()

        with _deterministic(False):
            return _images_per_second(step, steps, p.batch_size, self.device)

    def close(self) -> None:
        del self.iterator, self.loader


class Floor:
    """The arithmetic alone: one batch, already augmented and in memory, the project's fastest settings."""

    unit = "images/s"

    def __init__(self, trainer: Trainer, autocast_dtype: torch.dtype | None, stock_output_layer: bool = False):
        self.params, self.compute = trainer.params, trainer.compute
        self.autocast_dtype = autocast_dtype
        model = ConvVAE(ModelConfig(self.params.z_dim, self.params.dropout))
        if stock_output_layer:
            ours = model.decoder[-1]
            stock = nn.ConvTranspose2d(ours.in_channels, ours.out_channels, ours.kernel_size, ours.stride,
                                       ours.padding, ours.output_padding, bias=ours.bias is not None)
            stock.load_state_dict(ours.state_dict())
            model.decoder[-1] = stock
        self.model = self.compute.place(model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.params.base_lr,
                                           weight_decay=self.params.weight_decay)
        x = to_float(trainer.train.images[: self.params.batch_size])
        augment = self.params.augment
        self.x = self.compute.to_layout(random_affine(x, augment.rotation, augment.translate,
                                                      torch.Generator(self.compute.device).manual_seed(0),
                                                      augment.interpolation))
        counter = FlopCounterMode(display=False)
        with counter:
            self._step()
        self.gflop_per_image = counter.get_total_flops() / self.params.batch_size / 1e9

    def _step(self) -> None:
        with torch.autocast(self.compute.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            logits, mu, logvar, _ = self.model(self.x)
        loss = beta_vae_loss(logits, self.x, mu, logvar, self.params.beta).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.grad_clip)
        self.optimizer.step()

    def rate(self, steps: int) -> float:
        self.model.train()
        with _deterministic(False):
            return _images_per_second(lambda i: self._step(), steps, self.params.batch_size, self.compute.device)


def _images_per_second(step, steps: int, batch_size: int, device: torch.device) -> float:
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


# Minor page faults of one forward + backward pass on a batch of 256 (median of 5 after 2 warm-up
# steps) in a fresh interpreter, since the allocator setting is process-wide and cannot be undone.
_FAULTS_CHILD = """
import resource, sys, torch
from betavae.speed import runtime
from betavae.core.model import ConvVAE, ModelConfig
if sys.argv[1] == "retain":
    runtime.retain_freed_memory()
torch.manual_seed(0)
model, x = ConvVAE(ModelConfig(latent_dim=32, dropout=0.1)), torch.rand(256, 1, 28, 28)
def step():
    model.zero_grad(set_to_none=False)
    logits, mu, logvar, _ = model(x)
    (logits.square().mean() + mu.square().mean()).backward()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
step(); step()
print(sorted(faults() for _ in range(5))[2])
"""


def _step_page_faults(mode: str) -> int | None:
    if platform.system() != "Linux":
        return None
    result = subprocess.run([sys.executable, "-c", _FAULTS_CHILD, mode], capture_output=True, text=True, cwd=REPO)
    return int(result.stdout.split()[-1]) if result.returncode == 0 else None


def _nll_throughput(trainer: Trainer, params: Params, data_dir: Path, images: int) -> dict:
    """Test images per second of the importance-weighted NLL at eval.iw_samples, and of the
    binarized-MNIST protocol at eval.binarized_samples (on fewer images: it costs K times more)."""
    device, model = trainer.compute.device, trainer.model.eval()
    generator = torch.Generator(device).manual_seed(0)
    metrics.per_image(model, load_test(data_dir, 128).to(device), params.eval.iw_samples, trainer.compute,
                       generator)  # warm-up
    measured = {}
    for name, samples in (("iw", params.eval.iw_samples), ("binarized", params.eval.binarized_samples)):
        count = max(32, images * params.eval.iw_samples // samples)
        test = load_test(data_dir, count, "dynamic" if name == "binarized" else "none").to(device)
        _sync(device)
        started = time.perf_counter()
        metrics.per_image(model, test, samples, trainer.compute, generator)
        _sync(device)
        per_second = len(test) / (time.perf_counter() - started)
        measured[name] = {"images_per_s": per_second, "importance_samples": samples,
                          "test_set_seconds": MNIST_TEST_IMAGES / per_second}
    return {**measured["iw"], "iw_samples": params.eval.iw_samples, "binarized": measured["binarized"]}


def _report(samples: dict, gflop_per_image: float, nll: dict, params: Params, real_data: bool, quick: bool,
            retained: bool, faults: dict) -> dict:
    median = {name: statistics.median(values) for name, values in samples.items()}
    steps_per_epoch = params.train_images // params.batch_size
    epoch_seconds = steps_per_epoch * params.batch_size / median["project"]
    floor_gflops = median["floor"] * gflop_per_image
    report = {
        "project": {"images_per_s": median["project"], "trials": samples["project"],
                    "epoch_seconds": epoch_seconds, "epochs_minutes": epoch_seconds * params.epochs / 60},
        "conventional": {"images_per_s": median["conventional"], "trials": samples["conventional"],
                         "augmentation": "torchvision.transforms.v2.RandomAffine per image",
                         "num_workers": os.cpu_count()},
        "floor": {"images_per_s": median["floor"], "trials": samples["floor"],
                  "gflop_per_image": gflop_per_image, "gflops": floor_gflops},
        "project_vs_conventional": median["project"] / median["conventional"],
        "floor_vs_project": median["floor"] / median["project"],
        "floor_stock_output_layer": {"images_per_s": median["floor_stock_output_layer"],
                                     "trials": samples["floor_stock_output_layer"],
                                     "floor_vs_stock": median["floor"] / median["floor_stock_output_layer"]},
        "evaluate_nll": nll,
        "page_faults_per_step": {"default_allocator": faults["default"], "retained_freed_memory": faults["retain"]},
        "settings": {"batch_size": params.batch_size, "channels_last": params.channels_last,
                     "precision": params.precision, "compile": params.compile, "quick": quick,
                     "retain_freed_memory": retained,
                     "data": "MNIST" if real_data else "synthetic images of MNIST's size"},
        "machine": machine.describe(),
    }
    if "ceiling" in median:  # the CPU's
        report["ceiling"] = {
            "gflops": median["ceiling"], "trials": samples["ceiling"],
            "what": f"{machine.MATMUL_SIDE}x{machine.MATMUL_SIDE} fp32 matrix product (torch.mm)",
            "onednn_gflops": median["ceiling_onednn"], "onednn_trials": samples["ceiling_onednn"],
            "bf16_gflops": median.get("ceiling_bf16"), "bf16_trials": samples.get("ceiling_bf16")}
        report["floor_vs_ceiling"] = floor_gflops / median["ceiling"]
        report["floor_vs_best_fp32_product"] = floor_gflops / max(median["ceiling"], median["ceiling_onednn"])
    if "floor_bf16" in median:
        report["floor_bf16"] = {"images_per_s": median["floor_bf16"], "trials": samples["floor_bf16"],
                                "vs_fp32_floor": median["floor_bf16"] / median["floor"]}
    else:
        report["floor_bf16"] = "not measured: this CPU has no bf16 instructions (AVX-512 BF16 or AMX)"
    return report


def _gpu_report(samples: dict, gflop_per_image: float, profile: dict, captured: bool) -> dict:
    """What a GPU adds: its ceilings, the graphed step against the eager one, and their kernel profiles."""
    median = {name: statistics.median(values) for name, values in samples.items()}
    side = machine.GpuCeiling.SIDE
    ceilings = {kind: {"tflops": median[f"ceiling_{kind}"], "trials": samples[f"ceiling_{kind}"]}
                for kind in ("bf16", "tf32", "fp32")}
    project_tflops = median["project"] * gflop_per_image / 1e3
    return {
        "gpu_ceiling": {**ceilings, "what": f"{side}x{side} matrix product (torch.mm), warmed up, synchronised"},
        "project_eager": {"images_per_s": median["project_eager"], "trials": samples["project_eager"]},
        "project_step": "cuda-graph" if captured else "eager (the capture failed; see the log)",
        "graph_vs_eager": median["project"] / median["project_eager"],
        "project_tflops": project_tflops,
        "project_vs_bf16_ceiling": project_tflops / median["ceiling_bf16"],
        "cuda_profile": profile,
    }


def _synthetic_mnist(directory: Path) -> Path:
    """Random uint8 images of MNIST's size: throughput does not depend on the pixels."""
    rng = np.random.default_rng(0)
    shapes = {idx.TRAIN_IMAGES: (60_000, 28, 28), idx.TRAIN_LABELS: (60_000,),
              idx.TEST_IMAGES: (10_000, 28, 28), idx.TEST_LABELS: (10_000,)}
    for name, shape in shapes.items():
        high = 10 if len(shape) == 1 else 256
        (directory / name).write_bytes(idx.encode(rng.integers(0, high, shape, dtype=np.uint8)))
    return directory


def _print(report: dict) -> None:
    rows = [("project (train stage's loop)", report["project"]["images_per_s"], ""),
            ("conventional (Dataset + DataLoader)", report["conventional"]["images_per_s"], ""),
            ("floor (fwd + bwd + step, one batch)", report["floor"]["images_per_s"],
             f"{report['floor']['gflops']:.1f} GFLOP/s")]
    rows.append(("floor, nn.ConvTranspose2d output layer", report["floor_stock_output_layer"]["images_per_s"],
                 f"floor / this {report['floor_stock_output_layer']['floor_vs_stock']:.2f}x"))
    if isinstance(report["floor_bf16"], dict):
        rows.append(("floor in bf16 autocast", report["floor_bf16"]["images_per_s"],
                     f"{report['floor_bf16']['vs_fp32_floor']:.2f}x the fp32 floor"))
    if "project_eager" in report:
        rows.insert(1, ("project, the same step eagerly", report["project_eager"]["images_per_s"],
                        f"graph / eager {report['graph_vs_eager']:.2f}x"))
    print(f"\n{'loop':40s} {'images/s':>10s}")
    for name, rate, extra in rows:
        print(f"{name:40s} {rate:10.0f}  {extra}")
    if "ceiling" in report:
        ceiling = report["ceiling"]
        print(f"ceiling: {ceiling['gflops']:.1f} GFLOP/s ({ceiling['what']}), {ceiling['onednn_gflops']:.1f} "
              "through oneDNN" + (f", {ceiling['bf16_gflops']:.1f} in bf16" if ceiling["bf16_gflops"] else ""))
        print(f"project / conventional {report['project_vs_conventional']:.2f}x, floor / project "
              f"{report['floor_vs_project']:.2f}x, floor / ceiling {report['floor_vs_ceiling']:.2f}")
    else:
        ceiling = report["gpu_ceiling"]
        print("GPU ceiling: " + ", ".join(f"{kind} {ceiling[kind]['tflops']:.0f} TFLOP/s" for kind in ("bf16", "tf32",
                                                                                                      "fp32")))
        print(f"project / conventional {report['project_vs_conventional']:.2f}x; the project's step runs at "
              f"{report['project_tflops']:.2f} TFLOP/s, {report['project_vs_bf16_ceiling']:.3f} of the bf16 ceiling")
        for name, profile in report["cuda_profile"].items():
            print(f"{name}: {profile['kernels_per_step']:.0f} kernels a step, {profile['cuda_ms_per_step']:.3f} ms "
                  "of CUDA time a step")
    print(f"epoch {report['project']['epoch_seconds']:.1f} s, all epochs "
          f"{report['project']['epochs_minutes']:.1f} min (projected)")
    nll = report["evaluate_nll"]
    print(f"evaluate NLL: {nll['images_per_s']:.0f} test images/s at iw_samples={nll['iw_samples']} "
          f"({nll['test_set_seconds']:.0f} s for 10,000)")
    binary = nll["binarized"]
    print(f"binarized-MNIST NLL: {binary['images_per_s']:.1f} test images/s at {binary['importance_samples']} "
          f"samples ({binary['test_set_seconds'] / 60:.1f} minutes for 10,000)")
    faults = report["page_faults_per_step"]
    print(f"page faults per step: {faults['default_allocator']} with glibc's defaults, "
          f"{faults['retained_freed_memory']} with freed memory retained")
    print(f"machine: {machine.summary(report['machine'])}")


if __name__ == "__main__":
    run(main, "train_speed")
