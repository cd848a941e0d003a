"""dvc.yaml lists, for each stage, exactly the code and params that the package says its outputs
depend on (betavae/dependencies.py, betavae/params.py)."""

from __future__ import annotations

import pytest
import yaml

from betavae import dependencies
from betavae.params import EVALUATION_PARAMS, PLOT_PARAMS, TRAINING_PARAMS

STAGE_PARAMS = {"train": TRAINING_PARAMS, "evaluate": EVALUATION_PARAMS, "plot": PLOT_PARAMS}


def _dvc_yaml(repo_root) -> dict:
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())


def _script(stage: dict) -> str:
    words = stage["cmd"].split()
    return words[words.index("-m") + 1].replace(".", "/") + ".py"


@pytest.mark.parametrize("name", ["check_params", "download", "train", "evaluate", "plot"])
def test_stage_lists_exactly_the_code_it_runs(name, repo_root):
    stage = _dvc_yaml(repo_root)["stages"][name]
    listed = {dep for dep in stage["deps"] if dep.endswith(".py")}
    needed = dependencies.closure(_script(stage))
    assert listed - needed == set(), f"{name}: listed but never imported"
    assert needed - listed == set(), f"{name}: imported but not a dependency"


@pytest.mark.parametrize("name", sorted(STAGE_PARAMS))
def test_stage_lists_exactly_the_params_its_outputs_depend_on(name, repo_root):
    assert _dvc_yaml(repo_root)["stages"][name]["params"] == list(STAGE_PARAMS[name])


def test_the_params_check_depends_on_the_whole_file(repo_root):
    assert _dvc_yaml(repo_root)["stages"]["check_params"]["params"] == [{"params.yaml": None}]


def test_the_training_checkpoint_hashes_the_code_dvc_reruns_training_for(repo_root):
    listed = {dep for dep in _dvc_yaml(repo_root)["stages"]["train"]["deps"] if dep.startswith("betavae/")}
    assert set(dependencies.code_fingerprint()) == listed


def test_closure_follows_imports_and_skips_annotation_only_and_inert_ones():
    # grids.py imports the model only for a type annotation; figures.py nothing of the package
    assert "betavae/model.py" not in dependencies.closure("betavae/grids.py")
    assert "betavae/idx.py" in dependencies.closure("betavae/data.py")
    assert not set(dependencies.INERT) & dependencies.closure("stages/train.py")


def test_committed_outputs_live_in_git_and_survive_a_failed_stage(repo_root):
    stages = _dvc_yaml(repo_root)["stages"]
    for name in ("train", "evaluate", "plot"):
        declared = [out for kind in ("outs", "metrics", "plots") for out in stages[name].get(kind, [])]
        for out in declared:
            (path, options), = out.items()
            assert options["cache"] is False and options["persist"] is True, (name, path)
    assert "models/checkpoint.pt" not in yaml.safe_dump(stages["train"].get("outs"))


def test_the_model_is_declared_as_a_dvc_artifact(repo_root):
    artifact = _dvc_yaml(repo_root)["artifacts"]["beta-vae-mnist"]
    assert artifact["path"] == "models/model.pt" and artifact["type"] == "model"
    assert artifact["desc"] and "mnist" in artifact["labels"]
