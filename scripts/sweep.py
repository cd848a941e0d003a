"""Run one machine's share of a parameter sweep as named DVC experiments, and check that every run
reached the shared remote.

    python scripts/sweep.py --grid beta=0.5,1,2 seed=1,2 --set epochs=10 --shard 1/3 --remote origin

The grid is the cartesian product of the --grid values, in the order given; shard i/N takes every
N-th run starting at the i-th, so N machines running shards 1/N ... N/N cover it exactly once. Each
run is queued as `dvc exp run --queue -n <name> -S key=value ...`, its name derived from its params
(`epochs-10_beta-0.5_seed-1`), so shards never clash; `dvc queue start -j JOBS` runs them, and DVC's
auto-push (DVC_EXP_AUTO_PUSH) sends each finished experiment, with its artifacts, to the git
remote and the default DVC remote.

Before anything runs, both remotes are checked: the git remote must answer (`git ls-remote`) and
accept a push (`git push --dry-run`), and the default DVC remote must be set and readable (`dvc
status --cloud`), so a typo or a missing credential fails at once, not after hours of training.
DVC skips, without an error, pushing an experiment whose name the remote already has, so at the end
every run of the shard is looked up on the remote (`git ls-remote`): the script exits non-zero
naming each run that failed, is missing there, or is there with other params. The launcher-specific
part (ssh, a Slurm array, SkyPilot) only has to start this command on each machine: see the README.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import re
import time
from pathlib import Path

from betavae import errors
from betavae.errors import ArgumentParser, BetaVAEError, integer_in, say
from betavae.experiments import tools
from betavae.pipeline import overrides
from betavae.pipeline.params import ParamsError, load_params

POLL_S = 2  # between two looks at DVC's queue files
STATUS_EVERY_S = 30  # `dvc queue status` at least this often, whatever the files say
MAX_JOBS = 64
MAX_RUNS = 10_000
STALLED_S = 60  # queued runs with no worker for this long: start the workers again


class SweepError(BetaVAEError):
    pass


def grid(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """[("beta", ["0.5", "1"]), ("seed", ["1", "2"])] -> every combination, the last key fastest."""
    keys = [key for key, _ in axes]
    return [dict(zip(keys, values)) for values in itertools.product(*(values for _, values in axes))]


def shard(runs: list[dict], index: int, count: int) -> list[dict]:
    """Shard index/count (1-based) of the runs: runs index-1, index-1+count, ..."""
    return runs[index - 1::count]


def run_name(assignments: dict[str, str]) -> str:
    """{"epochs": "10", "beta": "0.5"} -> "epochs-10_beta-0.5": a valid experiment (git ref) name."""
    name = "_".join(f"{key}-{value}" for key, value in assignments.items())
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")


def main() -> None:
    errors.run(_main, "sweep")


def _main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2", type=_axis,
                        help="params to sweep and their values")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", type=_assignment, dest="fixed",
                        help="params set the same in every run (part of each name)")
    parser.add_argument("--shard", default="1/1", type=_shard, help="this machine's share, i/N (default 1/1)")
    parser.add_argument("--remote", default="origin", help="git remote the experiments are pushed to")
    parser.add_argument("--jobs", type=integer_in(1, MAX_JOBS), default=1,
                        help="runs at once on this machine (dvc queue start -j)")
    parser.add_argument("--dry-run", action="store_true", help="print this shard's runs and stop")
    args = parser.parse_args()
    keys = [key for key, _ in args.grid] + [key for key, _ in args.fixed]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise SweepError(f"{repeated[0]} is given more than once in --grid and --set")
    total = math.prod(len(values) for _, values in args.grid)
    if total > MAX_RUNS:
        raise SweepError(f"the grid makes {total:,} runs, more than the {MAX_RUNS:,} a sweep holds (each is a "
                         "training): sweep fewer values, or search the space with scripts/search.py")
    runs = [{**dict(args.fixed), **run} for run in shard(grid(args.grid), *args.shard)]
    _check_runs(runs)
    names = [run_name(run) for run in runs]
    for name, run in zip(names, runs):
        say(f"sweep: {name}: " + " ".join(f"-S {key}={value}" for key, value in run.items()))
    if not runs:
        say(f"sweep: shard {args.shard[0]}/{args.shard[1]} of {len(grid(args.grid))} runs holds none; nothing to run")
        return
    if args.dry_run:
        return
    tools.require_tools("dvc", "git")
    tools.require_repository()
    _require_clean_workspace()
    check_remotes(args.remote)
    env = {**os.environ, "DVC_EXP_AUTO_PUSH": "true", "DVC_EXP_GIT_REMOTE": args.remote}
    for name, run in zip(names, runs):
        _dvc(["exp", "run", "--queue", "-n", name, *(f"-S{key}={value}" for key, value in run.items())], env)
    _run_queue(args.jobs, env)
    problems = check_on_remote(names, args.remote)
    if problems:
        raise SweepError(f"not every run reached {args.remote}: " + "; ".join(problems))
    say(f"sweep: all {len(names)} runs of shard {args.shard[0]}/{args.shard[1]} are on {args.remote}")


def check_remotes(remote: str) -> None:
    """Fail now, naming the remote, if either remote the runs will be pushed to cannot take them."""
    try:
        tools.require_git_remote(remote, Path.cwd())
        tools.require_dvc_remote(Path.cwd())
    except tools.ToolError as error:
        raise SweepError(f"{error}; nothing was run") from None


def _check_runs(runs: list[dict[str, str]]) -> None:
    """Every run's params, params.yaml with its values set, must pass params.yaml's validation."""
    base = load_params().to_dict()
    for run in runs:
        values = {key: overrides.scalar(value, key, "--grid/--set") for key, value in run.items()}
        overrides.run_params(base, values, f"the run {run_name(run)}")


def check_on_remote(names: list[str], remote: str) -> list[str]:
    """One line per run that is missing on the remote, or there with params other than ours."""
    baseline = _git(["rev-parse", "HEAD"]).strip()
    prefix = f"refs/exps/{baseline[:2]}/{baseline[2:]}/"
    local = _refs(_git(["for-each-ref", "--format=%(objectname) %(refname)", prefix]))
    pushed = _refs(_git(["ls-remote", remote, f"{prefix}*"]))
    problems = []
    for name in names:
        if prefix + name not in local:
            problems.append(f"{name}: did not finish here (`dvc queue logs {name}` says why)")
        elif prefix + name not in pushed:
            problems.append(f"{name}: finished here but is not on {remote} (`dvc exp push {remote} {name}`)")
        elif pushed[prefix + name] != local[prefix + name] and not _same_params(remote, prefix + name,
                                                                                local[prefix + name]):
            problems.append(f"{name}: {remote} already has an experiment of this name with other params, so DVC "
                            f"did not push this one; remove that one (`dvc exp remove -g {remote} {name}`) "
                            "or sweep under other names")
    return problems


def _same_params(remote: str, ref: str, local_commit: str) -> bool:
    """Whether the remote's experiment at ref ran with the same params.yaml as ours (another machine
    ran the same run: the results are there, only the commit differs)."""
    scratch = "refs/betavae-sweep/remote"
    _git(["fetch", "--quiet", remote, f"+{ref}:{scratch}"])
    try:
        return _git(["rev-parse", f"{scratch}:params.yaml"]) == _git(["rev-parse", f"{local_commit}:params.yaml"])
    finally:
        _git(["update-ref", "-d", scratch])


def _run_queue(jobs: int, env: dict) -> None:
    """Wait for the queue, asking DVC only when its files show a run taken, started or ended, a run's
    process gone, or STATUS_EVERY_S passed: each `dvc queue status` is a DVC process, over a second of
    CPU, which a look every POLL_S would take from the runs it waits for."""
    _dvc(["queue", "start", "-j", str(jobs)], env)
    idle_since, seen, asked = None, None, -math.inf
    while True:
        time.sleep(POLL_S)
        now = (queue_files(Path.cwd()), _gone_runs(Path.cwd()))
        if now == seen and time.monotonic() - asked < STATUS_EVERY_S:
            continue
        seen, asked = now, time.monotonic()
        status = _dvc(["queue", "status"], env)
        for name in lost_runs(status, Path.cwd()):
            say(f"sweep: {name}: its process stopped mid-run (its queue worker was killed or its machine lost it): "
                "reported failed")
            _dvc(["queue", "kill", name], env)  # DVC marks a run whose process is gone as failed
        queued, running = status.count(" Queued"), status.count(" Running")
        if not queued and not running:
            return
        idle_since = (idle_since or time.monotonic()) if not running else None
        if idle_since and time.monotonic() - idle_since > STALLED_S:  # a worker that died early
            _dvc(["queue", "start", "-j", str(jobs)], env)
            idle_since = None


EXPERIMENTS = Path(".dvc") / "tmp" / "exps"  # DVC's experiment state
RUN_INFO = EXPERIMENTS / "run"  # DVC's record of each queued run's process: {task}/{task}.json
# DVC's Celery queue: a message per queued run in broker/in, moved to broker/processed when a worker
# takes it, and a result file per run that ended. `dvc queue status` itself leaves "pidbox" messages there.
QUEUE_FOLDERS = ("celery/broker/in", "celery/broker/processed", "celery/result")


def queue_files(repo: Path) -> tuple:
    """What changes in DVC's queue files when a run is queued, taken by a worker, started or ended: the
    names of its messages and results, and each run record's size and time; a few stat calls."""
    found: list = []
    for folder in QUEUE_FOLDERS:
        with contextlib.suppress(OSError):
            found += sorted(name for name in os.listdir(repo / EXPERIMENTS / folder) if "pidbox" not in name)
    for record in sorted((repo / RUN_INFO).glob("*/*.json")):
        with contextlib.suppress(OSError):
            stat = record.stat()
            found.append((record.name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _unfinished_runs(repo: Path, task: str = "") -> list[int]:
    """The process ids DVC recorded for runs (of tasks starting with task) that have not ended."""
    import json

    pids = []
    for info in (repo / RUN_INFO).glob(f"{task}*/{task}*.json"):
        try:
            record = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        # A record without a pid is skipped: its process is not known to be gone.
        if isinstance(record, dict) and record.get("returncode") is None and isinstance(record.get("pid"), int):
            pids.append(record["pid"])
    return pids


def _gone_runs(repo: Path) -> frozenset[int]:
    """The recorded processes of unfinished runs that no longer exist: a worker killed mid-run."""
    return frozenset(pid for pid in _unfinished_runs(repo) if not tools.process_exists(pid))


def lost_runs(status: str, repo: Path) -> list[str]:
    """The runs `dvc queue status` says are running whose process no longer exists: DVC keeps showing a
    run as running when the worker that ran it was killed, and its workers would wait for it forever."""
    lost = []
    for line in status.splitlines():
        words = line.split()
        if len(words) < 3 or words[-1] != "Running" or not re.fullmatch(r"[0-9a-f]{7,40}", words[0]):
            continue
        if any(not tools.process_exists(pid) for pid in _unfinished_runs(repo, words[0])):
            lost.append(words[1])
    return lost


def _require_clean_workspace() -> None:
    # Queued runs take the workspace's changes to tracked files with them; every shard must run the
    # committed baseline.
    changed = _git(["status", "--porcelain", "--untracked-files=no"])
    if changed.strip():
        raise SweepError(f"the workspace has uncommitted changes; commit or stash them first:\n{changed}")


def _refs(listing: str) -> dict[str, str]:
    return {ref: sha for sha, ref in (line.split() for line in listing.splitlines() if line.strip())}


def _git(args: list[str]) -> str:
    return _call(["git", *args], os.environ)


def _dvc(args: list[str], env: dict) -> str:
    return _call(["dvc", *args], env)


def _call(command: list[str], env: dict) -> str:
    try:
        return tools.checked(command, Path.cwd(), env)
    except tools.ToolError as error:
        raise SweepError(str(error)) from None


def _axis(text: str) -> tuple[str, list[str]]:
    try:
        return overrides.value_list(text, "--grid")
    except ParamsError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--grid: ")) from None


def _assignment(text: str) -> tuple[str, str]:
    try:
        return overrides.assignment(text, "--set")
    except ParamsError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--set: ")) from None


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(f"expected i/N with 1 <= i <= N, got {text!r}")
    return int(match[1]), int(match[2])


if __name__ == "__main__":
    main()
