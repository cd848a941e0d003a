"""dvc.yaml lists, for each stage, exactly the code and params that the package says its outputs
depend on (betavae/dependencies.py, betavae/params.py)."""

from __future__ import annotations

import pytest

from betavae import dependencies
from betavae.params import EVALUATION_PARAMS, EXPORT_PARAMS, PLOT_PARAMS, TRAINING_PARAMS, read_yaml

STAGE_PARAMS = {"train": TRAINING_PARAMS, "evaluate": EVALUATION_PARAMS, "plot": PLOT_PARAMS,
                "export": EXPORT_PARAMS}


def _dvc_yaml(repo_root) -> dict:
    return read_yaml(repo_root / "dvc.yaml")


def _script(stage: dict) -> str:
    words = stage["cmd"].split()
    return words[words.index("-m") + 1].replace(".", "/") + ".py"


@pytest.mark.parametrize("name", ["check_params", "download", "train", "evaluate", "plot", "export"])
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


# Package modules an inert module may import besides other inert ones: none of them computes.
INERT_MAY_IMPORT = {"betavae/dotted.py": "dotted keys into nested params"}


@pytest.mark.parametrize("inert", sorted(dependencies.INERT))
def test_a_module_marked_inert_cannot_reach_the_code_that_computes_outputs(inert):
    reached = dependencies.imports(inert) - set(dependencies.INERT)
    assert reached <= set(INERT_MAY_IMPORT), f"{inert} is marked inert but imports {sorted(reached)}"


def test_closure_follows_imports_and_skips_annotation_only_and_inert_ones():
    # grids.py imports the model only for a type annotation; figures.py nothing of the package
    assert "betavae/model.py" not in dependencies.closure("betavae/grids.py")
    assert "betavae/idx.py" in dependencies.closure("betavae/data.py")
    assert not set(dependencies.INERT) & dependencies.closure("stages/train.py")
    assert "betavae/dotted.py" in dependencies.closure("stages/evaluate.py")  # reached through params.py


def test_every_stage_runs_after_the_whole_params_file_is_checked(repo_root):
    stages = _dvc_yaml(repo_root)["stages"]
    (checked, options), = stages["check_params"]["outs"][0].items()
    assert options == {"cache": False, "persist": True} and checked in stages["check_params"]["cmd"]
    for name, stage in stages.items():
        assert name == "check_params" or checked in stage["deps"], name
        assert "${" not in stage["cmd"], f"{name}: a params value in a shell command"


def test_committed_outputs_live_in_git_and_survive_a_failed_stage(repo_root):
    stages = _dvc_yaml(repo_root)["stages"]
    for name in ("train", "evaluate", "plot", "export"):
        declared = [out for kind in ("outs", "metrics", "plots") for out in stages[name].get(kind, [])]
        for out in declared:
            (path, options), = out.items()
            assert options["cache"] is False and options["persist"] is True, (name, path)
    assert "models/checkpoint.pt" not in str(stages["train"].get("outs"))


def test_the_model_is_declared_as_a_dvc_artifact(repo_root):
    artifact = _dvc_yaml(repo_root)["artifacts"]["beta-vae-mnist"]
    assert artifact["path"] == "models/model.pt" and artifact["type"] == "model"
    assert artifact["desc"] and "mnist" in artifact["labels"]


def test_committed_artifacts_of_the_reference_run_stay_small(repo_root, run):
    listed = run(["git", "ls-files", "-z", "models", "reports"], repo_root).stdout.split("\0")
    binary = [repo_root / name for name in listed if name.endswith((".pt", ".png"))]
    assert sum(path.stat().st_size for path in binary if path.exists()) < 10 * 1024 * 1024


def test_the_lock_file_records_the_committed_code(repo_root):
    """A commit that changes code without `dvc repro` or `dvc commit` leaves `dvc status` dirty
    in every clone; the lock's hash of each tracked source file must be the file's."""
    import hashlib

    lock = read_yaml(repo_root / "dvc.lock")["stages"]
    stale = [
        (name, dep["path"])
        for name, stage in lock.items()
        for dep in stage["deps"]
        if dep["path"].endswith(".py")
        and hashlib.md5((repo_root / dep["path"]).read_bytes()).hexdigest() != dep["md5"]
    ]
    assert not stale, f"dvc.lock is stale for {stale}: run `dvc repro` (or `dvc commit` if outputs cannot change)"
