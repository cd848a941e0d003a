"""What a param reaches, proven through DVC: each key of params.yaml, changed the way `dvc exp run -S`
changes it, makes `dvc status` name exactly the stages docs/design.md's table says (written from the
schema by scripts/dvc_yaml.py); and a clone holding its data runs experiments with no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from betavae.pipeline import dotted, yamlfile
from betavae.pipeline.params import (
    BINARIZATIONS,
    DEVICES,
    INTERPOLATIONS,
    PARAMS_FILE,
    PRECISIONS,
    SELECTION_METRICS,
    ParamsError,
    parse_params,
)
from scripts.dvc_yaml import CHECK_STAGE, reach

CHOICES = {"device": DEVICES, "precision": PRECISIONS, "augment.interpolation": INTERPOLATIONS,
           "data.binarize": BINARIZATIONS, "select.metric": SELECTION_METRICS,
           "launcher": ("python", "torchrun --standalone --nproc-per-node 1")}
# No network: a download that tried one would fail at once (nothing listens on port 9).
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "",
           "PIP_NO_INDEX": "1", "no_proxy": "", "NO_PROXY": ""}


def another_value(key: str, params: dict) -> str:
    """A valid value for key other than its current one, as a `-S` override writes it."""
    current = dotted.get(params, key)
    if isinstance(current, bool):
        candidates = [not current]
    elif key in CHOICES:
        candidates = [choice for choice in CHOICES[key] if choice != current]
    elif isinstance(current, int):
        candidates = [current + 1, current - 1, current * 2, current // 2]
    elif isinstance(current, float):
        candidates = [current * 2, current / 2, current + 0.1]
    else:
        raise AssertionError(f"no other value known for {key} ({current!r}): add its choices to CHOICES")
    for candidate in candidates:
        flat = {**dotted.flatten(params), key: candidate}
        try:
            parse_params(dotted.nest(flat))
        except ParamsError:
            continue
        return f"'{candidate}'" if isinstance(candidate, str) else str(candidate).lower()
    raise AssertionError(f"no other valid value found for {key} among {candidates}")


def test_every_key_has_another_value_and_the_table_covers_every_key(tiny):
    params = parse_params(tiny()).to_dict()
    assert set(reach()) == set(dotted.flatten(params))
    for key in reach():
        another_value(key, params)
    assert reach()["eval.iw_samples"] == ("evaluate",) and "train" in reach()["beta"]
    assert all(stages for key, stages in reach().items()), "a param that no stage reads"


@pytest.fixture
def pulled_clone(tiny_run, tmp_path, run) -> tuple[Path, dict]:
    """A `git clone` of the committed tiny run that has fetched its data with `dvc pull` from a
    remote directory (the tiny run's cache, laid out as DVC lays out a remote), and the environment
    to run DVC there offline."""
    origin, env = tiny_run
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    shutil.copytree(origin / ".dvc" / "cache", tmp_path / "remote")
    run(["dvc", "remote", "add", "--local", "-d", "team", str(tmp_path / "remote")], clone, env)
    run(["dvc", "pull", "-q"], clone, env)
    offline = {key: value for key, value in env.items() if key != "MNIST_DIR"}
    return clone, {**offline, **OFFLINE}


@pytest.mark.slow
def test_a_change_to_each_param_reruns_exactly_the_stages_the_table_names(pulled_clone, run, monkeypatch):
    """DVC's own API, in this process (a `dvc` process per key would take minutes): its -S writer, its
    status and its repro of check_params, which runs the stage's command as `dvc repro` does."""
    from dvc.repo import Repo
    from dvc.utils.hydra import apply_overrides  # the writer of `dvc exp run -S`

    repo, env = pulled_clone
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(repo)

    def stages_to_rerun() -> set[str]:
        with Repo(str(repo)) as dvc:
            return set(dvc.status())

    assert stages_to_rerun() == set(), "a pulled clone must be up to date"
    committed = {name: (repo / name).read_bytes() for name in (PARAMS_FILE, "dvc.lock")}
    params = yamlfile.read(repo / PARAMS_FILE)
    wrong = []
    for key, stages in reach().items():
        override = f"{key}={another_value(key, params)}"
        apply_overrides(repo / PARAMS_FILE, [override])
        assert dotted.get(yamlfile.read(repo / PARAMS_FILE), key) != dotted.get(params, key), override
        assert stages_to_rerun() == {CHECK_STAGE, *stages}, override
        with Repo(str(repo)) as dvc:
            dvc.reproduce(CHECK_STAGE, single_item=True)
        found = stages_to_rerun()
        if found != set(stages):
            wrong.append(f"-S {override}: dvc status names {sorted(found)}, the table {sorted(stages)}")
        for name, data in committed.items():
            (repo / name).write_bytes(data)
    assert not wrong, "; ".join(wrong)


@pytest.mark.slow
def test_an_evaluation_setting_reruns_evaluation_only_and_a_pulled_clone_needs_no_network(pulled_clone, run):
    repo, env = pulled_clone
    ran = run(["dvc", "exp", "run", "-S", "eval.iw_samples=8"], repo, env).stdout
    pipeline = ("check_params", "download", "train", "evaluate", "plot", "export")
    rerun = {stage for stage in pipeline if f"Running stage '{stage}'" in ran}
    assert rerun == {CHECK_STAGE, "evaluate"}, ran
    assert "Stage 'download' didn't change, skipping" in ran
    # Even when its code changes, download keeps the verified files it finds, and reaches for no network.
    forced = run(["dvc", "repro", "--force", "--single-item", "download"], repo, env).stdout
    assert "from existing files" in forced
    assert run(["dvc", "status", "download"], repo, env).stdout.strip().endswith("up to date.")


@pytest.mark.slow
def test_data_on_a_shared_disk_behind_a_link_is_left_as_it_is_by_a_rerun(pulled_clone, run, tmp_path):
    """data/mnist a symbolic link to a directory elsewhere: DVC's own remover, which a stage without
    persist gets, made that directory world-writable through the link; the stage keeps it."""
    repo, env = pulled_clone
    shared = tmp_path / "shared-disk" / "mnist"
    shutil.copytree(repo / "data" / "mnist", shared)
    shared.chmod(0o755)
    shutil.rmtree(repo / "data" / "mnist")
    (repo / "data" / "mnist").symlink_to(shared, target_is_directory=True)
    before = {path.name: (path.read_bytes(), path.stat().st_mode) for path in shared.iterdir()}
    run(["dvc", "repro", "--force", "--single-item", "download"], repo, env)
    assert (repo / "data" / "mnist").is_symlink() and (repo / "data" / "mnist").resolve() == shared.resolve()
    assert shared.stat().st_mode & 0o777 == 0o755
    assert {path.name: (path.read_bytes(), path.stat().st_mode) for path in shared.iterdir()} == before
