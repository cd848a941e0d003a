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
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import sys

from betavae.errors import BetaVAEError

# torchrun options that only say how many processes and how they meet; value-less ones map to None.
TORCHRUN_OPTIONS = {
    "nnodes": "value", "nproc-per-node": "value", "standalone": None, "rdzv-backend": "value",
    "rdzv-endpoint": "value", "rdzv-id": "value", "rdzv-conf": "value", "max-restarts": "value",
    "monitor-interval": "value", "node-rank": "value", "master-addr": "value", "master-port": "value",
    "local-addr": "value", "role": "value", "redirects": "value", "tee": "value", "log-dir": "value",
}
# srun options that place and size the job; none of them names a program to run.
SRUN_OPTIONS = {
    "nodes": "value", "N": "value", "ntasks": "value", "n": "value", "ntasks-per-node": "value",
    "cpus-per-task": "value", "c": "value", "gpus": "value", "gpus-per-node": "value", "gpus-per-task": "value",
    "gres": "value", "partition": "value", "p": "value", "account": "value", "A": "value", "time": "value",
    "t": "value", "job-name": "value", "J": "value", "mem": "value", "mem-per-cpu": "value", "qos": "value",
    "q": "value", "constraint": "value", "C": "value", "nodelist": "value", "w": "value", "exclude": "value",
    "x": "value", "cpu-bind": "value", "exclusive": None, "kill-on-bad-exit": None, "K": None,
}
SRUN_STEP_VARIABLE = "BETAVAE_SRUN_STEP"  # set for the copies srun starts, so they start torchrun, not srun
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


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
    counts = dict(torchrun)
    for name in ("nnodes", "nproc-per-node"):
        count = counts.get(name)
        if count is not None and count.isdigit() and int(count) < 1:
            raise LauncherError(f"torchrun's --{name} must be positive")
    return launcher


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
        elif has_value:
            options.append((name, value))
        elif i + 1 < len(words) and not words[i + 1].startswith("-"):
            i += 1
            options.append((name, words[i]))
        else:
            raise LauncherError(f"{program} option {word!r} needs a value")
        i += 1
    return tuple(options)


def _arguments(options, environ: dict[str, str], long_only: bool) -> list[str]:
    """--name=value for long options (and for every torchrun option), -n value for short ones."""
    arguments = []
    for name, value in options:
        if long_only or len(name) > 1:
            arguments.append(f"--{name}" if value is None else f"--{name}={expand(value, environ)}")
        else:
            arguments += [f"-{name}"] if value is None else [f"-{name}", expand(value, environ)]
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


class ProcessStopped(BetaVAEError, RuntimeError):
    """A process of a data-parallel run died; torchrun stopped the others."""


def run_torchrun(launcher: Launcher, module: str, arguments: list[str]) -> None:
    """Start the run's processes with PyTorch's launcher (what the torchrun command calls) and wait.

    A process killed or failing without its own message becomes one ProcessStopped line naming it;
    processes that reported their own error (exit status 1) leave the talking to it; Ctrl-C or
    SIGTERM to this process stops them all and raises KeyboardInterrupt."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args([*launcher.torchrun_arguments(dict(os.environ)), "-m", module, *arguments])
    # torchrun logs a summary per failed process; the one line below says what happened instead.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun.run(args)
    except ChildFailedError as error:
        raise _stopped(error.failures, launcher.world_size) from None
    except SignalException:
        raise KeyboardInterrupt from None


def _stopped(failures: dict, size: int | None) -> BaseException:
    """The cause among the failed processes: one killed by a signal other than the SIGTERM with which
    torchrun stops the rest, or that exited with a status other than an error it reported itself (1)
    or the loss of a peer."""
    causes = {rank: failure for rank, failure in failures.items() if failure.exitcode not in (1, PEER_LOST_STATUS)}
    if not causes:
        return SystemExit(1)  # the processes said what went wrong themselves
    stopped_by_torchrun = -signal.SIGTERM
    rank, failure = min(causes.items(), key=lambda item: (item[1].exitcode == stopped_by_torchrun, item[0]))
    if failure.exitcode < 0:
        how = f"was killed by {signal.Signals(-failure.exitcode).name}"
    else:
        how = f"exited with status {failure.exitcode}"
    of = f" of {size}" if size else ""
    return ProcessStopped(f"process {rank}{of} (pid {failure.pid}) {how}; torchrun stopped the others")
