"""How the train stage starts its processes: `launcher` in params.yaml, read as data, never run by a shell.

    python                                          one process (the default)
    torchrun --standalone --nproc-per-node 4        4 processes on this machine
    srun --ntasks-per-node 1 torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d ...

dvc.yaml's command is fixed (`python -m stages.train ...`); the stage parses `launcher` into words
(shlex, no expansion), accepts only the options below, and starts the processes itself with an
argument list: torchrun through PyTorch's own launcher API in this process, srun by replacing this
process with `srun <its options> python -m stages.train ...`, whose copy on each node then starts
torchrun. An option value may name an environment variable (`--nnodes $SLURM_NNODES`), which is
looked up, not evaluated. Nothing else in the value can run: there is no shell, and an option that
would choose what is executed (torchrun's --no-python, --run-path, a script) is refused.

Values are checked for form where params are checked (`parse`), and against the machine where the
run starts (`check_machine`: a GPU for `gpu`, enough cores or GPUs, host names that resolve, ...).
A run of several machines stops in one line, on each machine, when one of them stops or the network
between them fails (`run_torchrun`): a process waits BETAVAE_PEER_TIMEOUT seconds for the others.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import sys
from pathlib import Path

from betavae.errors import BetaVAEError, LastWords

# Accepted options and the values each takes (a full-match pattern, and what it is in words); a
# value-less option maps to None. A value may name an environment variable, checked once it is
# looked up, when the processes start.
_COUNT = r"[1-9][0-9]{0,5}"
_HOST = r"[A-Za-z0-9_.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]"
_PORT = r"[1-9][0-9]{0,4}"
_NAME = (r"[A-Za-z0-9_.\-]{1,128}", "a name of letters, digits, '.', '_' and '-'")
_STREAMS = (r"[0-3]|[0-9]{1,6}:[0-3](,[0-9]{1,6}:[0-3])*", "0 to 3, or RANK:0-3,... per process")
_TEXT = (r"[^\x00-\x1f\s]{1,256}", "one word of at most 256 characters")
# torchrun options that only say how many processes and how they meet.
TORCHRUN_OPTIONS = {
    "nnodes": (f"{_COUNT}(:{_COUNT})?", "a number of nodes, or MIN:MAX"),
    "nproc-per-node": (f"{_COUNT}|auto|cpu|gpu", "a positive number of processes, or auto, cpu or gpu"),
    "standalone": None,
    "rdzv-backend": ("c10d|static|etcd|etcd-v2", "c10d, static, etcd or etcd-v2"),
    "rdzv-endpoint": (f"({_HOST})(:{_PORT})?", "HOST or HOST:PORT"),
    "rdzv-id": _NAME,
    "rdzv-conf": (r"\w{1,64}=[\w.:\-]{1,128}(,\w{1,64}=[\w.:\-]{1,128})*", "KEY=VALUE,..."),
    "max-restarts": (r"[0-9]{1,4}", "a number of restarts, 0 or more"),
    "monitor-interval": (r"[0-9]{1,5}(\.[0-9]{1,6})?", "a number of seconds"),
    "node-rank": (r"[0-9]{1,6}", "a node's number, 0 or more"),
    "master-addr": (_HOST, "a host name or address"),
    "master-port": (_PORT, "a port, 1 to 65535"),
    "local-addr": (_HOST, "a host name or address"),
    "role": _NAME,
    "redirects": _STREAMS,
    "tee": _STREAMS,
    "log-dir": (r"[^\x00-\x1f]{1,4096}", "a directory"),
}
# srun options that place and size the job; none of them names a program to run.
_SRUN_COUNT = (_COUNT, "a positive number")
SRUN_OPTIONS = {
    "nodes": (f"{_COUNT}(-{_COUNT})?", "a number of nodes, or MIN-MAX"), "N": (f"{_COUNT}(-{_COUNT})?", "a number"),
    "ntasks": _SRUN_COUNT, "n": _SRUN_COUNT, "ntasks-per-node": _SRUN_COUNT, "cpus-per-task": _SRUN_COUNT,
    "c": _SRUN_COUNT, "gpus": _TEXT, "gpus-per-node": _TEXT, "gpus-per-task": _TEXT, "gres": _TEXT,
    "partition": _TEXT, "p": _TEXT, "account": _TEXT, "A": _TEXT, "time": _TEXT, "t": _TEXT, "job-name": _NAME,
    "J": _NAME, "mem": _TEXT, "mem-per-cpu": _TEXT, "qos": _TEXT, "q": _TEXT, "constraint": _TEXT, "C": _TEXT,
    "nodelist": _TEXT, "w": _TEXT, "exclude": _TEXT, "x": _TEXT, "cpu-bind": _TEXT,
    "exclusive": None, "kill-on-bad-exit": None, "K": None,
}
DEFAULT_JOIN_TIMEOUT_S = 600  # torchrun's, for c10d's rendezvous
MAX_JOIN_TIMEOUT_S = 3600  # the longest a multi-node run may wait for its nodes (torchrun's own default: 600 s)
SRUN_STEP_VARIABLE = "BETAVAE_SRUN_STEP"  # set for the copies srun starts, so they start torchrun, not srun
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_NEGATIVE = re.compile(r"-[0-9.]+")  # a value such as -1, read as a value (and refused as one), not as an option


class LauncherError(BetaVAEError, ValueError):
    """A launcher value that is not `python` or an accepted torchrun/srun command line."""


@dataclasses.dataclass(frozen=True)
class Launcher:
    srun: tuple[tuple[str, str | None], ...] = ()  # (option, value) pairs, in order
    torchrun: tuple[tuple[str, str | None], ...] = ()
    uses_srun: bool = False
    uses_torchrun: bool = False

    @property
    def world_size(self) -> int | None:
        """Processes started: 1 for python, nnodes * nproc-per-node for torchrun, None where that
        is decided when they start (--nproc-per-node gpu/auto, an elastic MIN:MAX, a variable)."""
        if not self.uses_torchrun:
            return 1
        options = dict(self.torchrun)
        nodes, per_node = options.get("nnodes") or "1", options.get("nproc-per-node") or "1"
        low, _, high = nodes.partition(":")
        nodes = low if not high or low == high else ""
        if not (nodes.isdigit() and per_node.isdigit()):
            return None
        return int(nodes) * int(per_node)

    def torchrun_arguments(self, environ: dict[str, str]) -> list[str]:
        """torchrun's options as an argument list, variables looked up in environ."""
        return _arguments(self.torchrun, environ, long_only=True)

    def meeting(self, environ: dict[str, str]) -> str | None:
        """For a run of several nodes, where they meet and how long they wait for each other there,
        for the log; None for one node."""
        options = dict(self.torchrun)
        nodes = expand(options.get("nnodes") or "1", environ)
        if not self.uses_torchrun or nodes == "1":
            return None
        place = options.get("rdzv-endpoint") or f"{options.get('master-addr')}:{options.get('master-port') or 29500}"
        conf = dict(pair.split("=", 1) for pair in (options.get("rdzv-conf") or "").split(",") if "=" in pair)
        wait = conf.get("join_timeout", str(DEFAULT_JOIN_TIMEOUT_S))
        return (f"waiting for {nodes} nodes to meet at {expand(place, environ)}: torchrun gives up after {wait} s "
                "without them (--rdzv-conf join_timeout=SECONDS)")

    def srun_arguments(self, environ: dict[str, str]) -> list[str]:
        return _arguments(self.srun, environ, long_only=False)


def parse(value: str) -> Launcher:
    """`python` or `[srun OPTIONS] torchrun OPTIONS` -> Launcher; LauncherError naming what is wrong."""
    try:
        words = shlex.split(value, posix=True)
    except ValueError as error:
        raise LauncherError(f"cannot be split into words ({error})") from None
    if words == ["python"]:
        return Launcher()
    if "torchrun" not in words:
        raise LauncherError("must be `python`, or `[srun OPTIONS] torchrun OPTIONS`")
    split = words.index("torchrun")
    before, after = words[:split], words[split + 1:]
    if before and before[0] != "srun":
        raise LauncherError(f"only `srun` may come before torchrun, not {before[0]!r}")
    srun = _options(before[1:], SRUN_OPTIONS, "srun")
    torchrun = _options(after, TORCHRUN_OPTIONS, "torchrun")
    launcher = Launcher(srun, torchrun, uses_srun=bool(before), uses_torchrun=True)
    _check_torchrun(dict(torchrun))
    return launcher


def _check_torchrun(options: dict[str, str | None]) -> None:
    """What the options mean together: a run of several nodes needs a place where they meet, and
    waits there a bounded time."""
    nodes = options.get("nnodes") or "1"
    for name, value in options.items():
        if name in ("master-port", "rdzv-endpoint") and value and not _VARIABLE.search(value):
            port = value.rsplit(":", 1)[-1] if name == "rdzv-endpoint" and ":" in value.lstrip("[") else None
            port = value if name == "master-port" else port
            if port is not None and not 1 <= int(port) <= 65535:
                raise LauncherError(f"torchrun's --{name} {value}: a port must be 1 to 65535")
    if ":" in nodes and not _VARIABLE.search(nodes):
        low, high = (int(part) for part in nodes.split(":"))
        if low > high:
            raise LauncherError(f"torchrun's --nnodes {nodes}: MIN must not exceed MAX")
    if nodes == "1":
        return
    if "standalone" in options:
        raise LauncherError("torchrun's --standalone runs on one machine, but --nnodes asks for several")
    if not options.get("rdzv-endpoint") and not options.get("master-addr"):
        raise LauncherError(f"torchrun with --nnodes {nodes} needs --rdzv-endpoint HOST:PORT (or --master-addr) "
                            "so that its nodes can meet")
    rank = options.get("node-rank")
    if rank and nodes.isdigit() and not _VARIABLE.search(rank) and int(rank) >= int(nodes):
        raise LauncherError(f"torchrun's --node-rank {rank} must be below --nnodes {nodes}")
    conf = dict(pair.split("=", 1) for pair in (options.get("rdzv-conf") or "").split(",") if "=" in pair)
    timeout = conf.get("join_timeout")
    if timeout is not None and not (timeout.isdigit() and 1 <= int(timeout) <= MAX_JOIN_TIMEOUT_S):
        raise LauncherError(f"torchrun's --rdzv-conf join_timeout={timeout}: the nodes may wait 1 to "
                            f"{MAX_JOIN_TIMEOUT_S} seconds for each other")


def _options(words: list[str], allowed: dict[str, str | None], program: str) -> tuple[tuple[str, str | None], ...]:
    options, i = [], 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-") or word in ("-", "--"):
            raise LauncherError(f"{program}: {word!r} is not an option; the program to run is fixed "
                                "(stages.train)")
        name, has_value, value = word.lstrip("-").partition("=")
        name = name.replace("_", "-") if len(name) > 1 else name
        if name not in allowed:
            known = ", ".join(f"--{option}" if len(option) > 1 else f"-{option}" for option in allowed)
            raise LauncherError(f"{program} option {word.split('=')[0]!r} is not accepted (accepted: {known})")
        if allowed[name] is None:
            if has_value:
                raise LauncherError(f"{program} option --{name} takes no value")
            options.append((name, None))
            i += 1
            continue
        if not has_value:
            if i + 1 >= len(words) or (words[i + 1].startswith("-") and not _NEGATIVE.fullmatch(words[i + 1])):
                raise LauncherError(f"{program} option {word!r} needs a value")
            i += 1
            value = words[i]
        check_value(program, name, value, allowed)
        options.append((name, value))
        i += 1
    return tuple(options)


def check_value(program: str, name: str, value: str, allowed: dict) -> None:
    """value fits what option `name` takes (a value naming a variable is checked once it is looked up)."""
    if _VARIABLE.search(value):
        return
    pattern, what = allowed[name]
    if not re.fullmatch(pattern, value):
        flag = f"--{name}" if len(name) > 1 else f"-{name}"
        raise LauncherError(f"{program} option {flag} {_shown(value)}: must be {what}")


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _arguments(options, environ: dict[str, str], long_only: bool) -> list[str]:
    """--name=value for long options (and for every torchrun option), -n value for short ones; values
    that name variables are looked up and then checked as a value written out would be."""
    arguments = []
    program, allowed = ("torchrun", TORCHRUN_OPTIONS) if long_only else ("srun", SRUN_OPTIONS)
    expanded = {}
    for name, value in options:
        if value is not None:
            value = expand(value, environ)
            check_value(program, name, value, allowed)
            expanded[name] = value
        if long_only or len(name) > 1:
            arguments.append(f"--{name}" if value is None else f"--{name}={value}")
        else:
            arguments += [f"-{name}"] if value is None else [f"-{name}", value]
    if long_only:
        _check_torchrun({**{name: None for name, value in options if value is None}, **expanded})
    return arguments


def expand(value: str, environ: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced by the environment's values (looked up, never evaluated)."""
    def lookup(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            raise LauncherError(f"launcher names ${name}, which is not set in the environment")
        return environ[name]
    return _VARIABLE.sub(lookup, value)


def describe(launcher: Launcher, environ: dict[str, str]) -> str:
    """The command line the processes are started with, for the log."""
    words = []
    if launcher.uses_srun:
        words += ["srun", *launcher.srun_arguments(environ)]
    if launcher.uses_torchrun:
        words += ["torchrun", *launcher.torchrun_arguments(environ)]
    return shlex.join(words)


def is_launcher_process(launcher: Launcher, environ: dict[str, str]) -> bool:
    """Whether this process must start the run's processes rather than train: a launcher other than
    python, and not already one of the processes torchrun started."""
    return launcher.uses_torchrun and "TORCHELASTIC_RUN_ID" not in environ and "LOCAL_RANK" not in environ


def stage_command(module: str, arguments: list[str]) -> list[str]:
    """The python command a launched copy of the stage runs."""
    return [sys.executable, "-m", module, *arguments]


def srun_command(launcher: Launcher, module: str, arguments: list[str], environ: dict[str, str]) -> list[str]:
    return ["srun", *launcher.srun_arguments(environ), *stage_command(module, arguments)]


def needs_srun(launcher: Launcher, environ: dict[str, str]) -> bool:
    return launcher.uses_srun and environ.get(SRUN_STEP_VARIABLE) != "1"


def exec_srun(launcher: Launcher, module: str, arguments: list[str]) -> None:
    """Replace this process with srun, which starts a copy of the stage on each node."""
    command = srun_command(launcher, module, arguments, dict(os.environ))
    os.environ[SRUN_STEP_VARIABLE] = "1"
    try:
        os.execvp(command[0], command)
    except OSError as error:
        raise LauncherError(f"cannot start srun ({error.strerror})") from None


PEER_LOST_STATUS = 3  # a process that stops because another one did: a consequence, not the cause
# How long a process waits in a collective for the others (a machine gone, a network cut) before the run
# stops; read from the environment, not params.yaml, as it changes no output: only how soon a broken run ends.
PEER_TIMEOUT_VARIABLE = "BETAVAE_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT_S = 300  # the longest process 0's validation between two epochs may keep the others waiting
MAX_PEER_TIMEOUT_S = 86_400
FATAL_ONLY = 3  # c10's log level of TORCH_CPP_LOG_LEVEL=FATAL: the launcher's C++ logs (_quiet_native_logs)
AGENT_GRACE_S = 10  # after this machine's processes stopped for a lost peer, torchrun's agent has this long to end


class ProcessStopped(BetaVAEError, RuntimeError):
    """A process of a data-parallel run died, or lost the others; torchrun stopped this machine's processes."""


class MachineMismatch(LauncherError):
    """A launcher value of the right form that this machine cannot run (no GPU for `gpu`, a host that
    does not resolve, ...): found where the run starts, before any process does."""

    def __init__(self, reason: str):
        super().__init__(f"launcher cannot run on this machine: {reason}")


def peer_timeout(environ: dict[str, str]) -> int:
    """Seconds a process of a data-parallel run waits for the others in a collective ($BETAVAE_PEER_TIMEOUT)."""
    value = environ.get(PEER_TIMEOUT_VARIABLE, str(DEFAULT_PEER_TIMEOUT_S))
    if not (value.isdecimal() and 1 <= int(value) <= MAX_PEER_TIMEOUT_S):
        raise LauncherError(f"the environment sets {PEER_TIMEOUT_VARIABLE}={_shown(value)}: it must be a number of "
                            f"seconds, 1 to {MAX_PEER_TIMEOUT_S}, or unset ({DEFAULT_PEER_TIMEOUT_S})")
    return int(value)


def check_machine(launcher: Launcher, environ: dict[str, str], device: str) -> None:
    """The launcher's values against this machine, where the run starts (params may be checked on a
    laptop and run on a GPU host): MachineMismatch naming the value and what this machine has."""
    import shutil

    if needs_srun(launcher, environ):  # the rest is checked by srun's copies, on the machines that run them
        if shutil.which("srun") is None:
            raise MachineMismatch("launcher starts with srun, but srun (Slurm) is not installed on this machine: "
                                  "run it on a Slurm cluster's node, or use torchrun alone")
        return
    if not launcher.uses_torchrun:
        return
    peer_timeout(environ)
    options = {name: (None if value is None else expand(value, environ)) for name, value in launcher.torchrun}
    _check_processes(options.get("nproc-per-node") or "1", device)
    backend = options.get("rdzv-backend") or "static"
    if backend.startswith("etcd") and not _importable("etcd"):
        raise MachineMismatch(f"torchrun's --rdzv-backend {backend} needs the python-etcd package, which is not "
                              "installed here; use --rdzv-backend c10d")
    for name in ("rdzv-endpoint", "master-addr", "local-addr"):
        if options.get(name):
            _check_resolves(name, options[name])


def _check_processes(per_node: str, device: str) -> None:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpus = device == "cuda" or (device == "auto" and gpus > 0)
    if per_node == "gpu" and not gpus:
        raise MachineMismatch("torchrun's --nproc-per-node gpu starts one process per GPU, but this machine has no "
                              f"CUDA device (torch {torch.__version__}): use a number of processes, or run it on a "
                              "GPU machine")
    if not per_node.isdecimal():
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if on_gpus and int(per_node) > gpus:
        raise MachineMismatch(f"torchrun's --nproc-per-node {per_node} starts a process per GPU, but this machine "
                              f"has {gpus} GPU{'s' if gpus != 1 else ''}")
    if not on_gpus and int(per_node) > cores:
        raise MachineMismatch(f"torchrun's --nproc-per-node {per_node} starts more processes than the {cores} "
                              f"CPU core{'s' if cores != 1 else ''} this process may use: each would wait for "
                              "the others' turn on a core")


def _check_resolves(name: str, value: str) -> None:
    import socket

    host = value.rsplit(":", 1)[0] if ":" in value.lstrip("[") and not value.startswith("[") else value
    host = host.split("]")[0].lstrip("[") if host.startswith("[") else host
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise MachineMismatch(f"torchrun's --{name} {value}: {host} does not resolve to an address on this "
                              f"machine ({reason})") from None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def report_to_launcher(message: str) -> None:
    """Leave, where the launcher on this machine reads it, that this process stops (PEER_LOST_STATUS)
    because it lost another process of the run, and what its transport said (errors.LastWords)."""
    LastWords.leave(message, PEER_LOST_STATUS)


def run_torchrun(launcher: Launcher, module: str, arguments: list[str], hint: str = "") -> None:
    """Start the run's processes with PyTorch's launcher (what the torchrun command calls) and wait.

    A process killed or failing without its own message, the loss of another machine (its
    processes' connections broken, or no answer within BETAVAE_PEER_TIMEOUT seconds) and nodes that
    never meet become one ProcessStopped line saying which, ending with hint; processes that reported
    their own error (exit status 1) leave the talking to it; Ctrl-C or SIGTERM to this process stops
    them all and raises KeyboardInterrupt. When this machine's processes have stopped for a lost peer
    and torchrun's agent cannot reach the rendezvous to end the run (a cut network), the line is said
    AGENT_GRACE_S later and this process ends. When the agent loses the rendezvous after this
    machine's processes stopped (the machine holding it ended its part of the run first), the line
    is said from what those processes left (errors.LastWords), as if the agent had seen them stop."""
    import logging
    import tempfile
    import time

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError

    environ = dict(os.environ)
    if hint and launcher.meeting(environ) is not None:
        hint = f"{hint}, on every machine of the run"
    args = torchrun.parse_args([*launcher.torchrun_arguments(environ), "-m", module, *arguments])
    # torchrun logs a summary per failed process; the one line below says what happened instead.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    _quiet_native_logs(environ)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="betavae-torchrun-") as scratch:
        args.log_dir = args.log_dir or scratch
        logs = Path(args.log_dir)
        watchdog = _Watchdog(logs, started, module.rsplit(".", 1)[-1], launcher.world_size, hint)
        if not args.max_restarts:  # a restart stops and starts the processes again: the agent is not stuck
            watchdog.start()
        try:
            torchrun.run(args)
        except ChildFailedError as error:
            raise stop_reason(error.failures, launcher.world_size, hint) from None
        except SignalException:
            raise KeyboardInterrupt from None
        except RendezvousTimeoutError:
            raise ProcessStopped(_unmet(launcher, environ) + _then(hint)) from None
        except (RendezvousError, _dist_error()) as error:
            reported = _reported(logs, started, launcher.world_size, hint)
            if reported is not None:
                raise reported from None
            place = dict(launcher.torchrun).get("rdzv-endpoint") or dict(launcher.torchrun).get("master-addr")
            raise ProcessStopped(f"the rendezvous at {expand(place or 'localhost', environ)} failed: "
                                 f"{_cause(error)}{_then(hint)}") from None
        finally:
            watchdog.stop.set()


def _reported(logs: Path, since: float, size: int | None, hint: str) -> BaseException | None:
    """What to raise, from the last words this machine's processes left in logs since the run started;
    None where they left none."""
    found = LastWords.found(logs, since)
    return stop_reason(found, size, hint) if found else None


def _quiet_native_logs(environ: dict[str, str]) -> None:
    """torchrun's agent runs in this process, and torch's C++ side logs what the agent meets (a
    rendezvous host that went away, one not yet there) as warnings and errors with C++ stack traces,
    before the Python error that becomes this launcher's one line. TORCH_CPP_LOG_LEVEL would keep them
    to fatal ones, but torch reads it only when it is imported, which the stage has done by now; so
    the flag it sets (c10's FLAGS_caffe2_log_level) is set here, unless the user set the variable."""
    import ctypes

    import torch

    if "TORCH_CPP_LOG_LEVEL" in environ:
        return
    for library in sorted((Path(torch.__file__).parent / "lib").glob("*c10.*")):
        try:
            ctypes.c_int.in_dll(ctypes.CDLL(str(library)), "FLAGS_caffe2_log_level").value = FATAL_ONLY
            return
        except (OSError, ValueError):
            continue


def _dist_error() -> type:
    import torch.distributed

    return torch.distributed.DistError


def _cause(error: BaseException) -> str:
    """The innermost message of an exception chain, the one that says what failed."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]


def _then(hint: str) -> str:
    return f"; {hint}" if hint else ""


def _unmet(launcher: Launcher, environ: dict[str, str]) -> str:
    options = dict(launcher.torchrun)
    nodes = expand(options.get("nnodes") or "1", environ)
    conf = dict(pair.split("=", 1) for pair in (options.get("rdzv-conf") or "").split(",") if "=" in pair)
    wait = conf.get("join_timeout", str(DEFAULT_JOIN_TIMEOUT_S))
    place = options.get("rdzv-endpoint") or options.get("master-addr") or "localhost"
    return (f"the {nodes} nodes did not all come to {expand(place, environ)} within {wait} s (--rdzv-conf "
            "join_timeout): start the run on every machine, each able to reach that address")


def stop_reason(failures: dict, size: int | None, hint: str = "") -> BaseException:
    """The cause among this machine's failed processes: one killed by a signal other than the SIGTERM
    with which torchrun stops the rest, or that exited with a status other than an error it reported
    itself (1) or the loss of a peer; else the peer this machine lost; else (an error reported by
    process 0 on another machine) a line pointing there."""
    causes = {rank: failure for rank, failure in failures.items() if failure.exitcode not in (1, PEER_LOST_STATUS)}
    of = f" of {size}" if size else ""
    if causes:
        stopped_by_torchrun = -signal.SIGTERM
        rank, failure = min(causes.items(), key=lambda item: (item[1].exitcode == stopped_by_torchrun, item[0]))
        if failure.exitcode < 0:
            how = f"was killed by {signal.Signals(-failure.exitcode).name}"
        else:
            how = f"exited with status {failure.exitcode}"
        return ProcessStopped(f"process {rank}{of} (pid {failure.pid}) {how}; torchrun stopped the others{_then(hint)}")
    lost = {rank: failure for rank, failure in failures.items() if failure.exitcode == PEER_LOST_STATUS}
    if lost and not any(failure.exitcode == 1 for failure in failures.values()):
        rank, failure = min(lost.items())
        return ProcessStopped(f"process {rank}{of} (pid {failure.pid}) on this machine {lost_peer(failure.message)}; "
                              f"torchrun stopped this machine's processes{_then(hint)}")
    if 0 not in failures:
        rank = min(failures)
        return ProcessStopped(f"process {rank}{of} stopped with an error, which process 0 reports on its machine"
                              f"{_then(hint)}")
    return SystemExit(1)  # the processes said what went wrong themselves


def lost_peer(message: object) -> str:
    """What a process's transport error says was lost, in words: "lost its connection to 10.0.0.2
    (Connection reset by peer)", or "heard nothing from the other processes for 20 s (...)"."""
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", message if isinstance(message, str) else "")
    waited = re.search(r"Timed out waiting (\d+)ms", text)
    if waited:
        return (f"heard nothing from the other processes for {int(waited[1]) // 1000} s ({PEER_TIMEOUT_VARIABLE}): "
                "another machine stopped or the network to it failed")
    peer = re.search(r"\[([0-9A-Fa-f.:]+)\]:\d+", text)
    reason = re.search(r"(Connection (reset|closed|refused)[a-z ]*|Broken pipe|No route to host)", text)
    if peer:
        why = f" ({reason[1].strip()})" if reason else ""
        return f"lost its connection to {peer[1]}{why}: that machine's processes stopped or the network to it failed"
    detail = f" ({text[:120]})" if text else ""
    return f"lost the other processes{detail}: another machine stopped or the network to it failed"


class _Watchdog:
    """Ends this process with the one line once every process torchrun started here has stopped, leaving
    its last words (a lost peer, or an error of its own), and torchrun's agent, waiting on a rendezvous
    it cannot reach, has not ended within AGENT_GRACE_S."""

    def __init__(self, logs: Path, since: float, name: str, size: int | None, hint: str):
        import threading

        self.logs, self.since, self.name, self.size, self.hint = logs, since, name, size, hint
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="betavae-torchrun-watchdog", daemon=True)

    def start(self) -> None:
        if Path("/proc").is_dir():
            self.thread.start()

    def _watch(self) -> None:
        import time

        quiet_since = None
        while not self.stop.wait(0.5):
            if _children(os.getpid()) or not LastWords.found(self.logs, self.since):
                quiet_since = None
                continue
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > AGENT_GRACE_S and not self.stop.is_set():
                self._end()

    def _end(self) -> None:
        from betavae import errors

        of = f" of {self.size}" if self.size else ""
        reported = _reported(self.logs, self.since, self.size, self.hint) or ProcessStopped(
            f"a process{of} on this machine {lost_peer(None)}; torchrun stopped this machine's processes"
            f"{_then(self.hint)}")
        if isinstance(reported, ProcessStopped):
            errors.tell(errors.line(self.name, reported))
        os._exit(1)


def _children(pid: int) -> list[int]:
    """The running processes whose parent is pid (torchrun's agent starts each worker as a child of this
    process); a worker that ended and that the agent, stuck, has not reaped (a zombie) does not count."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if parent == str(pid) and state != "Z":
            found.append(int(stat.parent.name))
    return found
