"""DVC's workspace experiments and their two traps (betavae/compat/dvc_workspace.py): a failed `dvc exp run -S`
that leaves invisible values in params.yaml, and two `dvc exp run` at once."""

from __future__ import annotations

import re
import subprocess

import pytest

from betavae.compat import dvc_workspace
from betavae.pipeline import yamlfile
from betavae.pipeline.params import PARAMS_FILE, ParamsError, load_params


def _params(repo) -> dict:
    return yamlfile.read(repo / PARAMS_FILE)


class FakeTime:
    """A clock that moves only when Watch sleeps, and a second writer's writes due at given times:
    the quiet window is tested without racing real timers."""

    def __init__(self, path, *writes: tuple[float, str]):
        self.now, self.path, self.writes = 0.0, path, list(writes)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        while self.writes and self.writes[0][0] <= self.now:
            self.path.write_text(self.writes.pop(0)[1])


def _watched(tmp_path, *writes: tuple[float, str]):
    """params.yaml holding seed 7, a Watch on it, and the writes another process makes after it changes."""
    path = tmp_path / PARAMS_FILE
    path.write_text("seed: 7\n")
    time = FakeTime(path, *writes)
    return path, dvc_workspace.Watch(path, load_params(path), clock=time.clock, sleep=time.sleep)


def test_a_watch_describes_the_file_its_writer_leaves_not_a_torn_one(tmp_path):
    path, watch = _watched(tmp_path, (0.1, "seed: 8\n"))
    path.write_text("")  # a writer that has truncated the file and not yet written it
    with pytest.raises(ParamsError, match=r"changed while this stage ran \(seed 7 -> 8\)"):
        watch.check()


def test_a_watch_ignores_a_file_put_back_as_it_was(tmp_path):
    path, watch = _watched(tmp_path, (0.3, "seed: 7\n"))
    path.write_text("seed: 42\n")  # as DVC's stash of the workspace does, for a moment
    watch.check()


def test_a_watch_reports_where_a_series_of_writes_ends(tmp_path):
    path, watch = _watched(tmp_path, (0.3, "seed: 7\n"), (0.9, "seed: 8\n"))  # stash, unstash, apply the -S
    path.write_text("seed: 42\n")
    with pytest.raises(ParamsError, match=r"changed while this stage ran \(seed 7 -> 8\).*dvc exp run --queue"):
        watch.check()


def test_a_watch_passes_an_unchanged_file_at_once(tmp_path):
    path, watch = _watched(tmp_path, (0.1, "seed: 8\n"))
    watch.check()  # unchanged: no waiting, so the scheduled write never lands
    assert path.read_text() == "seed: 7\n"


@pytest.mark.parametrize("command, allowed", [
    (["dvc", "exp", "run", "-S", "seed=7"], True),
    (["dvc", "exp", "run", "-S", "seed=8"], False),
    (["dvc", "exp", "run", "-Sseed=8"], False),
    (["dvc", "exp", "run", "--set-param=params.yaml:seed=8"], False),
    (["dvc", "exp", "run", "-S", "beta=1", "-S", "seed=7.0"], True),  # 7 and 7.0 are one value
    (["dvc", "repro"], True),  # no -S to compare
])
def test_a_stage_refuses_params_that_its_own_dvc_exp_run_did_not_set(tmp_path, monkeypatch, command, allowed):
    (tmp_path / PARAMS_FILE).write_text("seed: 7\nbeta: 1.0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(dvc_workspace.BASELINE_VARIABLE, "0" * 40)
    monkeypatch.setenv(dvc_workspace.ROOT_VARIABLE, str(tmp_path))
    monkeypatch.setattr(dvc_workspace, "_dvc_command", lambda: command)
    if allowed:
        dvc_workspace.refuse_other_values()
    else:
        with pytest.raises(ParamsError, match=r"params.yaml holds seed: 7, but this `dvc exp run` set seed=8: "
                                              "another `dvc exp run` in this workspace wrote it; nothing was run"):
            dvc_workspace.refuse_other_values()


def _failed_run_in(repo, monkeypatch, command: list[str]) -> None:
    """As DVC leaves a workspace after `command` failed: its baseline commit, and params.yaml holding
    the workspace's own edit (epochs 2, as `make smoke` writes) and the failed run's -S (beta -1)."""
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    for git in (["init", "-q"], ["add", PARAMS_FILE], [*identity, "commit", "-qm", "p"]):
        subprocess.run(["git", *git], cwd=repo, check=True, capture_output=True)
    baseline = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / PARAMS_FILE).write_text("seed: 7\nbeta: -1\nepochs: 2\n")
    monkeypatch.chdir(repo)
    monkeypatch.setenv(dvc_workspace.BASELINE_VARIABLE, baseline)
    monkeypatch.setenv(dvc_workspace.ROOT_VARIABLE, str(repo))
    monkeypatch.setattr(dvc_workspace, "_dvc_command", lambda: command)
    dvc_workspace.after_failure()


def test_a_failed_run_records_only_what_its_own_set_and_the_refusal_says_how_to_set_it_back(
        tmp_path, monkeypatch, capsys):
    (tmp_path / PARAMS_FILE).write_text("seed: 7\nbeta: 1.0\nepochs: 120\n")
    _failed_run_in(tmp_path, monkeypatch, ["dvc", "exp", "run", "-S", "beta=-1"])
    assert "keeps this failed experiment's values (beta)" in capsys.readouterr().err  # not the user's epochs: 2

    monkeypatch.setattr(dvc_workspace, "_dvc_command", lambda: ["dvc", "exp", "run", "-S", "seed=8"])
    with pytest.raises(ParamsError, match=r"still holds beta: -1 from a failed `dvc exp run`, not from this "
                                          r"run's -S: set it again in this run \(-S beta=1\.0 is HEAD's\)"):
        dvc_workspace.refuse_leftovers()

    (tmp_path / PARAMS_FILE).write_text("seed: 7\nbeta: 2.0\nepochs: 2\n")  # -S beta=2.0: the smoke epochs stay
    monkeypatch.setattr(dvc_workspace, "_dvc_command", lambda: ["dvc", "exp", "run", "-S", "beta=2.0"])
    dvc_workspace.refuse_leftovers()
    assert not (tmp_path / dvc_workspace.RECORD).exists()


def test_the_same_failed_run_again_resumes_whatever_the_workspace_held_before(tmp_path, monkeypatch):
    (tmp_path / PARAMS_FILE).write_text("seed: 7\nbeta: 1.0\nepochs: 120\n")
    command = ["dvc", "exp", "run", "-S", "beta=-1"]
    _failed_run_in(tmp_path, monkeypatch, command)
    dvc_workspace.refuse_leftovers()  # the same command, with the smoke-sized epochs still in the workspace


def test_a_key_a_failed_run_added_is_removed_with_a_tilde(tmp_path, monkeypatch):
    (tmp_path / PARAMS_FILE).write_text("seed: 7\nbeta: -1\nepochs: 120\n")  # beta: -1 committed, bta not
    _failed_run_in(tmp_path, monkeypatch, ["dvc", "exp", "run", "-S", "+bta=1.0"])
    (tmp_path / PARAMS_FILE).write_text("seed: 7\nbeta: -1\nepochs: 2\nbta: 1.0\n")
    dvc_workspace.after_failure()
    monkeypatch.setattr(dvc_workspace, "_dvc_command", lambda: ["dvc", "exp", "run", "-S", "seed=8"])
    with pytest.raises(ParamsError, match=r"still holds bta: 1\.0 .*\(-S '~bta' is HEAD's\)"):
        dvc_workspace.refuse_leftovers()


def _git_sees_params_modified(repo, env, run) -> bool:
    return "params.yaml" in run(["git", "status", "--porcelain"], repo, env).stdout


@pytest.mark.slow
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
    assert ("params.yaml still holds epochs: 3 from a failed `dvc exp run`, not from this run's -S: set it "
            "again in this run (-S epochs=2 is HEAD's), or restore the file with `git checkout HEAD -- "
            "params.yaml`") in stale.stderr
    assert run(["dvc", "exp", "list", "--name-only"], repo, env).stdout.strip() == ""

    run(["git", "checkout", "HEAD", "--", "params.yaml"], repo, env)  # the one-line recipe now works
    assert _params(repo)["epochs"] == 2 and not _git_sees_params_modified(repo, env, run)
    run(["dvc", "exp", "run", "train", "-S", "beta=2"], repo, env)  # the stages up to train: the run starts
    shown = run(["dvc", "exp", "show", "--json"], repo, env).stdout
    assert '"beta": 2' in shown.replace("2.0", "2")


@pytest.mark.slow
def test_repeating_the_failed_run_exactly_is_not_refused(tiny_repo, run):
    repo, env = tiny_repo
    assert run(["dvc", "exp", "run", "-S", "epochs=1", "-S", "dropout=1.5"], repo, env, check=False).returncode != 0
    again = run(["dvc", "exp", "run", "-S", "epochs=1", "-S", "dropout=1.5"], repo, env, check=False)
    assert "dropout must be in [0, 1)" in again.stderr and "still holds" not in again.stderr


@pytest.mark.slow
def test_two_exp_runs_at_once_fail_clearly_and_lose_nothing(clone, run, until):
    repo, env = clone
    run(["dvc", "repro", "download"], repo, env)
    committed_model = (repo / "models" / "model.pt").read_bytes()

    first = subprocess.Popen(["dvc", "exp", "run", "train", "-S", "seed=7", "-S", "epochs=40"], cwd=repo, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    until((repo / "models" / "checkpoint.pt").exists, "the first run's first checkpoint", process=first)
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
    resumed = run(["dvc", "exp", "run", "train", "-S", "seed=7", "-S", "epochs=40"], repo, env)  # up to train
    assert "train: resuming from models/checkpoint.pt" in resumed.stdout


@pytest.mark.slow
def test_the_way_back_restores_the_reference_run_after_an_experiment_and_the_smoke_preset(clone, run):
    """`make reference` (scripts/workspace.py): after an experiment, and after `make smoke`, the
    workspace holds HEAD's params, lock and outputs again, even where DVC left an old mtime on a file
    git would then trust; an experiment's extra files in an output folder are gone; ignored files stay."""
    import os
    import sys

    repo, env = clone
    run(["dvc", "checkout", "-q"], repo, env, check=False)
    run(["dvc", "repro", "-q", "download"], repo, env)  # the data a clone fetches with `dvc pull`
    committed = {path: (repo / path).read_bytes() for path in ("params.yaml", "dvc.lock", "models/model.pt")}
    run(["dvc", "exp", "run", "-S", "beta=2.0", "-S", "epochs=3"], repo, env)  # epoch 3: snapshots git lacks
    assert (repo / "models" / "model.pt").read_bytes() != committed["models/model.pt"]
    (repo / "models" / "checkpoint.pt").write_bytes(b"ignored by git: kept")
    params = repo / "params.yaml"
    stat = params.stat()
    params.write_text(params.read_text().replace("beta: 2.0", "beta: 3.0"))  # as a failed run leaves it:
    os.utime(params, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same size, the old mtime
    reference = [sys.executable, "-m", "scripts.workspace", "reference"]
    said = run(reference, repo, {**env, "PYTHONPATH": str(repo)}).stdout
    assert "`dvc status` is clean" in said
    assert {path: (repo / path).read_bytes() for path in committed} == committed
    assert run(["git", "status", "--porcelain"], repo, env).stdout == ""
    assert (repo / "models" / "checkpoint.pt").read_bytes() == b"ignored by git: kept"

    smoke = run([sys.executable, "-m", "scripts.workspace", "smoke"], repo, {**env, "PYTHONPATH": str(repo)}).stdout
    assert "smoke-sized" in smoke and params.read_bytes() != committed["params.yaml"]
    assert load_params(params).epochs == 2
    run(reference, repo, {**env, "PYTHONPATH": str(repo)})
    assert params.read_bytes() == committed["params.yaml"]
