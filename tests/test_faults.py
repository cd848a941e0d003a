"""Fault injection, as storage engines test themselves: a small file system that runs full under every
stage and every `betavae` command that writes, the process's own limits (`ulimit -f`, `ulimit -v`),
and stopping signals delivered in the middle of a write, each to a real process. Each case asserts
what docs/trust.md promises: one line and exit status 1 (or, for a signal, the signal's own end), the
previous outputs byte for byte, no temporary file left, and where a run resumes, the bytes of an
uninterrupted run.

Small file systems are tmpfs mounts, which need root: elsewhere those cases are skipped, saying why
(.ci/run runs this file as root where sudo can). Everything is bounded (every process has a timeout,
every wait a deadline, a write held for a signal lets go after two minutes) and seeded (how much
space a full disk leaves is drawn from a generator seeded by the case)."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EPOCHS = 2
TIMEOUT_S = 300
PAGE = 4096
LEFT_BEHIND = re.compile(r"\..+\.([a-z0-9_]{8}\.tmp|old)")  # betavae/pipeline/atomic.py's temporary names


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def own_dvc_state(tmp_path_factory, monkeypatch):
    """Each case's processes keep DVC's state databases (DVCLive opens the repository) in a folder of their
    own: a limit or a full disk meets what the case made, not a database that other tests grew."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-state")))


class SmallDisk:
    """A tmpfs of `size` bytes mounted at path, filled on request to leave a given number of bytes free."""

    def __init__(self, path: Path, size: int):
        self.path, self.filler = path, path / ".filler"
        path.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip() or mounted.returncode}")

    def fill(self, leave: int) -> None:
        """Leave `leave` bytes free (rounded down to whole pages, as tmpfs counts them)."""
        stats = os.statvfs(self.path)
        size = max(stats.f_bavail * stats.f_frsize - leave // PAGE * PAGE, 0)
        with open(self.filler, "wb") as filler:
            if size:
                os.posix_fallocate(filler.fileno(), 0, size)

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size=32 MiB, path=tmp_path/disk<n>) -> a SmallDisk mounted there, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system (tmpfs) needs root; .ci/run runs these tests as root")
    disks = []

    def make(size: int = 32 * 2**20, path: Path | None = None) -> SmallDisk:
        disks.append(SmallDisk(path or tmp_path / f"disk{len(disks)}", size))
        return disks[-1]

    yield make
    for disk in disks:
        disk.unmount()


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under directory by its relative path, with its bytes (a full disk's filler left out)."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name != ".filler"}


def _left_behind(directory: Path) -> list[str]:
    return [str(path) for path in directory.rglob(".*") if LEFT_BEHIND.fullmatch(path.name)]


def _error_line(ended: subprocess.CompletedProcess, name: str) -> str:
    """The one line a failed command ends with, checked: exit status 1, no traceback, nothing after it."""
    assert ended.returncode == 1, (ended.returncode, ended.stderr[-3000:])
    assert "Traceback" not in ended.stderr and "Exception ignored" not in ended.stderr, ended.stderr[-3000:]
    line = ended.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{name}: error: "), ended.stderr[-3000:]
    return line


def _default_signals() -> None:
    """A child starts with every stopping signal at its default, as from an interactive shell (a CI job
    started with `&` has SIGINT ignored, which its children would inherit)."""
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # SIGQUIT: no core file


def _limited(limit: int, value: int):
    def preexec() -> None:
        _default_signals()
        resource.setrlimit(limit, (value, value))
    return preexec


def _run(command: list[str], repo_root: Path, preexec=_default_signals, env: dict | None = None):
    return subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=TIMEOUT_S,
                          preexec_fn=preexec, env=env)


def _betavae(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "betavae.uses.cli", *arguments]


# --- a tiny trained run, the reference every rerun must match ------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory, make_mnist, tiny, yaml_text, stage_command, repo_root):
    """A tiny run of every stage, uninterrupted: root/params.yaml, root/mnist, and root/run/ holding
    model.pt, live/, metrics.json, per_digit.csv, latent_kl.csv, figures/, explorer/."""
    root = tmp_path_factory.mktemp("reference")
    make_mnist(root / "mnist")
    (root / "params.yaml").write_text(yaml_text(tiny(epochs=EPOCHS)))
    for name in ("train", "evaluate", "plot", "export"):
        ended = _run(stage_command(name, _arguments(name, root, root / "run")), repo_root)
        assert ended.returncode == 0, ended.stderr[-3000:]
    return root


def _arguments(name: str, root: Path, out: Path, model: Path | None = None, live: Path | None = None) -> list[str]:
    """The stage's arguments on the reference's params and data, writing into out (the training log into
    live, out/live unless given; the model, and the log the plot draws, from `model`'s directory when given)."""
    common = ["--params", str(root / "params.yaml"), "--data", str(root / "mnist")]
    trained = model or out / "model.pt"
    return {
        "train": [*common, "--model", str(out / "model.pt"), "--checkpoint", str(out / "checkpoint.pt"),
                  "--live", str(live or out / "live")],
        "evaluate": [*common, "--model", str(trained), "--metrics", str(out / "metrics.json"), "--per-digit",
                     str(out / "per_digit.csv"), "--latent-kl", str(out / "latent_kl.csv")],
        "plot": [*common, "--model", str(trained), "--history", str(trained.parent / "live" / "plots" / "metrics"),
                 "--out", str(out / "figures")],
        "export": [*common, "--model", str(trained), "--out", str(out / "explorer")],
    }[name]


OUTPUTS = {"train": ("model.pt", "live"), "evaluate": ("metrics.json", "per_digit.csv", "latent_kl.csv"),
           "plot": ("figures",), "export": ("explorer",)}
TIMED = "epoch_seconds"  # the training log's wall-clock seconds per epoch: they differ from run to run


def _previous_outputs(name: str, out: Path, reference: Path, live: Path | None = None) -> None:
    """Stand-ins for the outputs a stage replaces, which a failed run must leave byte for byte: its files,
    and the training log, a directory replaced whole."""
    for output in OUTPUTS[name]:
        path = live if output == "live" and live else out / output
        path.parent.mkdir(parents=True, exist_ok=True)
        if "." in output:
            path.write_bytes(f"previous {output}".encode())
            continue
        path.mkdir()
        names = ["previous.txt"] if output == "live" else [file.name for file in (reference / "run" / output).iterdir()]
        for file in names:
            (path / file).write_text(f"previous {output}/{file}")


def _outputs(name: str, out: Path, live: Path | None = None) -> dict[str, object]:
    """What the stage wrote, as its outputs' relative paths and bytes (the training log's summary as its
    values), the wall-clock seconds left out."""
    found = {}
    for output in OUTPUTS[name]:
        path = live if output == "live" and live else out / output
        if path.is_file():
            found[output] = path.read_bytes()
        for relative, data in (_files(path).items() if path.is_dir() else ()):
            if relative == "metrics.json":
                found[f"{output}/{relative}"] = {key: value for key, value in json.loads(data).items() if key != TIMED}
            elif TIMED not in relative:
                found[f"{output}/{relative}"] = data
    return found


def _kept(files: dict[str, bytes]) -> dict[str, bytes]:
    """files without the unfinished run's training state (models/checkpoint.pt and its log), which a
    failed run keeps so that the next one resumes."""
    return {path: data for path, data in files.items() if not Path(path).name.startswith("checkpoint")
            and "checkpoint.live" not in path}


# --- a file system that runs full ------------------------------------------------------------------


@pytest.mark.parametrize("case, seed, low, high", [
    ("train: DVCLive's log is the first write to fail", 1, 0, 48 * 2**10),
    ("train: the finished log goes to another file system, which is full", 2, 0, 96 * 2**10),
    ("evaluate", 3, 0, None), ("plot", 4, 0, None), ("export", 5, 0, None),
])
def test_a_full_disk_under_a_stage_is_one_line_loses_nothing_and_a_rerun_ends_as_an_uninterrupted_run(
        case, seed, low, high, small_disk, reference, stage_command, repo_root, tmp_path):
    name = case.split(":")[0]
    if "another file system" in case:  # the model and the training state here, the finished log on the disk
        out = tmp_path / "out"
        disk = small_disk(path=out / "logs")
        live = disk.path / "live"
    else:
        disk = small_disk()
        out, live = disk.path, None
    _previous_outputs(name, out, reference, live)
    before = _files(out)
    needed = sum(-(-len(data) // PAGE) * PAGE for data in _outputs(name, reference / "run").values()
                 if isinstance(data, bytes))
    disk.fill(random.Random(seed).randrange(low, high or max(needed - PAGE, 1)))  # less than the outputs need
    model = None if name == "train" else reference / "run" / "model.pt"
    arguments = _arguments(name, reference, out, model, live)
    line = _error_line(_run(stage_command(name, arguments), repo_root), name)
    assert "No space left on device" in line and len(line) <= 480, line
    assert _kept(_files(out)) == before and _left_behind(out) == []

    disk.unfill()
    ended = _run(stage_command(name, arguments), repo_root)
    assert ended.returncode == 0, ended.stderr[-3000:]
    assert _outputs(name, out, live) == _outputs(name, reference / "run")
    assert _left_behind(out) == []


def test_dvcs_state_on_a_full_disk_stops_training_in_one_line_and_a_rerun_ends_as_an_uninterrupted_run(
        small_disk, reference, stage_command, repo_root, tmp_path, monkeypatch):
    """DVCLive opens the DVC repository, whose state databases (SQLite, through diskcache) live in DVC's
    site cache folder: on a full disk the first write there is a library's, into a database."""
    disk = small_disk(4 * 2**20)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(disk.path / "dvc"))
    out = tmp_path / "out"
    _previous_outputs("train", out, reference)
    before = _files(out)
    disk.fill(0)
    line = _error_line(_run(stage_command("train", _arguments("train", reference, out)), repo_root), "train")
    assert line == "train: error: a write by dvclive to its SQLite database failed: database or disk is full"
    assert _kept(_files(out)) == before and _left_behind(out) == []
    disk.unfill()
    ended = _run(stage_command("train", _arguments("train", reference, out)), repo_root)
    assert ended.returncode == 0, ended.stderr[-3000:]
    assert _outputs("train", out) == _outputs("train", reference / "run")


COMMANDS = {  # each command's arguments, given the model, an IDX file of images and the output directory
    "sample": lambda model, images, out: ["sample", "--model", model, "-n", "64", "--out", f"{out}/samples.png"],
    "reconstruct": lambda model, images, out: ["reconstruct", "--model", model, "--images", images, "--out",
                                               f"{out}/reconstructions.png"],
    "encode": lambda model, images, out: ["encode", "--model", model, "--images", images, "--out",
                                          f"{out}/latents.csv"],
    "traverse": lambda model, images, out: ["traverse", "--model", model, "--out", f"{out}/traversal.pdf"],
    "digits": lambda model, images, out: ["digits", "--images", images, "--first", "40", "--out-dir",
                                          f"{out}/digits"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_full_disk_under_a_command_is_one_line_and_its_output_stays_as_it_was(command, small_disk, reference,
                                                                                 repo_root):
    disk = small_disk(4 * 2**20)
    images = reference / "mnist" / "t10k-images-idx3-ubyte"
    arguments = COMMANDS[command](str(reference / "run" / "model.pt"), str(images), str(disk.path))
    written = Path(arguments[-1])
    if command == "digits":
        written.mkdir()
        (written / "digit-0000.png").write_bytes(b"previous digit")
    else:
        written.write_bytes(b"previous output")
    before = _files(disk.path)
    disk.fill(0)
    line = _error_line(_run(_betavae(*arguments), repo_root), "betavae")
    assert "No space left on device" in line and line.startswith("betavae: error: cannot write "), line
    assert _files(disk.path) == before and _left_behind(disk.path) == []


# --- the process's own limits -----------------------------------------------------------------------


def test_the_file_size_limit_stops_training_in_one_line_and_a_rerun_ends_as_an_uninterrupted_run(
        reference, stage_command, repo_root, tmp_path):
    """`ulimit -f 1024`: the training state (a few MB) cannot be written; Python ignores SIGXFSZ, so the
    write fails with EFBIG and says so."""
    out = tmp_path / "out"
    _previous_outputs("train", out, reference)
    before = _files(out)
    arguments = _arguments("train", reference, out)
    ended = _run(stage_command("train", arguments), repo_root, preexec=_limited(resource.RLIMIT_FSIZE, 2**20))
    assert _error_line(ended, "train") == (f"train: error: cannot write {out / 'checkpoint.pt'}: File too large (this "
                                           "process's file size limit, `ulimit -f`, is 1,048,576 bytes)")
    assert _kept(_files(out)) == before and _left_behind(out) == []
    ended = _run(stage_command("train", arguments), repo_root)
    assert ended.returncode == 0, ended.stderr[-3000:]
    assert _outputs("train", out) == _outputs("train", reference / "run")


def test_the_file_size_limit_stops_a_command_in_one_line(reference, repo_root, tmp_path):
    (tmp_path / "samples.png").write_bytes(b"previous output")
    ended = _run(_betavae("sample", "--model", str(reference / "run" / "model.pt"), "-n", "64", "--out",
                          str(tmp_path / "samples.png")), repo_root, preexec=_limited(resource.RLIMIT_FSIZE, PAGE))
    assert _error_line(ended, "betavae") == (f"betavae: error: cannot write {tmp_path / 'samples.png'}: File too large "
                                             "(this process's file size limit, `ulimit -f`, is 4,096 bytes)")
    assert _files(tmp_path) == {"samples.png": b"previous output"}


@pytest.fixture(scope="module")
def address_space_of_torch(repo_root) -> int:
    """Bytes of address space a process maps once torch and the package are loaded (VmSize): what an
    address-space limit must leave room for, which differs from machine to machine (threads, libraries)."""
    probe = "import torch, betavae.uses.api, betavae.training.loop\nprint(open('/proc/self/status').read())"
    status = _run([sys.executable, "-c", probe], repo_root).stdout
    return int(re.search(r"VmSize:\s+(\d+) kB", status)[1]) * 1024


def test_an_address_space_limit_refuses_a_run_that_cannot_fit_before_it_starts(
        address_space_of_torch, make_mnist, yaml_text, tiny, stage_command, repo_root, tmp_path):
    """`ulimit -v` with a GiB to spare after torch: `-S batch_size=512 -S train_samples=16` (about 2.5 GiB)
    is refused by the estimate, naming the limit, and nothing is written."""
    make_mnist(tmp_path / "mnist", train=1200)
    (tmp_path / "params.yaml").write_text(yaml_text(tiny(batch_size=512, train_samples=16, z_dim=32,
                                                         data={"limit": 1100, "val_size": 64})))
    out = tmp_path / "out"
    arguments = ["--params", str(tmp_path / "params.yaml"), "--data", str(tmp_path / "mnist"), "--model",
                 str(out / "model.pt"), "--checkpoint", str(out / "checkpoint.pt"), "--live", str(out / "live")]
    limit = address_space_of_torch + 2**30
    line = _error_line(_run(stage_command("train", arguments), repo_root,
                            preexec=_limited(resource.RLIMIT_AS, limit)), "train")
    assert line.startswith("train: error: training with z_dim 32, batch_size 512 and train_samples 16 needs about ")
    assert "free on cpu under this process's address-space limit (`ulimit -v`)" in line, line
    assert not out.exists()


@pytest.mark.parametrize("spare", [-2**30, 0, 96 * 2**20, 192 * 2**20])
def test_under_any_address_space_limit_a_command_ends_in_one_line_or_its_work(spare, address_space_of_torch,
                                                                            reference, repo_root, tmp_path):
    """From too little to load torch to just enough: refused by the estimate, out of memory while
    decoding, or done; never a traceback, and the previous output stays unless replaced whole."""
    (tmp_path / "samples.png").write_bytes(b"previous output")
    ended = _run(_betavae("sample", "--model", str(reference / "run" / "model.pt"), "-n", "10000", "--out",
                          str(tmp_path / "samples.png")), repo_root,
                 preexec=_limited(resource.RLIMIT_AS, address_space_of_torch + spare))
    if ended.returncode == 0:
        assert (tmp_path / "samples.png").read_bytes().startswith(b"\x89PNG")
    else:
        line = _error_line(ended, "betavae")
        assert "ulimit -v" in line or "out of memory" in line, line
        assert (tmp_path / "samples.png").read_bytes() == b"previous output"
    assert _left_behind(tmp_path) == []


# --- stopping signals at a write --------------------------------------------------------------------

# Loaded by a stage's Python before anything else (PYTHONPATH): holds the FAULT_HOLD_AT-th fsync of a temporary
# file whose name holds FAULT_HOLD, says so in FAULT_READY, and waits there, in the middle of the write, for the
# test's signal (two minutes at most).
HOLD = """
import os, time
from pathlib import Path

_fsync, _seen = os.fsync, [0]
_match, _at, _ready = os.environ["FAULT_HOLD"], int(os.environ["FAULT_HOLD_AT"]), Path(os.environ["FAULT_READY"])


def fsync(descriptor):
    try:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}"))
    except OSError:
        name = ""
    if name.startswith(_match) and name.endswith(".tmp"):
        _seen[0] += 1
        if _seen[0] == _at:
            _ready.write_text(name)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(0.01)
    _fsync(descriptor)


os.fsync = fsync
"""


def _held_at_a_write(command: list[str], prefix: str, at: int, repo_root: Path, tmp_path: Path, until):
    """Start command with its at-th write of a temporary file named prefix... held; return the process once
    it is there."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD)
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
           "FAULT_HOLD": prefix, "FAULT_HOLD_AT": str(at), "FAULT_READY": str(ready)}
    process = subprocess.Popen(command, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_default_signals)
    until(ready.exists, f"the write of {prefix}", timeout_s=TIMEOUT_S, process=process)
    return process


@pytest.mark.parametrize("number", [signal.SIGHUP, signal.SIGKILL], ids=lambda number: signal.Signals(number).name)
def test_a_signal_while_the_checkpoint_is_written_leaves_nothing_and_a_rerun_ends_as_an_uninterrupted_run(
        number, reference, stage_command, repo_root, tmp_path, until):
    """The second epoch's training state is being written when the signal comes. SIGHUP is caught: the
    temporary file goes, one line says so, and the process ends by SIGHUP. SIGKILL cannot be caught: the
    next run of the writer removes what it left. Either way the rerun resumes after the first epoch and
    ends with the bytes of an uninterrupted run."""
    out = tmp_path / "out"
    _previous_outputs("train", out, reference)
    before = _files(out)
    arguments = _arguments("train", reference, out)
    process = _held_at_a_write(stage_command("train", arguments), ".checkpoint.pt.", 2, repo_root, tmp_path, until)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == -number, stderr[-3000:]
    if number != signal.SIGKILL:
        assert stderr.strip().splitlines()[-1] == f"train: stopped by {signal.Signals(number).name}", stderr[-3000:]
        assert "Traceback" not in stderr and "Exception ignored" not in stderr
        assert _left_behind(out) == []
    else:
        assert [Path(path).name.startswith(".checkpoint.pt.") for path in _left_behind(out)] == [True]
    assert {path: data for path, data in _files(out).items() if not path.startswith(("checkpoint", "."))} == before

    ended = _run(stage_command("train", arguments), repo_root)
    assert ended.returncode == 0 and "resuming from" in ended.stdout, ended.stderr[-3000:]
    assert _outputs("train", out) == _outputs("train", reference / "run")
    assert _left_behind(out) == [] and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("name, number, prefix", [
    ("plot", signal.SIGTERM, ".samples.png."), ("export", signal.SIGQUIT, ".explorer.json."),
    ("evaluate", signal.SIGUSR1, ".per_digit.csv."),
], ids=["plot-SIGTERM", "export-SIGQUIT", "evaluate-SIGUSR1"])
def test_a_signal_while_a_stage_writes_its_outputs_leaves_them_as_they_were(name, number, prefix, reference,
                                                                           stage_command, repo_root, tmp_path, until):
    out = tmp_path / "out"
    _previous_outputs(name, out, reference)
    before = _files(out)
    arguments = _arguments(name, reference, out, reference / "run" / "model.pt")
    process = _held_at_a_write(stage_command(name, arguments), prefix, 1, repo_root, tmp_path, until)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    said = "terminated" if number == signal.SIGTERM else f"stopped by {signal.Signals(number).name}"
    assert process.returncode == -number and stderr.strip().splitlines() == [f"{name}: {said}"], stderr[-3000:]
    assert _files(out) == before and _left_behind(out) == []
