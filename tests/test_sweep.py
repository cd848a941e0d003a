"""A sweep split over machines (scripts/sweep.py): two clones act as two machines that share a bare
git repository and a local-directory DVC remote."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from betavae.pipeline import yamlfile
from scripts import compare, sweep

GRID = ["--grid", "beta=0.5,2"]  # two runs: one for each of two machines


def test_shards_cover_the_grid_exactly_once_with_names_from_the_params():
    runs = sweep.grid([("beta", ["0.5", "2"]), ("seed", ["1", "2"])])
    assert runs == [{"beta": "0.5", "seed": "1"}, {"beta": "0.5", "seed": "2"},
                    {"beta": "2", "seed": "1"}, {"beta": "2", "seed": "2"}]
    shards = [sweep.shard(runs, i, 3) for i in (1, 2, 3)]
    assert sorted(map(str, sum(shards, []))) == sorted(map(str, runs))
    assert sweep.run_name({"epochs": "10", "beta": "0.5"}) == "epochs-10_beta-0.5"
    assert sweep.run_name({"launcher": "torchrun --nproc-per-node 2"}) == "launcher-torchrun---nproc-per-node-2"


def test_compare_draws_one_training_budget_and_names_the_runs_it_leaves_out():
    def run(name: str, epochs: int) -> dict:
        return {"name": name, "epochs": epochs}
    smoke = [run("main", 120), run("exp-a", 2), run("exp-b", 2)]  # the reference and two smoke-sized runs
    assert compare.one_budget(smoke, None) == ([run("exp-a", 2), run("exp-b", 2)], [run("main", 120)])
    assert compare.one_budget(smoke, 120) == ([run("main", 120)], [run("exp-a", 2), run("exp-b", 2)])
    assert compare.one_budget([run("main", 120), run("exp", 10)], None)[0] == [run("exp", 10)]  # a tie: the shorter
    assert compare.one_budget([], None) == ([], [])


def test_the_queue_files_change_when_a_run_is_taken_started_or_ended_not_when_dvc_is_asked(tmp_path):
    """The sweep asks `dvc queue status` (a DVC process) only when these change, or a run's process is gone."""
    experiments = tmp_path / sweep.EXPERIMENTS
    for folder in sweep.QUEUE_FOLDERS:
        (experiments / folder).mkdir(parents=True)
    empty = sweep.queue_files(tmp_path)
    (experiments / "celery" / "broker" / "in" / "1_a.celery.msg").write_text("a queued run")
    queued = sweep.queue_files(tmp_path)
    (experiments / "celery" / "broker" / "in" / "2_b.reply.celery.pidbox.msg").write_text("`dvc queue status`")
    assert sweep.queue_files(tmp_path) == queued != empty

    task = "0123456789abcdef0123456789abcdef01234567"
    record = tmp_path / sweep.RUN_INFO / task / f"{task}.json"
    record.parent.mkdir(parents=True)
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    record.write_text(json.dumps({"pid": gone, "returncode": None}))
    started = sweep.queue_files(tmp_path)
    assert started != queued
    status = f"Task     Name             Created    Status\n{task[:7]}  epochs-1_beta-2  12:00 AM   Running\n"
    assert sweep.lost_runs(status, tmp_path) == ["epochs-1_beta-2"]  # its process is gone
    record.write_text(json.dumps({"pid": gone, "returncode": 0}))
    assert sweep.queue_files(tmp_path) != started
    assert sweep.lost_runs(status, tmp_path) == []  # it ended


@pytest.fixture
def machines(tiny_repo, tmp_path, run):
    """origin (bare git), storage (DVC remote), and two clones of it, each with its data cached."""
    repo, env = tiny_repo
    origin, storage = tmp_path / "origin.git", tmp_path / "storage"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], tmp_path, env)
    run(["git", "remote", "add", "origin", str(origin)], repo, env)
    run(["git", "push", "-q", "origin", "main"], repo, env)
    clones = []
    for name in ("first", "second"):
        clone = tmp_path / name
        run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
        run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], clone, env)
        run(["dvc", "repro", "download"], clone, env)
        clones.append(clone)
    return origin, storage, clones, env


def _sweep(clone, env, run, *args, check=True):
    return run([sys.executable, "scripts/sweep.py", *GRID, "--set", "epochs=1", *args], clone, env, check=check)


@pytest.mark.slow
@pytest.mark.parametrize("broken, message", [
    ("git", "git remote 'origin' cannot take the experiments"),
    ("dvc", "no default DVC remote: `dvc remote add -d NAME URL`"),
])
def test_a_remote_that_cannot_take_the_runs_fails_before_anything_runs(tiny_repo, tmp_path, run, broken, message):
    repo, env = tiny_repo
    origin = tmp_path / "origin.git"
    if broken == "git":
        run(["git", "remote", "add", "origin", str(tmp_path / "no-such-repository.git")], repo, env)
    else:
        run(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], tmp_path, env)
        run(["git", "remote", "add", "origin", str(origin)], repo, env)
    result = _sweep(repo, env, run, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"sweep: error: {message}")
    assert "nothing was run" in result.stderr
    assert run(["dvc", "queue", "status"], repo, env).stdout.count("Queued") == 0
    assert run(["dvc", "exp", "list", "--name-only"], repo, env).stdout.strip() == ""


@pytest.mark.slow
def test_two_machines_run_their_shards_and_an_analyst_pulls_and_compares_them_all(machines, tmp_path, run):
    origin, storage, (first, second), env = machines
    for index, clone in enumerate((first, second), start=1):
        result = _sweep(clone, env, run, "--shard", f"{index}/2")
        assert f"all 1 runs of shard {index}/2 are on origin" in result.stdout

    analyst = tmp_path / "analyst"
    run(["git", "clone", "-q", str(origin), str(analyst)], tmp_path, env)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], analyst, env)
    run(["dvc", "exp", "pull", "origin"], analyst, env)
    names = set(run(["dvc", "exp", "list", "--name-only"], analyst, env).stdout.split())
    assert names == {f"epochs-1_beta-{beta}" for beta in ("0.5", "2")}
    run([sys.executable, "scripts/compare.py", "--csv", "rd.csv", "--figure", "rd.png"], analyst, env)
    rows = list(csv.DictReader((analyst / "rd.csv").open()))
    assert sorted(row["beta"] for row in rows) == ["0.5", "2.0"]


@pytest.mark.slow
def test_a_run_the_remote_has_with_other_params_fails_the_shard_naming_it(machines, run):
    _, _, (first, second), env = machines
    clash = "epochs-1_beta-0.5"  # what the sweep will call its first run
    # An experiment of that name with other params; what clashes is its name and params.yaml, so DVC's
    # target runs only the first stage of it.
    run(["dvc", "exp", "run", "check_params", "-n", clash, "-S", "epochs=1", "-S", "beta=9"], second, env)
    run(["dvc", "exp", "push", "origin", clash], second, env)

    result = _sweep(first, env, run, check=False)
    assert result.returncode != 0
    assert (f"{clash}: origin already has an experiment of this name with other params, so DVC did not push "
            "this one") in result.stderr
    assert "epochs-1_beta-2" not in result.stderr  # the shard's other run reached the remote
    pushed = run(["dvc", "exp", "list", "origin", "--name-only"], first, env).stdout.split()
    assert "epochs-1_beta-2" in pushed
    committed = run(["git", "show", f"refs/exps/{_baseline(first, env, run)}/{clash}:params.yaml"], first, env).stdout
    assert yamlfile.parse(committed, "params.yaml")["beta"] == 0.5  # our run is kept locally, not lost


def _baseline(clone, env, run) -> str:
    head = run(["git", "rev-parse", "HEAD"], clone, env).stdout.strip()
    return f"{head[:2]}/{head[2:]}"
