"""dvc.yaml lists, for each stage, exactly the code and params that the package says its outputs
depend on (betavae/compat/code_dependencies.py, betavae/pipeline/params.py)."""

from __future__ import annotations

import pytest

from betavae.compat import code_dependencies
from betavae.pipeline import yamlfile
from betavae.pipeline.params import stage_params
from scripts import dvc_yaml

STAGES_WITH_PARAMS = ("train", "evaluate", "plot", "export")


def _dvc_yaml(repo_root) -> dict:
    return yamlfile.read(repo_root / "dvc.yaml")


def test_dvc_yaml_lists_the_code_and_params_the_package_says(repo_root):
    """The lists are written by scripts/dvc_yaml.py; a module or param added without rerunning it fails here."""
    assert dvc_yaml.differences(repo_root / "dvc.yaml", repo_root) == [], "run `make dvc-yaml`"


@pytest.mark.parametrize("name", ["check_params", "download", "train", "evaluate", "plot", "export"])
def test_stage_lists_exactly_the_code_it_runs(name, repo_root):
    stage = _dvc_yaml(repo_root)["stages"][name]
    listed = {dep for dep in stage["deps"] if dep.endswith(".py")}
    needed = code_dependencies.closure(dvc_yaml.script_of(stage), repo_root)
    assert listed - needed == set(), f"{name}: listed but never imported"
    assert needed - listed == set(), f"{name}: imported but not a dependency"


@pytest.mark.parametrize("name", STAGES_WITH_PARAMS)
def test_stage_lists_exactly_the_params_its_outputs_depend_on(name, repo_root):
    assert _dvc_yaml(repo_root)["stages"][name]["params"] == list(stage_params(name))


def test_a_param_of_one_stage_is_listed_leaf_by_leaf_and_a_whole_group_by_its_name():
    assert "augment" in stage_params("train") and "data.limit" in stage_params("evaluate")
    assert "data" not in stage_params("evaluate") and "eval" not in stage_params("train")


def test_the_generator_rewrites_a_stale_list_and_keeps_the_rest_of_the_file(repo_root, tmp_path):
    stale = tmp_path / "dvc.yaml"
    text = (repo_root / "dvc.yaml").read_text()
    stale.write_text(text.replace("      - betavae/core/model.py\n", "", 1).replace("      - seed\n", "", 1))
    assert len(dvc_yaml.differences(stale, repo_root)) == 2
    dvc_yaml.rewrite(stale, repo_root)
    assert stale.read_text() == text


def test_the_params_check_depends_on_the_whole_file(repo_root):
    assert _dvc_yaml(repo_root)["stages"]["check_params"]["params"] == [{"params.yaml": None}]


def test_the_training_checkpoint_hashes_the_code_dvc_reruns_training_for(repo_root):
    listed = {dep for dep in _dvc_yaml(repo_root)["stages"]["train"]["deps"] if dep.startswith("betavae/")}
    assert set(code_dependencies.code_fingerprint()) == listed


# Package modules an inert module may import besides other inert ones: none of them computes.
INERT_MAY_IMPORT = {"betavae/pipeline/dotted.py": "dotted keys into nested params",
                    "betavae/core/idx.py": "the size of MNIST's training set, params.yaml's bound on data.limit"}


@pytest.mark.parametrize("inert", sorted(code_dependencies.INERT))
def test_a_module_marked_inert_cannot_reach_the_code_that_computes_outputs(inert):
    reached = code_dependencies.imports(inert) - set(code_dependencies.INERT)
    assert reached <= set(INERT_MAY_IMPORT), f"{inert} is marked inert but imports {sorted(reached)}"


def test_closure_follows_imports_and_skips_annotation_only_and_inert_ones():
    # grids.py imports the model only for a type annotation; figures.py nothing of the package
    assert "betavae/core/model.py" not in code_dependencies.closure("betavae/core/grids.py")
    assert "betavae/core/idx.py" in code_dependencies.closure("betavae/core/data.py")
    assert not set(code_dependencies.INERT) & code_dependencies.closure("stages/train.py")
    assert "betavae/pipeline/dotted.py" in code_dependencies.closure("stages/evaluate.py")  # reached through params.py


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

    lock = yamlfile.read(repo_root / "dvc.lock")["stages"]
    stale = [
        (name, dep["path"])
        for name, stage in lock.items()
        for dep in stage["deps"]
        if dep["path"].endswith(".py")
        and hashlib.md5((repo_root / dep["path"]).read_bytes()).hexdigest() != dep["md5"]
    ]
    assert not stale, f"dvc.lock is stale for {stale}: run `dvc repro` (or `dvc commit` if outputs cannot change)"
