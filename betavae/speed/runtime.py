"""Where and how the arithmetic runs: device, autocast precision, memory layout, determinism, and
whether a run fits in memory. Chosen once from params."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import platform
import resource
import typing
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from betavae import errors
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


class DeviceSetting(typing.NamedTuple):
    """How a caller's user chooses the device, so that a refusal names the setting as they write it."""

    spelling: str  # the setting, {} for the value
    where: str = ""  # where it is set, if the spelling does not say


PARAMS_DEVICE = DeviceSetting("device: {}", " in params.yaml")  # the stages
COMMAND_LINE_DEVICE = DeviceSetting("--device {}")  # the `betavae` command
API_DEVICE = DeviceSetting('device="{}"')  # betavae.uses.api.load


def resolve_device(name: str, setting: DeviceSetting = PARAMS_DEVICE) -> torch.device:
    """auto (CUDA when present, else the CPU), cpu or cuda: the device param's choices; a refusal names
    the setting as `setting` spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spelled = setting.spelling.format
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{spelled('cuda')} was requested, but CUDA is not available on this machine "
                          f"(use {spelled('auto')} or {spelled('cpu')}{setting.where})")
    if name in ("cpu", "cuda"):
        return torch.device(name)
    raise DeviceError(f"{spelled(name)} is not a device this project runs on (use {spelled('auto')}, "
                      f"{spelled('cpu')} or {spelled('cuda')}{setting.where})")


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
    """Refuse, before allocating, a run whose estimated need exceeds the memory this process can still
    have on the device, under every limit that applies to it (memory_limits); `what` names the
    settings that ask for it, and an allocation that fails anyway is reported as theirs too
    (betavae.errors.out_of_memory)."""
    errors.memory_asked_by(what)
    limits = memory_limits(device)
    if not limits:
        return
    tightest = min(limits, key=lambda limit: limit.available)
    if needed_bytes > tightest.available:
        raise DeviceError(f"{what} needs about {needed_bytes / GIB:.1f} GiB of memory, more than the "
                          f"{max(tightest.available, 0) / GIB:.1f} GiB free on {device.type}{tightest.where}")


@dataclasses.dataclass(frozen=True)
class MemoryLimit:
    """Bytes this process can still allocate under one limit, and which limit, as a message says it."""

    available: int
    where: str  # "" for the device's free memory, else the limit: " under this process's ..."


def available_memory(device: torch.device) -> int | None:
    """Bytes this process can still allocate on the device under every limit, or None where none can be told."""
    limits = memory_limits(device)
    return min(limit.available for limit in limits) if limits else None


def memory_limits(device: torch.device, proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup"),
                  rlimit: typing.Callable[[int], tuple[int, int]] = resource.getrlimit) -> list[MemoryLimit]:
    """Every limit on what this process can still allocate on the device: on CUDA the GPU's free
    memory; on the CPU the machine's (MemAvailable), the process's own address-space and data-size
    limits (`ulimit -v`, `ulimit -d`, less what it already maps), and the memory limit of its control
    group and of each group above it (cgroup v2 memory.max less memory.current, v1
    memory.limit_in_bytes less memory.usage_in_bytes, the page cache it could drop not counted as
    used). proc and cgroup are where /proc and /sys/fs/cgroup are read (tests give others)."""
    if device.type == "cuda":
        return [MemoryLimit(torch.cuda.mem_get_info(device)[0], "")]
    found = [*_machine_memory(proc), *_process_limits(proc, rlimit)]
    for hierarchy, path in _cgroups(proc):
        if hierarchy == "v2":
            for base in (cgroup, cgroup / "unified"):
                found += _cgroup_limits(base, path, "memory.max", "memory.current", "inactive_file")
        else:
            found += _cgroup_limits(cgroup / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                                    "total_inactive_file")
    return found


def _machine_memory(proc: Path) -> list[MemoryLimit]:
    available = _fields(proc / "meminfo").get("MemAvailable")
    if available is None:
        pages, size = os.sysconf_names.get("SC_AVPHYS_PAGES"), os.sysconf_names.get("SC_PAGE_SIZE")
        available = os.sysconf(pages) * os.sysconf(size) if pages and size else None
    return [] if available is None else [MemoryLimit(available, "")]


def _process_limits(proc: Path, rlimit) -> list[MemoryLimit]:
    status = _fields(proc / "self" / "status")
    found = []
    for limit, used, name in ((resource.RLIMIT_AS, "VmSize", "address-space limit (`ulimit -v`)"),
                              (resource.RLIMIT_DATA, "VmData", "data-size limit (`ulimit -d`)")):
        soft = rlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and used in status:
            found.append(MemoryLimit(soft - status[used], f" under this process's {name} of {soft / GIB:.1f} GiB"))
    return found


def _fields(path: Path) -> dict[str, int]:
    """A /proc file of `Name: value kB` lines as {name: bytes}; {} where it cannot be read."""
    found = {}
    try:
        text = path.read_text()
    except OSError:
        return found
    for line in text.splitlines():
        name, _, value = line.partition(":")
        words = value.split()
        if len(words) == 2 and words[0].isdecimal() and words[1] == "kB":
            found[name] = int(words[0]) * 1024
    return found


def _cgroups(proc: Path) -> list[tuple[str, str]]:
    """("v2", path) and ("v1", path) of this process's control groups that can hold a memory limit."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1] == "":
            found.append(("v2", parts[2]))
        elif len(parts) == 3 and "memory" in parts[1].split(","):
            found.append(("v1", parts[2]))
    return found


_V1_UNLIMITED = 2**62  # cgroup v1 writes "no limit" as the largest page-aligned 63-bit number


def _cgroup_limits(base: Path, path: str, limit_file: str, usage_file: str, cache_key: str) -> list[MemoryLimit]:
    """The limit of the group at path under base and of every group above it. Inside a cgroup namespace,
    or a container that mounts only its own group, base itself is the process's group."""
    relative = PurePosixPath(path.lstrip("/"))
    found = []
    for directory in dict.fromkeys([relative, *relative.parents]):
        group = base / directory
        try:
            text = (group / limit_file).read_text().strip()
            limit = None if text == "max" else int(text)
            used = int((group / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit is None or limit >= _V1_UNLIMITED:
            continue
        cache = _stat(group / "memory.stat").get(cache_key, 0)
        found.append(MemoryLimit(limit - (used - min(cache, used)),
                                 f" under its control group's limit of {limit / GIB:.1f} GiB ({group / limit_file})"))
    return found


def _stat(path: Path) -> dict[str, int]:
    try:
        words = [line.split() for line in path.read_text().splitlines()]
    except OSError:
        return {}
    return {pair[0]: int(pair[1]) for pair in words if len(pair) == 2 and pair[1].isdecimal()}


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
