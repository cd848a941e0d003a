"""Device, precision and determinism settings, chosen once from params."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import platform

import torch

from betavae.params import Params


class DeviceError(RuntimeError):
    """The requested device cannot be used here."""


@dataclasses.dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None runs in fp32
    channels_last: bool
    compile: bool = False  # torch.compile the training forward pass

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def resolve(params: Params) -> Runtime:
    device = _device(params.device)
    return Runtime(device=device, dtype=_autocast_dtype(params.precision, device),
                   channels_last=params.channels_last, compile=params.compile)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: cuda was requested, but CUDA is not available on this machine "
                          "(use device: auto or cpu)")
    return torch.device(name)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def make_deterministic(seed: int, device: torch.device) -> None:
    """Seed every global RNG and ask for deterministic kernels, so reruns give the same bytes."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    # Deterministic mode also NaN-fills every new empty tensor to expose reads of uninitialised
    # memory: a debugging aid that cost 15% of the CPU training step here, for no change in results.
    torch.utils.deterministic.fill_uninitialized_memory = False
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Keep the memory that freed tensors return to malloc in the process, for the next step to reuse.

    PyTorch's CPU allocator hands every activation back to malloc, and glibc gives large blocks
    back to the kernel (those above its mmap threshold, and a heap top above its trim threshold).
    Each training step then faulted in ~80 MB of fresh zeroed pages: 20,000 page faults, about a
    quarter of the CPU step here. Fixed, high thresholds keep those pages in the heap. The peak
    memory is unchanged; it is only not returned between steps. Results are unaffected. Returns
    whether the setting was applied: a no-op where malloc is not glibc's.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
