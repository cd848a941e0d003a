"""What the benchmarks ran on, recorded beside every figure they write, so that results from
different machines read side by side: the CPU's model with its family and model numbers (one
"AMD EPYC" name covers cores of several generations with different kernels), the instruction sets
the step's kernels can use, and the torch and oneDNN builds.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import torch

# The instruction sets the step's kernels can use.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")
MATMUL_SIDE = 2048


def describe() -> dict:
    info = cpuinfo()
    flags = cpu_flags(info)
    machine = {"cpu": info.get("model name") or platform.processor() or "unknown",
               "cpu_family": _number(info.get("cpu family")), "cpu_model": _number(info.get("model")),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "onednn": onednn_version(),
               "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "isa": [flag for flag in ISA_FLAGS if flag in flags],
               "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
               "python": platform.python_version()}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name()
    return machine


class Ceiling:
    """GFLOP/s of a square matrix product on every core: the machine's own ceiling. "mm" is torch.mm
    (MKL's sgemm for fp32, oneDNN for bf16); "onednn" the same product as a 1x1 convolution over
    2048 channels-last pixels, which oneDNN runs with the GEMM kernels its convolutions use."""

    unit = "GFLOP/s"

    def __init__(self, kind: str, dtype: torch.dtype = torch.float32):
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(MATMUL_SIDE, MATMUL_SIDE, generator=generator).to(dtype) for _ in range(2))
        if kind not in ("mm", "onednn"):
            raise ValueError(f"kind must be mm or onednn, not {kind!r}")
        if kind == "mm":
            self.product = lambda: torch.mm(a, b)
        else:  # (1, K, M, 1) pixels x (N, K, 1, 1) weights: an M x K by K x N product
            pixels = a.T.reshape(1, MATMUL_SIDE, MATMUL_SIDE, 1).contiguous(memory_format=torch.channels_last)
            weights = b.reshape(MATMUL_SIDE, MATMUL_SIDE, 1, 1).contiguous(memory_format=torch.channels_last)
            self.product = lambda: torch.nn.functional.conv2d(pixels, weights)

    def rate(self, steps: int) -> float:
        self.product()
        started = time.perf_counter()
        for _ in range(steps):
            self.product()
        return steps * 2 * MATMUL_SIDE**3 / (time.perf_counter() - started) / 1e9


class GpuCeiling:
    """TFLOP/s of a large square matrix product on the GPU, measured as a GPU is measured: warmed up,
    timed between synchronisations. "bf16" in bfloat16; "tf32" in fp32 with TF32 tensor cores allowed
    (what cuBLAS does for fp32 by default under autocast's neighbours); "fp32" with them forbidden."""

    unit = "TFLOP/s"
    SIDE = 8192

    def __init__(self, kind: str, device: torch.device):
        if kind not in ("bf16", "tf32", "fp32"):
            raise ValueError(f"kind must be bf16, tf32 or fp32, not {kind!r}")
        self.kind, self.device = kind, device
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        generator = torch.Generator(device).manual_seed(0)
        self.a, self.b = (torch.randn(self.SIDE, self.SIDE, generator=generator, device=device, dtype=dtype)
                          for _ in range(2))

    def rate(self, steps: int) -> float:
        allowed = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.kind == "tf32"
        try:
            for _ in range(3):
                torch.mm(self.a, self.b)
            torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            for _ in range(max(steps, 10)):
                torch.mm(self.a, self.b)
            torch.cuda.synchronize(self.device)
            return max(steps, 10) * 2 * self.SIDE**3 / (time.perf_counter() - started) / 1e12
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allowed


def has_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic is native here: CUDA, or a CPU with AVX-512 BF16 or AMX."""
    return device.type == "cuda" or bool({"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo()))


def cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo ({"model name": ..., "flags": ...}); {} where
    there is none (not Linux)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    entries: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, separator, value = line.partition(":")
        if separator:
            entries.setdefault(key.strip(), value.strip())
    return entries


def cpu_flags(info: dict[str, str]) -> set[str]:
    return set(info.get("flags", "").split())


def onednn_version() -> str | None:
    """oneDNN's version as torch's build configuration names it ("3.12.0"), or None."""
    found = re.search(r"(?:oneDNN|MKL-DNN) v([\d.]+)", torch.__config__.show())
    return found.group(1) if found else None


def summary(machine: dict) -> str:
    """One line: "AMD EPYC (family 25 model 1), 2 CPUs, avx2 fma, torch 2.14.1 (AVX2), oneDNN 3.12.0"."""
    identity = (f" (family {machine['cpu_family']} model {machine['cpu_model']})"
                if machine["cpu_family"] is not None else "")
    return (f"{machine['cpu']}{identity}, {machine['cpu_count']} CPUs, {' '.join(machine['isa']) or 'no AVX2'}, "
            f"torch {machine['torch']} ({machine['cpu_capability']}), oneDNN {machine['onednn']}"
            + (f", {machine['gpu']}" if "gpu" in machine else ""))


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None
