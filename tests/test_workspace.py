"""DVC's workspace experiments and their two traps (betavae/workspace.py, params.Watch): a failed
`dvc exp run -S` that leaves invisible values in params.yaml, and two `dvc exp run` at once."""

from __future__ import annotations

import re
import subprocess
import time

import yaml


def _params(repo) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def _git_sees_params_modified(repo, env, run) -> bool:
    return "params.yaml" in run(["git", "status", "--porcelain"], repo, env).stdout


def test_a_failed_exp_run_leaves_no_invisible_values_and_the_next_run_refuses_them(tiny_repo, run):
    repo, env = tiny_repo
    failed = run(["dvc", "exp", "run", "-S", "epochs=3", "-S", "beta=-1"], repo, env, check=False)
    assert failed.returncode != 0
    assert "check_params: error: params.yaml: beta must be >= 0 (got -1.0)" in failed.stderr
    assert "params.yaml keeps this failed experiment's values (beta, epochs)" in failed.stderr
    assert (_params(repo)["epochs"], _params(repo)["beta"]) == (3, -1)  # DVC leaves them (its trap)...
    assert _git_sees_params_modified(repo, env, run)  # ...but git now sees them

    # The trap: the next experiment would silently run with epochs 3. It is refused instead.
    stale = run(["dvc", "exp", "run", "-S", "beta=2"], repo, env, check=False)
    assert stale.returncode != 0
    assert ("params.yaml still holds epochs: 3 from a failed `dvc exp run`, not from this run's -S; "
            "restore it with `git checkout HEAD -- params.yaml`") in stale.stderr
    assert run(["dvc", "exp", "list", "--name-only"], repo, env).stdout.strip() == ""

    run(["git", "checkout", "HEAD", "--", "params.yaml"], repo, env)  # the one-line recipe now works
    assert _params(repo)["epochs"] == 2 and not _git_sees_params_modified(repo, env, run)
    run(["dvc", "exp", "run", "-S", "beta=2"], repo, env)
    shown = run(["dvc", "exp", "show", "--json"], repo, env).stdout
    assert '"beta": 2' in shown.replace("2.0", "2")


def test_repeating_the_failed_run_exactly_is_not_refused(tiny_repo, run):
    repo, env = tiny_repo
    assert run(["dvc", "exp", "run", "-S", "epochs=1", "-S", "dropout=1.5"], repo, env, check=False).returncode != 0
    again = run(["dvc", "exp", "run", "-S", "epochs=1", "-S", "dropout=1.5"], repo, env, check=False)
    assert "dropout must be in [0, 1)" in again.stderr and "still holds" not in again.stderr


def test_two_exp_runs_at_once_fail_clearly_and_lose_nothing(tiny_repo, run):
    repo, env = tiny_repo
    run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline"], repo, env)
    committed_model = (repo / "models" / "model.pt").read_bytes()

    first = subprocess.Popen(["dvc", "exp", "run", "-S", "seed=7", "-S", "epochs=40"], cwd=repo, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (repo / "models" / "checkpoint.pt").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run(["dvc", "exp", "run", "-S", "seed=8"], repo, env, check=False)
    stdout, stderr = first.communicate(timeout=600)

    assert second.returncode != 0  # DVC's lock refuses it, after writing seed: 8
    assert first.returncode != 0, stdout
    # The message names the file as the second run leaves it: seed 8 once DVC is done, or, if DVC is slow
    # between its stash and unstash, the committed values it shows for that while.
    assert re.search(r"train: error: params\.yaml changed while this stage ran "
                     r"\((seed 7 -> 8|epochs 40 -> 2, seed 7 -> 42)\); nothing more is written", stderr), stderr[-2000:]
    assert (repo / "models" / "model.pt").read_bytes() == committed_model  # not a seed-7 model beside seed: 8
    assert run(["dvc", "exp", "list", "--name-only"], repo, env).stdout.strip() == ""
    assert (repo / "models" / "checkpoint.pt").exists()  # the epochs done so far, resumable

    run(["git", "checkout", "HEAD", "--", "params.yaml"], repo, env)
    resumed = run(["dvc", "exp", "run", "-S", "seed=7", "-S", "epochs=40"], repo, env)
    assert "train: resuming from models/checkpoint.pt" in resumed.stdout
