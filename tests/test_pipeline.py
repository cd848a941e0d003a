"""End to end: the real dvc.yaml in throwaway git copies of this repository, on tiny data.

`tiny_run` is one committed `dvc repro` of the tiny pipeline, shared read-only by the whole
session; a test that changes anything works in its own `git clone` of it, as a user's fresh clone
would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betavae.core.metrics import METRICS
from betavae.pipeline import yamlfile
from betavae.pipeline.params import PARAMS_FILE
from stages.plot import FIGURES

pytestmark = pytest.mark.slow



def test_repro_writes_every_output_and_commits_them_to_git(tiny_run, run):
    repo, env = tiny_run
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())["test"]
    assert set(metrics) == set(METRICS)
    for name in FIGURES:
        assert run(["git", "ls-files", "--error-unmatch", f"reports/figures/{name}"], repo, env)
    assert (repo / "reports" / "per_digit.csv").read_text().startswith("digit,count,recon,kl,nll\n")
    latent_kl = (repo / "reports" / "latent_kl.csv").read_text()
    assert latent_kl.startswith("rank,dimension,kl,kl_share,mean_variance,active\n")
    assert run(["git", "ls-files", "models/model.pt", "reports/train/plots/images/samples/2.png"], repo, env).stdout
    assert not (repo / "models" / "checkpoint.pt").exists()
    assert "up to date" in run(["dvc", "status"], repo, env).stdout


def test_a_fresh_clone_is_up_to_date_after_repro_which_only_downloads(clone, run):
    repo, env = clone
    output = run(["dvc", "repro"], repo, env).stdout
    assert "Running stage 'download'" in output
    assert not any(f"Running stage '{stage}'" in output for stage in ("train", "evaluate", "plot", "check_params"))
    assert "Data and pipelines are up to date." in run(["dvc", "status"], repo, env).stdout
    assert run(["git", "status", "--porcelain"], repo, env).stdout == ""


def test_repro_force_trains_again_and_a_killed_run_resumes(clone, run, kill_tree, until):
    repo, env = clone
    run(["dvc", "repro", "download"], repo, env)
    committed = (repo / "models" / "model.pt").read_bytes()
    process = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train"], cwd=repo, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    until((repo / "models" / "checkpoint.pt").exists, "the first epoch's checkpoint", process=process)
    kill_tree(process)  # DVC and its stage, mid-training, like a power cut
    assert (repo / "models" / "checkpoint.pt").exists()
    # The committed outputs are untouched, so DVC calls the pipeline up to date; the same command resumes.
    assert "Data and pipelines are up to date." in run(["dvc", "status"], repo, env).stdout
    resumed = run(["dvc", "repro", "--force", "--single-item", "train"], repo, env).stdout
    assert "train: resuming from models/checkpoint.pt" in resumed
    assert (repo / "models" / "model.pt").read_bytes() == committed  # same bytes as the committed run
    forced = run(["dvc", "repro", "--force", "--single-item", "train"], repo, env).stdout
    assert "resuming" not in forced and "model written to models/model.pt" in forced
    assert run(["git", "status", "--porcelain", "models"], repo, env).stdout == ""


def test_a_quick_run_with_schedules_longer_than_training_warns_and_runs(clone, run):
    repo, env = clone
    # `dvc exp run train`: the stages up to train, as DVC's targets select them; the warning is train's.
    result = run(["dvc", "exp", "run", "train", "-S", "epochs=1", "-S", "warmup_epochs=3"], repo, env)
    assert "train: warning: warmup_epochs (3) is longer than training (1 epoch)" in result.stdout


@pytest.mark.parametrize("setting, message", [
    ("z_dim=0", "check_params: error: params.yaml: z_dim must be in [1, 65536] (got 0)"),
    ("launcher='python; touch PWNED'", "check_params: error: params.yaml: launcher is not usable: must be `python`"),
])
def test_invalid_experiment_params_fail_at_once_with_the_key_named_and_run_nothing(clone, run, setting, message):
    repo, env = clone
    result = run(["dvc", "exp", "run", "-S", setting], repo, env, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "ERROR: failed to reproduce 'check_params'" in result.stderr  # what DVC adds, as the README shows
    assert not (repo / "PWNED").exists()
    assert run(["git", "status", "--porcelain", "models", "reports"], repo, env).stdout == ""  # outputs kept


@pytest.mark.parametrize("target", [[], ["train"], ["evaluate"]])
def test_a_key_added_by_hand_is_validated_by_any_repro_although_no_stage_reads_it(clone, run, target):
    repo, env = clone
    run(["dvc", "repro", "download"], repo, env)
    with (repo / PARAMS_FILE).open("a") as params:
        params.write("bta: 1.0\n")
    result = run(["dvc", "repro", *target], repo, env, check=False)
    assert result.returncode != 0
    assert "check_params: error: params.yaml: unknown key bta (did you mean beta?)" in result.stderr


@pytest.mark.parametrize("text", [None, ""])
def test_a_missing_or_empty_params_file_is_named(clone, run, text):
    repo, env = clone
    if text is None:
        (repo / PARAMS_FILE).unlink()
    else:
        (repo / PARAMS_FILE).write_text(text)
    result = run(["dvc", "repro"], repo, env, check=False)
    assert result.returncode != 0 and "params.yaml" in result.stderr, result.stderr
    assert "Could not find" not in result.stderr


def test_a_value_yaml_1_1_would_read_otherwise_trains_as_dvc_records_it(clone, run):
    repo, env = clone
    run(["dvc", "exp", "run", "train", "-S", "weight_decay=1e-6", "-S", "epochs=1"], repo, env)  # up to train
    assert yamlfile.parse((repo / PARAMS_FILE).read_text(), PARAMS_FILE)["weight_decay"] == 1e-6
    trained = torch.load(repo / "models" / "model.pt", weights_only=True)["params"]
    shown = _flatten_runs(json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout))
    recorded = {r["params"]["params.yaml"]["data"]["weight_decay"] for r in shown}
    assert trained["weight_decay"] == 1e-6 and 1e-6 in recorded


def test_an_interrupted_exp_run_names_the_command_that_resumes_it(clone, run, until, kill_tree):
    repo, env = clone
    run(["dvc", "repro", "download"], repo, env)
    command = ["dvc", "exp", "run", "-S", "epochs=200"]
    # A background job starts with SIGINT ignored, and every process below inherits that: restore it.
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    until((repo / "models" / "checkpoint.pt").exists, "the first epoch's checkpoint", process=process)
    stage = _descendant(process.pid, "stages.train")
    os.kill(stage, signal.SIGINT)  # as Ctrl-C in a terminal does, to the stage (DVC's own handling differs)
    stdout, _ = process.communicate(timeout=300)
    assert "train: interrupted; completed epochs are saved in models/checkpoint.pt; run `dvc exp run -S " \
           "epochs=200` again to resume" in stdout, stdout[-2000:]
    run(["git", "checkout", "HEAD", "--", PARAMS_FILE], repo, env)


def _descendant(pid: int, word: str) -> int:
    """The pid of the process under pid whose command line holds word."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().decode().split("\0")
            parent = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            continue
        while word in words and parent > 1:
            if parent == pid:
                return int(cmdline.parent.name)
            try:
                parent = int(Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
    raise AssertionError(f"no process running {word} under {pid}")


def test_evaluation_params_leave_the_trained_model_alone(clone, run, yaml_text):
    repo, env = clone
    run(["dvc", "repro", "download"], repo, env)
    model = (repo / "models" / "model.pt").read_bytes()
    params = yamlfile.read(repo / PARAMS_FILE)
    params["eval"]["iw_samples"] = 3
    (repo / PARAMS_FILE).write_text(yaml_text(params))
    status = run(["dvc", "status", "--json"], repo, env).stdout
    assert "evaluate" in json.loads(status) and "train" not in json.loads(status)
    output = run(["dvc", "repro"], repo, env).stdout
    assert "Running stage 'train'" not in output and "Running stage 'evaluate'" in output
    assert (repo / "models" / "model.pt").read_bytes() == model


def test_the_readmes_command_fetches_the_model_from_a_clone_url(clone, tmp_path, run):
    repo, env = clone
    run(["dvc", "get", repo.as_uri(), "models/model.pt", "-o", str(tmp_path / "fetched.pt")], tmp_path, env)
    assert (tmp_path / "fetched.pt").read_bytes() == (repo / "models" / "model.pt").read_bytes()


def test_the_model_is_a_dvc_artifact_that_artifacts_get_fetches_once_versioned(clone, tmp_path, run):
    repo, env = clone
    # A version of an artifact is a git tag in GTO's form, name@vX.Y.Z (`gto register` makes one).
    run(["git", "tag", "-a", "beta-vae-mnist@v1.0.0", "-m", "the tiny reference run"], repo, env)
    show = ("import dvc.api, json, sys; "
            "print(json.dumps(dvc.api.artifacts_show('beta-vae-mnist', repo=sys.argv[1])))")
    shown = json.loads(run([sys.executable, "-c", show, str(repo)], tmp_path, env).stdout)
    assert shown == {"rev": run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip(), "path": "models/model.pt"}
    run(["dvc", "artifacts", "get", str(repo), "beta-vae-mnist", "-o", str(tmp_path / "fetched.pt")], tmp_path, env)
    assert (tmp_path / "fetched.pt").read_bytes() == (repo / "models" / "model.pt").read_bytes()


def test_two_processes_train_through_dvc_with_torchrun(clone, run):
    repo, env = clone
    launcher = "launcher=torchrun --standalone --nproc-per-node 2"
    result = run(["dvc", "exp", "run", "train", "-S", launcher], repo, {**env, "OMP_NUM_THREADS": "1"})  # up to train
    assert "train: starting torchrun --standalone --nproc-per-node=2 -m stages.train" in result.stdout
    assert result.stdout.count("model written to models/model.pt") == 1  # process 0 alone writes
    history = (repo / "reports" / "train" / "plots" / "metrics" / "val" / "loss.tsv").read_text().splitlines()
    assert len(history) == 1 + 2  # one row per epoch: only process 0 logged
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    launchers = {r["params"]["params.yaml"]["data"]["launcher"] for r in _flatten_runs(shown)}
    assert launchers == {"python", "torchrun --standalone --nproc-per-node 2"}


def test_push_then_a_fresh_clone_pulls_and_shares_experiments(clone, tmp_path, run):
    repo, env = clone
    run(["dvc", "exp", "run", "-S", "beta=1.0", "-n", "beta-1"], repo, env)
    run(["git", "checkout", "--", "."], repo, env)  # the workspace as committed, the experiment kept
    storage, origin, other = tmp_path / "storage", tmp_path / "origin.git", tmp_path / "other"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], tmp_path, env)
    # --local: the remote lives in each clone's untracked config, so HEAD stays the experiments' baseline.
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], repo, env)
    run(["git", "remote", "set-url", "origin", str(origin)], repo, env)
    run(["git", "push", "-q", "origin", "main"], repo, env)
    run(["dvc", "push"], repo, env)

    run(["git", "clone", "-q", str(origin), str(other)], tmp_path, env)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], other, env)
    run(["dvc", "pull"], other, env)
    assert "up to date" in run(["dvc", "status"], other, env).stdout

    run(["dvc", "exp", "push", "origin", "beta-1"], repo, env)
    run(["dvc", "exp", "pull", "origin", "beta-1"], other, env)
    assert "beta-1" in run(["dvc", "exp", "list", "--name-only", "--all-commits"], other, env).stdout
    run(["dvc", "exp", "apply", "beta-1"], other, env)
    assert yamlfile.read(other / PARAMS_FILE)["beta"] == 1.0
    assert "up to date" in run(["dvc", "status"], other, env).stdout


# Wall-clock epoch times are in these by nature; every other output must be the same bytes.
TIMED_OUTPUTS = {"reports/train/metrics.json", "reports/train/plots"}


def test_two_runs_in_two_copies_record_the_same_hashes(tiny_run, make_repo, tmp_path, run):
    repo, _ = tiny_run
    other, other_env = make_repo(tmp_path)
    run(["dvc", "repro"], other, other_env)
    first = _output_hashes((repo / "dvc.lock").read_text())
    second = _output_hashes((other / "dvc.lock").read_text())
    assert {"data/mnist", "models/model.pt", "reports/metrics.json", "reports/figures"} <= set(first)
    assert first == second


def _output_hashes(lock_text: str) -> dict[str, str]:
    """path -> md5 of every stage output in a dvc.lock, except the timed ones."""
    lock = yamlfile.parse(lock_text, "dvc.lock")
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
