"""Where the training step spends its time on this CPU: each layer's arithmetic, the oneDNN kernel
each convolution, transposed convolution and batch norm gets (forward and backward), its time, and
the GFLOP/s it reaches, next to the machine's fp32 matrix-product ceiling.

    python benchmarks/profile_step.py [--precision fp32|bf16] [--steps 20] [--out reports/bench/profile_step.json]

The step is the benchmark's floor (benchmarks/train_speed.py): forward, β-VAE loss, backward,
clipping and AdamW on one channels-last batch of 256 already in memory. Kernel names and times come
from oneDNN's verbose mode (ONEDNN_VERBOSE), which reports every primitive it executes; it is
switched on for a few steps after a warm-up, in a child process whose standard output is captured
(oneDNN writes there from C++). Operator totals come from torch.profiler. docs/performance.md reads
the result.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py, beside this script
import torch
from torch.utils.flop_counter import FlopCounterMode

from betavae.core.model import ConvVAE, ModelConfig
from betavae.core.objective import beta_vae_loss
from betavae.errors import ArgumentParser, integer_in, output_file, run
from betavae.pipeline import atomic
from betavae.speed import runtime

REPO = Path(__file__).resolve().parents[1]
BATCH = 256
VERBOSE_STEPS = 3
CHILD = "--child-verbose"
MAX_STEPS = 100_000  # a bound on the command line, far above any use


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--steps", type=integer_in(1, MAX_STEPS), default=20, help="timed steps (default: %(default)s)")
    parser.add_argument("--out", type=output_file(".json"), default=REPO / "reports" / "bench" / "profile_step.json")
    parser.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_verbose:
        _verbose_steps(args.precision)
        return
    step = _Step(args.precision)
    layers = step.flops_by_layer()
    seconds = step.seconds(args.steps)
    operators = step.operators()
    kernels = _kernels(args.precision)
    report = {"precision": args.precision, "batch": BATCH, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "step_ms": round(1e3 * seconds, 2),
              "step_gflop": round(sum(layers.values()) / 1e9, 3),
              "step_gflops": round(sum(layers.values()) / seconds / 1e9, 1),
              "matmul_gflops": round(machine.Ceiling("mm").rate(10), 1),
              **_split(kernels, seconds),
              "layers_gflop": {name: round(flop / 1e9, 4) for name, flop in layers.items()},
              "kernels": kernels, "operators": operators, "machine": machine.describe()}
    atomic.write_json(args.out, report)
    _print(report)


class _Step:
    def __init__(self, precision: str):
        torch.manual_seed(0)
        self.autocast = precision == "bf16"
        self.model = ConvVAE(ModelConfig(latent_dim=32, dropout=0.1)).to(memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-5)
        self.x = torch.rand(BATCH, 1, 28, 28).round().to(memory_format=torch.channels_last)

    def __call__(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            logits, mu, logvar, _ = self.model(self.x)
        loss = beta_vae_loss(logits.float(), self.x, mu.float(), logvar.float(), 0.8).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()

    def flops_by_layer(self) -> dict[str, int]:
        """FLOPs of one step per leaf module (forward and backward), e.g. {"ConvVAE.encoder.0.0": ...}."""
        counter = FlopCounterMode(display=False)
        with counter:
            self()
        # "Global" is the whole step, every module's total again: leaving it in counted each FLOP twice.
        counts = {name: count for name, count in counter.get_flop_counts().items() if name != "Global"}
        leaves = {name for name in counts if not any(other.startswith(name + ".") for other in counts)}
        return {name: sum(counts[name].values()) for name in sorted(leaves) if sum(counts[name].values())}

    def seconds(self, steps: int) -> float:
        for _ in range(5):
            self()
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            self()
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    def operators(self, top: int = 15) -> list[dict]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            for _ in range(5):
                self()
        rows = sorted(profile.key_averages(), key=lambda row: row.self_cpu_time_total, reverse=True)[:top]
        return [{"operator": row.key, "self_ms_per_step": round(row.self_cpu_time_total / 5 / 1e3, 2),
                 "calls_per_step": row.count // 5} for row in rows]


def _verbose_steps(precision: str) -> None:
    step = _Step(precision)
    for _ in range(5):
        step()
    sys.stdout.flush()
    print("==== verbose", flush=True)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        for _ in range(VERBOSE_STEPS):
            step()


def _kernels(precision: str) -> list[dict]:
    """oneDNN primitives of one step: kind, implementation, propagation, problem, ms per step."""
    child = subprocess.run([sys.executable, __file__, CHILD, "--precision", precision], capture_output=True,
                           text=True, check=True, env={**os.environ, "ONEDNN_VERBOSE": "0"})
    totals: dict[tuple, float] = collections.defaultdict(float)
    calls: dict[tuple, int] = collections.Counter()
    for line in child.stdout.split("==== verbose", 1)[-1].splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields:
            continue
        at = fields.index("exec")
        kind, implementation, propagation = fields[at + 2], fields[at + 3], fields[at + 4]
        key = (kind, implementation, propagation, fields[-2])
        totals[key] += float(fields[-1])
        calls[key] += 1
    rows = [{"primitive": kind, "implementation": implementation, "propagation": propagation, "problem": problem,
             "ms_per_step": round(total / VERBOSE_STEPS, 3), "calls_per_step": calls[key] // VERBOSE_STEPS}
            for key, total in totals.items() for kind, implementation, propagation, problem in [key]]
    return sorted(rows, key=lambda row: -row["ms_per_step"])


def _split(kernels: list[dict], seconds: float) -> dict:
    """The step's time in oneDNN's primitives (convolutions, transposed convolutions, reorders) and
    in everything else (batch norm, activations, dropout, linear layers, loss, optimiser): what the
    step would cost if the rest were free bounds how close it can come to the ceiling."""
    onednn_ms = sum(row["ms_per_step"] for row in kernels)
    return {"onednn_ms": round(onednn_ms, 2), "rest_ms": round(1e3 * seconds - onednn_ms, 2)}


def _print(report: dict) -> None:
    print(f"step: {report['step_ms']} ms ({report['precision']}, batch {report['batch']}, "
          f"{report['threads']} threads), {report['step_gflop']} GFLOP, {report['step_gflops']} GFLOP/s; "
          f"fp32 matmul {report['matmul_gflops']} GFLOP/s")
    print(f"oneDNN primitives {report['onednn_ms']} ms a step, the rest {report['rest_ms']} ms; "
          f"{machine.summary(report['machine'])}")
    print("| oneDNN primitive | implementation | pass | problem | ms/step |")
    print("|---|---|---|---|---:|")
    for row in report["kernels"][:25]:
        print(f"| {row['primitive']} | {row['implementation']} | {row['propagation']} | {row['problem'][:60]} | "
              f"{row['ms_per_step']} |")
    print("| operator (torch.profiler) | self ms/step | calls |")
    print("|---|---:|---:|")
    for row in report["operators"]:
        print(f"| {row['operator']} | {row['self_ms_per_step']} | {row['calls_per_step']} |")


if __name__ == "__main__":
    runtime.retain_freed_memory()
    run(main, "profile_step")
