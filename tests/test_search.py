"""Hyperparameter search through DVC experiments (betavae/experiments/studies.py, scripts/search.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betavae import errors
from betavae.experiments import studies, tools

SPACE = {"study": "tiny", "objectives": [{"metric": "test.kl", "direction": "minimize"},
                                         {"metric": "test.recon", "direction": "minimize"}],
         "params": {"beta": {"low": 0.5, "high": 2.0, "log": True}}, "fixed": {"epochs": 1},
         "sampler": {"name": "random", "seed": 0}}


class _Parsed(BaseException):
    pass


@pytest.mark.parametrize("script, option", [
    ("compare", "csv"), ("compare", "figure"), ("search", "reports"), ("search", "storage"),
    ("likelihood_study", "out"),
])
def test_a_scripts_default_output_is_under_the_ignored_out_folder_never_a_committed_report(script, option, repo_root,
                                                                                           monkeypatch):
    """A committed report (reports/rate_distortion.*, reports/search/) is only rewritten when named."""
    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    monkeypatch.setattr(errors.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [f"{script}.py"])
    with pytest.raises(_Parsed) as parsed:
        importlib.import_module(f"scripts.{script}").main()
    default = str(parsed.value.args[0].get_default(option)).removeprefix("sqlite:///")
    assert Path(default).parts[0] == str(tools.OUT_DIR) == "out"
    committed = subprocess.run(["git", "ls-files", default], cwd=repo_root, capture_output=True, text=True).stdout
    assert committed == ""


def test_the_committed_search_space_is_valid(repo_root):
    space = studies.load_space(repo_root / "search.yaml")
    assert [metric for metric, _ in space.objectives] == ["test.kl", "test.recon"]
    assert studies.distributions(space)["beta"].log


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(sampler_seed=1), "unknown key sampler_seed"),
    (lambda s: s.update(study="no spaces"), "study must be a name"),
    (lambda s: s["params"].update(bta={"low": 0, "high": 1}), "params: 'bta' is not a param of params.yaml (did you"),
    (lambda s: s["params"].update(augment={"low": 0, "high": 1}), "params: augment is a group of params"),
    (lambda s: s["fixed"].update(beta={"low": 0.5, "high": 2.0}), "fixed: beta must be one value (float)"),
    (lambda s: s["fixed"].update(z_dim=[8, 16]), "fixed: z_dim must be one value (int); got [8, 16]"),
    (lambda s: s["fixed"].update(augment=5), "fixed: augment is a group of params"),
    (lambda s: s["fixed"].update(epoch=3), "fixed: 'epoch' is not a param of params.yaml (did you mean epochs?)"),
    (lambda s: s["fixed"].update(data={"limt": 3}), "fixed: 'data.limt' is not a param"),
    (lambda s: s.update(fixed=[1, 2]), "fixed must be a mapping of params to values"),
    (lambda s: s["params"].update(beta={"low": "x", "high": 1}), "params.beta.low must be a number; got 'x'"),
    (lambda s: s["params"].update(beta={"low": -1, "high": 1}), "params.beta.low: beta must be >= 0 (got -1.0)"),
    (lambda s: s["params"].update(beta={"low": 0, "high": 1, "log": True}), "a log scale needs low > 0"),
    (lambda s: s["params"].update(beta={"low": 2, "high": 1}), "params.beta: low must be < high"),
    (lambda s: s["params"].update(z_dim={"low": 2, "high": 8.5}), "params.z_dim.high must be an integer"),
    (lambda s: s["params"].update(launcher={"low": 1, "high": 2}), "a range needs a numeric param"),
    (lambda s: s["params"].update(dropout={"choices": [0.1, 1.5]}), "params.dropout: dropout must be in [0, 1)"),
    (lambda s: s["fixed"].update(beta=1.0), "beta is both searched and fixed"),
    (lambda s: s["fixed"].update(epochs=0), "fixed: epochs must be in [1, 100000]"),
    (lambda s: s.update(objectives=[{"metric": "test.loss", "direction": "up"}]), "direction must be minimize"),
    (lambda s: s.update(objectives=[{"metric": "val.loss", "direction": "minimize"}]),
     "objectives[0].metric must be one of test.recon"),
    (lambda s: s.update(sampler={"name": "grid"}), "sampler.name must be one of tpe, nsga2, random"),
])
def test_a_bad_search_space_is_refused_naming_the_key(tmp_path, yaml_text, change, message):
    space = {**SPACE, "params": dict(SPACE["params"]), "fixed": dict(SPACE["fixed"])}
    change(space)
    path = tmp_path / "space.yaml"
    path.write_text(yaml_text(space))
    with pytest.raises(studies.SearchError) as error:
        studies.load_space(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def _search(repo, env, storage, trials: int, popen: bool = False):
    command = [sys.executable, "scripts/search.py", "--space", "space.yaml", "--trials", str(trials),
               "--storage", storage]
    if popen:
        return subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)


@pytest.fixture
def searched(clone, tmp_path, yaml_text, run):
    """A clone with the tiny search space beside it, its data cached, and a SQLite study outside it."""
    repo, env = clone
    (repo / "space.yaml").write_text(yaml_text(SPACE))
    run(["dvc", "repro", "download"], repo, env)
    return repo, env, f"sqlite:///{tmp_path / 'study.db'}"


def _study(storage: str):
    import optuna

    return optuna.load_study(study_name="tiny", storage=storage)


def _experiments(repo, env, run) -> list[str]:
    return sorted(run(["dvc", "exp", "list", "--name-only"], repo, env).stdout.split())


@pytest.mark.slow
def test_a_killed_study_resumes_its_trial_under_the_same_number_and_a_rerun_adds_only_the_difference(
        searched, run, until, kill_tree):
    import optuna

    repo, env, storage = searched
    process = _search(repo, env, storage, 1, popen=True)

    def running() -> bool:  # its experiment started: the trial is claimed by the search's process
        try:
            return any(t.state == optuna.trial.TrialState.RUNNING and "pid" in t.user_attrs
                       for t in _study(storage).trials)
        except KeyError:  # the study does not exist yet
            return False

    until(running, "the first trial's experiment to start", process=process, every_s=0.5)  # opens the study
    kill_tree(process)  # the search and its `dvc exp run`, like a power cut
    resumed = _search(repo, env, storage, 1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trial 0 (search-tiny-0) was interrupted: running it again" in resumed.stdout
    assert [t.state.name for t in _study(storage).trials] == ["COMPLETE"]
    assert _experiments(repo, env, run) == ["search-tiny-0"]
    shown = run(["dvc", "exp", "show", "--csv", "--only-changed"], repo, env).stdout
    assert shown.count("search-tiny-") == 1

    again = _search(repo, env, storage, 2)
    assert again.returncode == 0, again.stderr[-2000:]
    study = _study(storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    assert _experiments(repo, env, run) == [f"search-tiny-{n}" for n in range(2)]
    assert len({t.params["beta"] for t in study.trials}) == 2  # the rerun did not draw the first trial's params again
    front = (repo / "out" / "search" / "tiny_front.csv").read_text().splitlines()  # the committed study untouched
    assert front[0] == "number,state,beta,test.kl,test.recon,experiment,error" and len(front) >= 2
    assert (repo / "out" / "search" / "tiny_front.png").stat().st_size > 5_000
    assert run(["git", "status", "--porcelain", "reports"], repo, env).stdout == ""


@pytest.mark.slow
def test_two_processes_share_one_study_without_losing_or_repeating_a_trial(searched, run):
    repo, env, storage = searched
    studies.open_study(studies.load_space(repo / "space.yaml"), storage)  # both processes load the one study
    processes = [_search(repo, env, storage, 2, popen=True) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-2000:]
    trials = _study(storage).trials
    assert 2 <= len(trials) <= 3 and all(t.state.name == "COMPLETE" for t in trials)
    names = [t.user_attrs["experiment"] for t in trials]
    assert len(set(names)) == len(names) and _experiments(repo, env, run) == sorted(names)


@pytest.mark.slow
def test_a_failing_trial_is_recorded_with_the_stages_error_and_the_search_goes_on(searched, run, yaml_text):
    if torch.cuda.is_available():
        pytest.skip("the failure used here is a request for CUDA on a machine without it")
    repo, env, storage = searched
    failing = {**SPACE, "params": {"beta": {"low": 0.5, "high": 2.0}}, "fixed": {"epochs": 1, "device": "cuda"}}
    (repo / "space.yaml").write_text(yaml_text(failing))
    result = _search(repo, env, storage, 2)
    assert result.returncode == 1 and "search: error: no trial finished" in result.stderr
    trials = _study(storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert trials[0].user_attrs["error"].startswith("train: error: device: cuda was requested, but CUDA is not")


@pytest.mark.slow
def test_a_trial_dvc_finished_but_the_study_did_not_record_is_recovered_not_run_again(searched, run):
    repo, env, storage = searched
    space = studies.load_space(repo / "space.yaml")
    study = studies.open_study(space, storage)
    trial = study.ask(studies.distributions(space))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for key, value in (("experiment", "search-tiny-0"), ("host", __import__("socket").gethostname()),
                       ("pid", int(gone.stdout))):
        trial.set_user_attr(key, value)
    # What a search killed after DVC committed the experiment, before it told the study, leaves behind: an
    # experiment of the trial's name with the trial's params and test metrics (DVC's target: up to evaluate).
    run(["dvc", "exp", "run", "--temp", "-n", "search-tiny-0", "evaluate", "-S", "epochs=1",
         "-S", f"beta={trial.params['beta']}"], repo, env)
    resumed = _search(repo, env, storage, 1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trial 0 (search-tiny-0) finished before its process died: recorded" in resumed.stdout
    recorded = _study(storage).trials
    assert len(recorded) == 1 and recorded[0].state.name == "COMPLETE"
    row = studies.find_experiment("search-tiny-0", repo)
    assert recorded[0].values == [row["test.kl"], row["test.recon"]]
    assert _experiments(repo, env, run) == ["search-tiny-0"]


def test_a_space_with_fixed_values_nested_by_group_or_dotted_reads_as_dotted_keys(tmp_path, yaml_text):
    path = tmp_path / "space.yaml"
    path.write_text(yaml_text({**SPACE, "fixed": {"epochs": 1, "augment": {"rotation": 0.0}, "data.limit": 6000}}))
    assert studies.load_space(path).fixed == {"epochs": 1, "augment.rotation": 0.0, "data.limit": 6000}


def test_a_study_keeps_the_space_it_was_made_from(tmp_path, yaml_text):
    """Reopened with another space, a study is refused before any trial; with its own, it opens."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    path = tmp_path / "space.yaml"
    path.write_text(yaml_text(SPACE))
    first = studies.open_study(studies.load_space(path), storage)
    first.ask(studies.distributions(studies.load_space(path)))
    studies.open_study(studies.load_space(path), storage)  # the same space: fine
    path.write_text(yaml_text({**SPACE, "params": {"beta": {"low": 0.1, "high": 8.0, "log": True}}}))
    with pytest.raises(studies.SearchError, match=r"study 'tiny' was made from another search space \(dimensions"):
        studies.open_study(studies.load_space(path), storage)


def test_a_trial_that_cannot_run_is_marked_failed_not_left_running(tmp_path, yaml_text):
    import optuna

    path = tmp_path / "space.yaml"
    path.write_text(yaml_text(SPACE))
    space = studies.load_space(path)
    study = studies.open_study(space, f"sqlite:///{tmp_path / 'study.db'}")
    runner = studies.Runner(space, tmp_path, log=lambda _: None, environ={"PATH": str(tmp_path)})  # no dvc here
    with pytest.raises(studies.tools.ToolError, match="`dvc` is not installed or not on PATH"):
        runner.run(study, 1)
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == optuna.trial.TrialState.FAIL and "dvc" in trial.user_attrs["error"]


def test_the_storage_password_is_never_printed(tmp_path, yaml_text):
    path = tmp_path / "space.yaml"
    path.write_text(yaml_text(SPACE))
    with pytest.raises(studies.SearchError) as error:
        studies.open_study(studies.load_space(path), "postgresql://user:hunter2secret@127.0.0.1:9/db")
    assert "hunter2secret" not in str(error.value) and "postgresql://***@127.0.0.1:9/db" in str(error.value)
