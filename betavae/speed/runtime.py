"""Where and how the arithmetic runs: device, autocast precision, memory layout, determinism, and
whether a run fits in memory. Chosen once from params."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import platform

import torch
from torch import nn

from betavae.errors import BetaVAEError

GIB = 1024**3


class DeviceError(BetaVAEError, RuntimeError):
    """The requested device cannot be used here, or a run would not fit in its memory."""


@dataclasses.dataclass(frozen=True)
class Compute:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None runs in fp32
    channels_last: bool
    compile: bool = False  # torch.compile the training forward pass

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D batch in the memory layout the convolutions run fastest in (channels-last if enabled)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, model: nn.Module) -> nn.Module:
        """The model on the device, its weights in the same layout as the inputs."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def resolve(device: str, precision: str, channels_last: bool, compile: bool = False, local_rank: int = 0) -> Compute:
    """The Compute for the params of these names; under torchrun on CUDA each process takes the
    GPU of its local rank."""
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
    return Compute(device=chosen, autocast_dtype=_autocast_dtype(precision, chosen),
                   channels_last=channels_last, compile=compile)


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when present, else the CPU), cpu or cuda: the device param's choices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: cuda was requested, but CUDA is not available on this machine "
                          "(use device: auto or cpu)")
    if name in ("cpu", "cuda"):
        return torch.device(name)
    raise DeviceError(f"device {name!r} is not one this project runs on")


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    # auto keeps fp32 on CPUs: even with AMX, bf16 autocast leaves much of the step as slow as
    # fp32 (oneDNN's weight-gradient kernels, batch norm bound by memory), short of the 2x that
    # would justify one CPU computing another model than the rest from the same params; asked
    # for, it trains to the same quality (docs/performance.md).
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def make_deterministic(seed: int, device: torch.device) -> None:
    """Seed every global RNG and ask for deterministic kernels, so reruns give the same bytes."""
    torch.manual_seed(seed)
    _use_deterministic_algorithms(warn_only=device.type == "cuda")
    # Deterministic mode also NaN-fills every new empty tensor to expose reads of uninitialised
    # memory: a debugging aid that costs a measurable share of the CPU step (docs/performance.md)
    # and changes no result here.
    torch.utils.deterministic.fill_uninitialized_memory = False
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False


def _use_deterministic_algorithms(warn_only: bool) -> None:
    """torch.use_deterministic_algorithms(True), without its cost. torch 2.14.1's public call imports
    TorchInductor, TorchDynamo and sympy to set one flag of the compiler's (2.5 s of a 2-core CPU's
    start-up, in every train and evaluate stage); the kernels' switch itself is one call into
    torch's core. The compiler's flag is set where the compiler is used (`compiled`). A torch
    without that call gets the public one. Listed in betavae/compat/__init__.py; tested in
    tests/test_runtime.py."""
    switch = getattr(torch._C, "_set_deterministic_algorithms", None)
    if switch is None:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        switch(True, warn_only=warn_only)


def compiled(function):
    """torch.compile(function), with TorchInductor's deterministic mode (no choice of kernels by
    timing them) when deterministic algorithms are on, as torch.use_deterministic_algorithms sets it."""
    import torch._inductor.config as inductor_config

    inductor_config.deterministic = torch.are_deterministic_algorithms_enabled()
    return torch.compile(function)


def check_memory(needed_bytes: int, what: str, device: torch.device) -> None:
    """Refuse, before allocating, a run whose estimated need exceeds the device's free memory."""
    available = available_memory(device)
    if available is not None and needed_bytes > available:
        raise DeviceError(f"{what} needs about {needed_bytes / GIB:.1f} GiB of memory, more than the "
                          f"{available / GIB:.1f} GiB free on {device.type}")


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device, or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages, size = os.sysconf_names.get("SC_AVPHYS_PAGES"), os.sysconf_names.get("SC_PAGE_SIZE")
    return os.sysconf(pages) * os.sysconf(size) if pages and size else None


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Keep the memory that freed tensors return to malloc in the process, for the next step to reuse.

    PyTorch's CPU allocator hands every activation back to malloc, and glibc gives large blocks
    back to the kernel (those above its mmap threshold, and a heap top above its trim threshold),
    so every training step faulted its activations in again as fresh zeroed pages. Fixed, high
    thresholds keep those pages in the heap (docs/performance.md has the measurement). The peak
    memory is unchanged; it is only not returned between steps. Results are unaffected. Returns
    whether the setting was applied: a no-op where malloc is not glibc's.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
