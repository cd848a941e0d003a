"""What is committed is what the committed code writes.

Every stage's output is committed (a clone has results at once) and dvc.lock records its hash, so an
output that the code no longer writes breaks every user's cache in silence: the first `dvc exp run`
rewrites it and reruns whatever depends on it. The stages that are cheap enough are rerun here, in a
fresh copy of the repository as committed, and what they write is held against what is committed,
and so is dvc.lock. Training is too long for CI: the model file records the code that trained it,
which is held against the code.

Two kinds of output. The bytes of check_params's and export's outputs depend on the code alone and
must be identical. Evaluate's and plot's are sums over the test set in floating point, whose order
follows the CPU's vector width (AVX2, AVX-512): run on another kind of CPU than the one that wrote
them, a printed number can move by one unit in its last place and a figure by one grey level in a
few antialiased pixels. They must agree to that, and in every other respect: the same files, keys,
columns, rows, integers and image sizes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from betavae.compat.code_dependencies import code_fingerprint
from betavae.pipeline import yamlfile
from betavae.pipeline.modelfile import ModelFile
from stages.evaluate import DECIMALS

EXACT_STAGES = ("check_params", "export")  # bytes that depend on the code alone
CPU_STAGES = ("evaluate", "plot")  # floating-point sums over the test set: the last digit follows the CPU
LAST_PLACE = 10.0 ** -DECIMALS  # evaluate's numbers are printed to DECIMALS places
MOST_GREY_LEVELS = 2  # a figure's pixel may differ by this much across CPUs ...
MOST_PIXELS = 0.01  # ... in at most this share of its pixels


def test_the_committed_model_was_trained_by_the_committed_code(repo_root):
    """models/model.pt names the code that trained it (a SHA-256 of each module of the training
    stage); retraining is too long for CI, so a change to that code must come with a new model."""
    provenance = ModelFile.read(repo_root / "models" / "model.pt").provenance
    recorded = (provenance.code if provenance else None) or {}
    current = code_fingerprint()
    changed = sorted(name for name in set(recorded) | set(current) if recorded.get(name) != current.get(name))
    assert recorded and not changed, (f"models/model.pt was trained by other code than the committed "
                                      f"{changed or 'code (it names none)'}: `make retrain` and commit what it writes")


def test_the_lock_records_the_committed_model_and_code(repo_root):
    """dvc.lock's train entry hashes the committed model and the code the model names."""
    import hashlib

    train = yamlfile.read(repo_root / "dvc.lock")["stages"]["train"]
    outs = {out["path"]: out["md5"] for out in train["outs"]}
    assert outs["models/model.pt"] == hashlib.md5((repo_root / "models" / "model.pt").read_bytes()).hexdigest()
    recorded = ModelFile.read(repo_root / "models" / "model.pt").provenance.code or {}
    locked = {dep["path"] for dep in train["deps"] if dep["path"].startswith("betavae/")}
    assert set(recorded) == locked


@pytest.mark.slow
def test_rerunning_the_cheap_stages_writes_the_committed_bytes(make_committed_copy, run, tmp_path):
    repo, env = make_committed_copy(tmp_path / "repo")
    assert _status(repo, env, run) == {}, "dvc status is not clean in a fresh copy of the committed repository"
    committed_lock = yamlfile.read(repo / "dvc.lock")["stages"]
    committed = {path: (repo / path).read_bytes() for path in _outputs(repo, committed_lock, EXACT_STAGES + CPU_STAGES)}

    run(["dvc", "repro", "--force", "--single-item", "check_params"], repo, env)
    assert _status(repo, env, run) == {}, "check_params wrote other bytes: every stage after it would rerun"
    run(["dvc", "repro", "--force", "--single-item", "export", "plot", "evaluate"], repo, env)

    lock = yamlfile.read(repo / "dvc.lock")["stages"]
    problems, exact = [], set(_outputs(repo, lock, EXACT_STAGES))
    for path, before in committed.items():
        after = (repo / path).read_bytes()
        if after != before and (path in exact or not _same_to_the_cpu(path, before, after)):
            problems.append(f"{path} is not what the code writes")
    for name, stage in committed_lock.items():
        rerun = lock[name]
        for key in ("cmd", "deps", "params"):
            if rerun.get(key) != stage.get(key):
                problems.append(f"dvc.lock {name}.{key} differs from the committed one")
        for out, out_before in zip(rerun.get("outs", []), stage.get("outs", [])):
            same_bytes = all((repo / path).read_bytes() == committed[path]
                             for path in committed if path == out["path"] or path.startswith(out["path"] + "/"))
            if same_bytes and out != out_before:
                problems.append(f"dvc.lock {name} records {out['path']} otherwise")
    assert not problems, "; ".join(problems) + " (rerun the stage with `dvc repro --force -s NAME` and commit)"


def _status(repo: Path, env: dict, run) -> dict:
    """`dvc status`, less its note that MNIST is in the workspace but not yet in this copy's DVC cache."""
    found = json.loads(run(["dvc", "status", "--json"], repo, env).stdout or "{}")
    uncached = {"changed outs": {"data/mnist": "not in cache"}}
    found = {stage: [change for change in changes if change != uncached] for stage, changes in found.items()}
    return {stage: changes for stage, changes in found.items() if changes}


def _outputs(repo: Path, lock: dict, stages: tuple[str, ...]) -> list[str]:
    """The files of these stages' outputs, as dvc.lock names them (a directory's files one by one)."""
    found = []
    for name in stages:
        for out in lock[name].get("outs", []):
            path = repo / out["path"]
            found += [out["path"]] if path.is_file() else sorted(
                str(child.relative_to(repo)) for child in path.rglob("*") if child.is_file())
    return found


def _same_to_the_cpu(path: str, before: bytes, after: bytes) -> bool:
    """Whether two outputs of evaluate or plot differ only as two CPUs' sums can (module docstring)."""
    suffix = Path(path).suffix
    if suffix == ".json":
        return _close(json.loads(before), json.loads(after))
    if suffix == ".csv":
        return _close(list(csv.reader(io.StringIO(before.decode()))), list(csv.reader(io.StringIO(after.decode()))))
    if suffix == ".png":
        first, second = (np.asarray(Image.open(io.BytesIO(data))).astype(int) for data in (before, after))
        if first.shape != second.shape:
            return False
        difference = np.abs(first - second).max(axis=-1) if first.ndim == 3 else np.abs(first - second)
        return difference.max() <= MOST_GREY_LEVELS and (difference > 0).mean() <= MOST_PIXELS
    return False


def _close(first, second) -> bool:
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_close(first[key], second[key]) for key in first)
    if isinstance(first, list) and isinstance(second, list):
        return len(first) == len(second) and all(_close(a, b) for a, b in zip(first, second))
    first, second = _number(first), _number(second)
    if isinstance(first, float) or isinstance(second, float):
        return isinstance(first, float | int) and isinstance(second, float | int) and \
            abs(first - second) <= 2 * LAST_PLACE + 1e-12
    return first == second


def _number(value):
    """A CSV cell as the number it holds (an integer stays one), anything else as it is."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


@pytest.mark.parametrize("before, after, same", [
    ({"test": {"nll": 91.8661, "active_units": 32}}, {"test": {"nll": 91.866, "active_units": 32}}, True),
    ({"test": {"nll": 91.8661}}, {"test": {"nll": 91.8671}}, False),
    ({"test": {"nll": 91.8661, "active_units": 32}}, {"test": {"nll": 91.8661, "active_units": 31}}, False),
    ({"test": {"nll": 91.8661}}, {"test": {"nll": 91.8661, "recon": 1.0}}, False),
    ([["digit", "nll"], ["9", "91.8661"]], [["digit", "nll"], ["9", "91.866"]], True),
    ([["digit", "nll"], ["9", "91.8661"]], [["digit", "nll"], ["8", "91.8661"]], False),
    ([["digit", "nll"], ["9", "91.8661"]], [["digit", "NLL"], ["9", "91.8661"]], False),
])
def test_the_allowance_for_another_cpu_is_one_printed_digit_and_nothing_else(before, after, same):
    assert _close(before, after) is same


def test_the_allowance_for_a_figure_is_a_few_faint_pixels():
    picture = np.zeros((40, 50, 4), dtype=np.uint8)
    faint, moved = picture.copy(), picture.copy()
    faint[0, :5, 0] = 1  # 5 pixels one grey level off
    moved[10:30, 10:30, :3] = 255  # a mark drawn elsewhere

    def png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="png")
        return buffer.getvalue()

    assert _same_to_the_cpu("a.png", png(picture), png(faint))
    assert not _same_to_the_cpu("a.png", png(picture), png(moved))
    assert not _same_to_the_cpu("a.png", png(picture), png(picture[:, :40]))
