"""End to end: the real dvc.yaml in a temporary git copy of the repository, on tiny fixtures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from betavae.download import TEST_CHECKSUMS_ENV
from tests.conftest import TINY_PARAMS, write_mnist

REPO = Path(__file__).resolve().parents[1]
METRICS = ("recon", "kl", "loss", "neg_elbo", "nll", "active_units")


def _sh(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def copy_repository(destination: Path) -> None:
    """The files git would commit (tracked, or untracked and not ignored) as a fresh one-commit repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _write_params(repo: Path, overrides: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_copy(root: Path) -> tuple[Path, dict]:
    """A git repo at root/repo holding this repository with the tiny params, and its environment."""
    repo = root / "repo"
    copy_repository(repo)
    checksums = write_mnist(root / "mnist")
    (root / "md5.json").write_text(json.dumps(checksums))
    env = {**os.environ, "MNIST_DIR": str(root / "mnist"), TEST_CHECKSUMS_ENV: str(root / "md5.json"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    for stale in ("dvc.lock", "reports/metrics.json"):
        (repo / stale).unlink(missing_ok=True)
    _write_params(repo, TINY_PARAMS)
    _sh(["git", "init", "-q", "-b", "main"], repo, env)
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "commit", "-qm", "tiny copy"], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return tiny_copy(tmp_path_factory.mktemp("pipeline"))


def test_repro_runs_every_stage_then_is_up_to_date(pipeline):
    repo, env = pipeline
    _sh(["dvc", "repro"], repo, env)
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())["test"]
    assert set(metrics) == set(METRICS)
    for name in ("training_history", "samples", "reconstructions", "interpolation", "latent_projection"):
        assert (repo / "reports" / "figures" / f"{name}.png").stat().st_size > 1000
    assert (repo / "reports" / "per_digit.csv").read_text().startswith("digit,count,recon,kl,nll\n")
    assert list((repo / "reports" / "train" / "snapshots").glob("samples_epoch_*.png"))
    assert "up to date" in _sh(["dvc", "status"], repo, env)
    assert "didn't change" in _sh(["dvc", "repro"], repo, env) or "up to date" in _sh(["dvc", "status"], repo, env)
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "commit", "-qm", "baseline run"], repo, env)


def test_experiment_with_other_beta_is_compared_by_metrics_diff_and_exp_show(pipeline):
    repo, env = pipeline
    _sh(["dvc", "exp", "run", "-S", "beta=1.0"], repo, env)
    diff = json.loads(_sh(["dvc", "metrics", "diff", "--json"], repo, env))
    changed = diff["reports/metrics.json"]
    assert {f"test.{m}" for m in ("recon", "kl", "loss", "neg_elbo", "nll")} <= set(changed)
    shown = json.loads(_sh(["dvc", "exp", "show", "--json"], repo, env))
    runs = _flatten_runs(shown)
    betas = sorted(run["params"]["params.yaml"]["data"]["beta"] for run in runs)
    assert betas == [0.8, 1.0]
    for run in runs:
        assert set(run["metrics"]["reports/metrics.json"]["data"]["test"]) == set(METRICS)
    experiment = _sh(["dvc", "exp", "list", "--name-only"], repo, env).split()[0]
    (repo.parent / "beta_1_experiment").write_text(experiment)  # shared with the remote test
    plots = json.loads(_sh(["dvc", "plots", "diff", "HEAD", experiment, "--json"], repo, env))["data"]
    loss = plots["Loss (β-weighted)"][0]
    assert loss["content"]["title"]["text"] == "β-weighted loss per epoch (train and validation)"
    overlaid = {(row["rev"], row["filename"]) for row in loss["content"]["data"]["values"]}
    assert overlaid == {(rev, name) for rev in ("HEAD", experiment) for name in ("train/loss.tsv", "val/loss.tsv")}
    assert sorted(image["revisions"][0] for image in plots["reports/figures/samples.png"]) == sorted(["HEAD", experiment])


def test_invalid_experiment_params_fail_at_once_with_the_key_named(pipeline):
    repo, env = pipeline
    for override, message in (("beta=-1", "beta must be >= 0"), ("z_dim=0", "z_dim must be >= 1")):
        result = subprocess.run(["dvc", "exp", "run", "-S", override], cwd=repo, env=env,
                                capture_output=True, text=True)
        assert result.returncode != 0
        assert message in result.stdout + result.stderr
        # A failed `exp run -S` leaves its override in params.yaml, and git may not notice for a
        # second (same size, same mtime second), so `git checkout` could be a no-op: write it back.
        (repo / "params.yaml").write_text(_sh(["git", "show", "HEAD:params.yaml"], repo, env))


def test_queued_sweep_runs_and_compare_draws_the_rate_distortion_plane(pipeline):
    repo, env = pipeline
    _sh(["git", "reset", "-q", "--hard"], repo, env)  # back to the committed baseline
    _sh(["dvc", "checkout", "--force"], repo, env)
    _sh(["dvc", "exp", "run", "--queue", "-S", "beta=0.5,2"], repo, env)  # 2: an int, accepted as 2.0
    try:
        _sh(["dvc", "queue", "start", "-j", "1"], repo, env)
        status = _wait_for_queue(repo, env)
        failed = [line.split()[1] for line in status.splitlines() if line.endswith("Failed")]
        logs = "".join(_sh(["dvc", "queue", "logs", name], repo, env)[-3000:] for name in failed)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=env, capture_output=True)
    assert status.count("Success") == 2 and not failed, f"{status}\n{logs}"
    csv_path, figure = repo / "reports" / "rate_distortion.csv", repo / "reports" / "figures" / "rd.png"
    _sh([sys.executable, str(REPO / "scripts" / "compare.py"), "--repo", str(repo), "--csv", str(csv_path),
         "--figure", str(figure), "--title", "tiny sweep"], repo, env)
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "name,beta,z_dim,epochs,seed,recon,kl,loss,neg_elbo,nll,active_units"
    assert [float(row.split(",")[1]) for row in rows[1:]] == [0.5, 0.8, 1.0, 2.0]
    assert figure.stat().st_size > 10_000


def _wait_for_queue(repo: Path, env: dict, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _sh(["dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"queue still busy after {timeout_s} s:\n{status}")


def test_push_then_a_fresh_clone_pulls_everything_up_to_date_and_shares_experiments(pipeline, tmp_path):
    repo, env = pipeline
    experiment = (repo.parent / "beta_1_experiment").read_text()  # the workspace run of the β = 1.0 test
    _sh(["git", "reset", "-q", "--hard"], repo, env)  # the workspace as committed: what a clone gets
    _sh(["dvc", "checkout", "--force"], repo, env)
    storage, origin, clone = tmp_path / "storage", tmp_path / "origin.git", tmp_path / "clone"
    _sh(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], tmp_path, env)
    # --local: the remote lives in each clone's untracked config, so HEAD stays the experiments'
    # baseline (a team would commit .dvc/config before running experiments instead).
    _sh(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], repo, env)
    _sh(["git", "remote", "add", "origin", str(origin)], repo, env)
    _sh(["git", "push", "-q", "origin", "main"], repo, env)
    _sh(["dvc", "push"], repo, env)

    _sh(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    _sh(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], clone, env)
    _sh(["dvc", "pull"], clone, env)
    assert "up to date" in _sh(["dvc", "status"], clone, env)
    assert (clone / "models" / "model.pt").read_bytes() == (repo / "models" / "model.pt").read_bytes()

    _sh(["dvc", "exp", "push", "origin", experiment], repo, env)
    assert experiment not in _sh(["dvc", "exp", "list", "--name-only", "--all-commits"], clone, env)
    _sh(["dvc", "exp", "pull", "origin", experiment], clone, env)
    assert experiment in _sh(["dvc", "exp", "list", "--name-only", "--all-commits"], clone, env)
    _sh(["dvc", "exp", "apply", experiment], clone, env)
    assert "up to date" in _sh(["dvc", "status"], clone, env)


# Wall-clock epoch times are in these by nature; every other output must be the same bytes.
TIMED_OUTPUTS = {"models/checkpoint.pt", "reports/train/metrics.json", "reports/train/plots/metrics"}


def test_two_runs_in_two_copies_record_the_same_hashes(pipeline, tmp_path):
    repo, env = pipeline
    other, other_env = tiny_copy(tmp_path)
    _sh(["dvc", "repro"], other, other_env)
    baseline = _sh(["git", "show", "HEAD:dvc.lock"], repo, env)  # the first test's committed run
    first, second = _output_hashes(baseline), _output_hashes((other / "dvc.lock").read_text())
    assert set(first) == set(second)
    assert {"data/mnist", "models/model.pt", "reports/metrics.json", "reports/figures/samples.png"} <= set(first)
    assert first == second


def _output_hashes(lock_text: str) -> dict[str, str]:
    """path -> md5 of every stage output in a dvc.lock, except the timed ones."""
    lock = yaml.safe_load(lock_text)
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
            if out["path"] not in TIMED_OUTPUTS}


def _flatten_runs(shown: list[dict]) -> list[dict]:
    """`dvc exp show --json` -> the data of the baseline and each experiment, with metrics."""
    runs = []
    for entry in shown:
        if entry["rev"] == "workspace":  # a copy of whichever run was applied last
            continue
        runs.append(entry["data"])
        for experiment in entry.get("experiments") or []:
            runs.extend(revision["data"] for revision in experiment["revs"])
    return [run for run in runs if run.get("metrics")]
