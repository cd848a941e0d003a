"""Shared fixtures: tiny synthetic MNIST files, tiny params, the stages run in-process or as
processes, and throwaway git + DVC copies of this repository on them. Every test builds what it
needs from these, so each one runs alone.

Two tiers (pyproject.toml): tests marked `slow` start DVC, git, torchrun or a stage as a process
(`make test-all`); everything else runs in the test process (`make test`). Both tiers run a
pytest-xdist worker per core."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from ruamel.yaml import YAML

from betavae.compat import dvc_workspace
from betavae.core import idx
from betavae.pipeline import yamlfile
from betavae.pipeline.fetch import TEST_CHECKSUMS_ENV
from betavae.pipeline.params import PARAMS_FILE, parse_params

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = 400
TINY_TEST = 100
TINY_PARAMS = {
    "epochs": 2, "warmup_epochs": 1, "kl_anneal_epochs": 1, "batch_size": 32, "z_dim": 4,
    "snapshot_every": 1, "data": {"limit": TINY_TRAIN, "val_size": 64}, "eval": {"iw_samples": 4},
    "augment": {"rotation": 10.0, "translate": 0.1},
}


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 28, 28) uint8 images and labels 0-9: each digit a bar at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        image[4 + 2 * label: 7 + 2 * label, 4:24] = 255
        image[4:24, 4 + 2 * label: 7 + 2 * label] = 200
    return images, labels.astype(np.uint8)


def write_mnist(directory: Path, train: int = TINY_TRAIN, test: int = TINY_TEST) -> dict[str, str]:
    """Write the four IDX files to directory; return their md5s by file name."""
    directory.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = synthetic_digits(train, seed=1)
    test_images, test_labels = synthetic_digits(test, seed=2)
    contents = dict(zip(idx.MNIST_FILES, (idx.encode(train_images), idx.encode(train_labels),
                                          idx.encode(test_images), idx.encode(test_labels))))
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    return {name: hashlib.md5(data).hexdigest() for name, data in contents.items()}


def tiny_params(**overrides) -> dict:
    """TINY_PARAMS with top-level overrides, as a raw dict."""
    return {**TINY_PARAMS, **overrides}


def tiny_steps_per_epoch(**overrides) -> int:
    """Optimiser steps per epoch of the tiny params, as the training loop counts them."""
    params = parse_params(tiny_params(**overrides))
    return params.train_images // params.batch_size


def dump_yaml(data: dict) -> str:
    """YAML text as DVC writes params.yaml (ruamel.yaml, YAML 1.2)."""
    buffer = io.StringIO()
    YAML().dump(data, buffer)
    return buffer.getvalue()


POLL_S = 0.02  # between two looks: a file's appearance is seen within this


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 300,
             process: subprocess.Popen | None = None, every_s: float = POLL_S) -> None:
    """Poll condition every every_s seconds until it holds; fail naming `what` after timeout_s, or as
    soon as process (the one expected to make it true) has exited. A look that costs CPU (a scan of
    /proc, a process of its own) takes a longer every_s, so that waiting does not slow what it waits for."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode} first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s} s")
        time.sleep(every_s)


@dataclasses.dataclass(frozen=True)
class StageRun:
    """A stage's files in one directory: MNIST in root/mnist, params in root/params.yaml."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    def train(self, *extra: str) -> list[str]:
        r = self.root
        return ["--params", str(self.params), "--data", str(r / "mnist"), "--model", str(r / "model.pt"),
                "--checkpoint", str(r / "checkpoint.pt"), "--live", str(r / "live"), *extra]

    def evaluate(self, model: Path | None = None) -> list[str]:
        r = self.root
        return ["--params", str(self.params), "--data", str(r / "mnist"), "--model", str(model or r / "model.pt"),
                "--metrics", str(r / "metrics.json"), "--per-digit", str(r / "per_digit.csv"),
                "--latent-kl", str(r / "latent_kl.csv")]

    def plot(self) -> list[str]:
        r = self.root
        return ["--params", str(self.params), "--data", str(r / "mnist"), "--model", str(r / "model.pt"),
                "--history", str(r / "live" / "plots" / "metrics"), "--out", str(r / "figures")]


@dataclasses.dataclass(frozen=True)
class Ended:
    """How a stage ended: exit status and what it printed."""

    status: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The last line of stderr, checked to be a one-line failure without a traceback."""
        lines = self.stderr.strip().splitlines()
        assert self.status != 0 and lines, self
        assert "Traceback" not in self.stderr, self.stderr
        return lines[-1]


def call_stage(name: str, arguments: list[str], capsys) -> Ended:
    """Run stages/<name>.py's main in this process as its `__main__` does (dvc_workspace.run_stage)."""
    stage = importlib.import_module(f"stages.{name}")
    saved = sys.argv
    sys.argv = [f"stages/{name}.py", *arguments]
    capsys.readouterr()
    try:
        dvc_workspace.run_stage(stage.main, name)
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return Ended(status, out, err)


def stage_process(name: str, arguments: list[str]) -> list[str]:
    """The command that runs a stage as its own process, as DVC does."""
    return [sys.executable, "-m", f"stages.{name}", *arguments]


def sh(args: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def copy_repository(destination: Path) -> None:
    """The files git would commit (tracked, or untracked and not ignored), copied to destination."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def repo_environment(root: Path) -> dict:
    """Environment for DVC runs in a tiny copy: MNIST from root/mnist, checked against its own md5s."""
    checksums = write_mnist(root / "mnist")
    (root / "md5.json").write_text(json.dumps(checksums))
    return {**os.environ, "MNIST_DIR": str(root / "mnist"), TEST_CHECKSUMS_ENV: str(root / "md5.json"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def write_params(path: Path, overrides: dict) -> None:
    """Apply overrides (nested dicts update groups) to the params file at path."""
    params = yamlfile.read(path)
    for key, value in overrides.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    path.write_text(dump_yaml(params))


def make_tiny_repo(root: Path, **overrides) -> tuple[Path, dict]:
    """A git repo at root/repo holding this repository with tiny params and no committed run
    outputs, and the environment to run DVC in it."""
    repo = root / "repo"
    copy_repository(repo)
    env = repo_environment(root)
    (repo / "dvc.lock").unlink(missing_ok=True)
    for committed in ("models", "reports"):
        shutil.rmtree(repo / committed, ignore_errors=True)
    (repo / "models").mkdir()
    shutil.copy2(REPO / "models" / ".gitignore", repo / "models" / ".gitignore")
    write_params(repo / "params.yaml", tiny_params(**overrides))
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny copy"], repo, env)
    return repo, env


def pytest_configure(config) -> None:
    """Under pytest-xdist (`make test-all` runs a worker per core) each worker, and every process its
    tests start, gets an equal share of the cores: a torch process per worker each running a thread
    per core would oversubscribe them, and OpenMP's waiting threads spin."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked cuda skip, saying why, where there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device here (`make gpu-check` runs these on a GPU)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# Helpers reach the tests as fixtures (pytest's factory-as-fixture pattern), never by importing
# this file as a module.

@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def benchmark(monkeypatch):
    """benchmark(name) -> benchmarks/<name>.py loaded as a module (the benchmarks are scripts, not a
    package; they import machine.py beside them)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def make_mnist():
    """write_mnist(directory, train=400, test=100) -> md5s: tiny synthetic IDX files."""
    return write_mnist


@pytest.fixture(scope="session")
def tiny():
    """tiny(**overrides) -> the tiny params as a raw dict (what a params.yaml would hold)."""
    return tiny_params


@pytest.fixture(scope="session")
def steps_per_epoch():
    """steps_per_epoch(**overrides) -> optimiser steps per epoch of the tiny params."""
    return tiny_steps_per_epoch


@pytest.fixture(scope="session")
def yaml_text():
    """yaml_text(dict) -> YAML as DVC writes it."""
    return dump_yaml


@pytest.fixture(scope="session")
def until():
    """until(condition, what, timeout_s=300, process=None, every_s=0.02): wait for condition with a deadline."""
    return wait_for


@pytest.fixture
def stage_dir(tmp_path) -> StageRun:
    """Tiny MNIST and tiny params (6 epochs) in tmp_path, and the stages' arguments on them."""
    write_mnist(tmp_path / "mnist")
    (tmp_path / PARAMS_FILE).write_text(dump_yaml(tiny_params(epochs=6)))
    return StageRun(tmp_path)


@pytest.fixture
def stage(capsys):
    """stage(name, arguments) -> Ended: the stage's main, run in this process."""
    return lambda name, arguments: call_stage(name, arguments, capsys)


@pytest.fixture(scope="session")
def stage_command():
    """stage_command(name, arguments) -> the command that runs the stage as a process."""
    return stage_process


@pytest.fixture(scope="session")
def tiny_parsed():
    """tiny_parsed(**overrides) -> the tiny params, validated."""
    return lambda **overrides: parse_params(tiny_params(**overrides))


@pytest.fixture(scope="session")
def run():
    """run(args, cwd, env=None, check=True) -> CompletedProcess; asserts success unless check=False."""
    return sh


@pytest.fixture(scope="session")
def make_repo():
    """make_repo(root, **param_overrides) -> (repo, env): a tiny git copy of this repository."""
    return make_tiny_repo


def kill_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and all its descendants at once, like a power cut (torchrun starts its
    workers in sessions of their own, so killing a process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, parent = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(pid)
    doomed, todo = [], [process.pid]
    while todo:
        pid = todo.pop()
        doomed.append(pid)
        todo += children.get(pid, [])
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.communicate()


@pytest.fixture(scope="session")
def kill_tree():
    """kill_tree(popen): SIGKILL the process and every descendant."""
    return kill_process_tree


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    write_mnist(tmp_path / "mnist")
    return tmp_path / "mnist"


@pytest.fixture
def tiny_repo(tmp_path: Path) -> tuple[Path, dict]:
    """A fresh tiny copy of this repository (see make_tiny_repo), nothing run yet."""
    return make_tiny_repo(tmp_path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny copy after `dvc repro`, committed, for the whole session: tests only read it, and
    work in a `clone` of it."""
    repo, env = make_tiny_repo(tmp_path_factory.mktemp("run"))
    sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny run"], repo, env)
    return repo, env


@pytest.fixture
def clone(tiny_run, tmp_path) -> tuple[Path, dict]:
    """A fresh `git clone` of the committed tiny run: what a new user gets."""
    repo, env = tiny_run
    sh(["git", "clone", "-q", str(repo), str(tmp_path / "clone")], tmp_path, env)
    return tmp_path / "clone", env


# --- Real MNIST, for the tests that reproduce committed outputs or follow the README -------------------

REQUIRE_MNIST = "BETAVAE_REQUIRE_MNIST"  # .ci/run sets it after fetching MNIST, so these tests never skip there


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """This checkout's data/mnist, each file checked against canonical MNIST's md5; the tests that
    reproduce what was computed on MNIST skip, saying why, where it is absent (`make repro` or
    `python -m stages.download --out data/mnist` fetches it), and fail instead under REQUIRE_MNIST."""
    from betavae.pipeline.fetch import FILES

    directory = REPO / "data" / "mnist"
    wrong = [name for name, md5 in FILES.items()
             if not (directory / name).is_file() or hashlib.md5((directory / name).read_bytes()).hexdigest() != md5]
    if wrong:
        reason = f"MNIST is not in {directory} ({', '.join(wrong)} missing or not canonical; `make repro` fetches it)"
        if os.environ.get(REQUIRE_MNIST):
            pytest.fail(f"{REQUIRE_MNIST} is set but {reason}")
        pytest.skip(reason)
    return directory


def committed_copy(destination: Path, mnist: Path) -> tuple[Path, dict]:
    """A git repository at destination holding what this checkout would commit (the committed run's
    outputs and dvc.lock included), with MNIST in data/mnist as `dvc pull` leaves it, and the
    environment to run DVC there without any network."""
    copy_repository(destination)
    shutil.copytree(mnist, destination / "data" / "mnist")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    env.pop("MNIST_DIR", None)
    sh(["git", "init", "-q", "-b", "main"], destination, env)
    sh(["git", "add", "-A"], destination, env)
    sh(["git", "commit", "-qm", "committed run"], destination, env)
    return destination, env


@pytest.fixture(scope="session")
def copy_repo():
    """copy_repo(destination): the files git would commit here (tracked, or untracked and not ignored)."""
    return copy_repository


@pytest.fixture(scope="session")
def make_committed_copy(real_mnist):
    """make_committed_copy(destination) -> (repo, env): this repository as committed, with real MNIST."""
    return lambda destination: committed_copy(destination, real_mnist)


# --- Several hosts on this machine: network namespaces joined by one switch (tests/test_hosts.py) ------

REQUIRE_HOSTS = "BETAVAE_REQUIRE_HOSTS"  # .ci/run sets it (CI is root), so the several-host tests never skip there
HOST_SUBNET = "10.231.0"  # host i is HOST_SUBNET.(i + 1)/24: a private test range that exists only in the namespaces


@dataclasses.dataclass
class Host:
    """One host: a network namespace with its own address and host name (resolvable on every host of
    its network, as on a cluster), and its own clone of the repository in root/repo."""

    name: str
    address: str
    namespace: str
    root: Path
    env: dict

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    def command(self, args: list) -> list[str]:
        """args run on this host: in its namespace, under its own host name."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.name, *map(str, args)]

    def start(self, args: list, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.command(args), cwd=cwd or self.repo, env=env or self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, args: list, env: dict | None = None, cwd: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        return sh(self.command(args), cwd or self.repo, env or self.env, check)

    def processes(self) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True)
        return [int(pid) for pid in listed.stdout.split()]

    def kill(self) -> None:
        """SIGKILL every process on this host at once, like a power cut."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cut(self) -> None:
        """Unplug this host's network cable."""
        subprocess.run(["ip", "-n", self.namespace, "link", "set", "eth0", "down"], check=True)

    def mend(self) -> None:
        subprocess.run(["ip", "-n", self.namespace, "link", "set", "eth0", "up"], check=True)


class Network:
    """Hosts made as network namespaces on one switch (a bridge in a namespace of its own), each with
    a clone of one repository whose git remote (a bare repository) and DVC remote (a directory) stand
    for the team's servers; everything is removed on leaving, whatever happened. Only the hosts' own
    addresses and loopback exist in there: nothing made here can reach another address."""

    STALE = re.compile(r"bv(\d+)-[0-9a-f]{4}-")  # a tag: this process's id, and a random part

    def __init__(self, root: Path):
        self.root, self.tag = root, f"bv{os.getpid()}-{os.urandom(2).hex()}"
        self.namespaces: list[str] = []

    def __enter__(self) -> Network:
        self._remove_stale()
        return self

    def _remove_stale(self) -> None:
        """What a test process that was killed (no teardown runs then) left: its namespaces, by their tag."""
        try:
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        except FileNotFoundError:
            return  # no iproute2: make() says so
        stale = [namespace for namespace in (line.split()[0] for line in listed.stdout.splitlines() if line.strip())
                 if (found := self.STALE.match(namespace)) and not Path(f"/proc/{found[1]}").exists()]
        self.namespaces += stale
        self.__exit__()
        self.namespaces = []

    def __exit__(self, *_) -> None:
        for namespace in reversed(self.namespaces):
            listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)

    def _ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")

    def _namespace(self, name: str) -> str:
        namespace = f"{self.tag}-{name}"
        self._ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        self._ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def make(self, count: int, names: tuple[str, ...] = ("a", "b", "c", "d"), **param_overrides) -> list[Host]:
        """count hosts (host-a, host-b, ...) on one switch, each with a clone of a tiny copy of this
        repository (param_overrides committed in it); skips, saying why, where namespaces cannot be
        made, and fails instead under REQUIRE_HOSTS."""
        try:
            switch = self._namespace("switch")
            self._ip("-n", switch, "link", "add", "br0", "type", "bridge")
            self._ip("-n", switch, "link", "set", "br0", "up")
        except (OSError, FileNotFoundError) as error:
            reason = f"cannot make network namespaces here ({error}); CI runs as root with iproute2 (.ci/run)"
            if os.environ.get(REQUIRE_HOSTS):
                pytest.fail(f"{REQUIRE_HOSTS} is set but {reason}")
            pytest.skip(reason)
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{HOST_SUBNET}.{i + 1} host-{names[i]}\n" for i in range(count))
        origin, env = self._origin(**param_overrides)
        hosts = []
        for i in range(count):
            name, address = f"host-{names[i]}", f"{HOST_SUBNET}.{i + 1}"
            namespace = self._namespace(name)
            self._ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", f"port-{names[i]}",
                     "netns", switch)
            self._ip("-n", switch, "link", "set", f"port-{names[i]}", "master", "br0", "up")
            self._ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            self._ip("-n", namespace, "link", "set", "eth0", "up")
            etc = Path("/etc/netns") / namespace  # what `ip netns exec` mounts over /etc: names from the file only
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            (etc / "nsswitch.conf").write_text("hosts: files\nnetworks: files\n")
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            root = self.root / name
            root.mkdir(parents=True)
            sh(["git", "clone", "-q", str(origin), str(root / "repo")], root, env)
            hosts.append(Host(name, address, namespace, root, {**env, "OMP_NUM_THREADS": "1"}))
        return hosts

    def _origin(self, **param_overrides) -> tuple[Path, dict]:
        """The team's servers: a bare git repository holding the tiny copy, and a DVC remote directory."""
        repo, env = make_tiny_repo(self.root / "origin", **param_overrides)
        sh(["dvc", "remote", "add", "-d", "storage", str(self.root / "dvc-remote")], repo, env)
        sh(["git", "commit", "-qam", "the team's DVC remote"], repo, env)
        sh(["git", "clone", "-q", "--bare", str(repo), str(self.root / "remote.git")], self.root, env)
        return self.root / "remote.git", env


@pytest.fixture(scope="session")
def network():
    """network(root) -> a context manager: its .make(count, **params) makes hosts, torn down on leaving."""
    return Network


@pytest.fixture
def hosts(tmp_path):
    """hosts(count, **param_overrides) -> [Host, ...]: hosts of their own network, each with its clone of a
    tiny copy of this repository; removed at the end of the test, whatever happened."""
    with Network(tmp_path / "network") as made:
        yield made.make


@dataclasses.dataclass
class Database:
    """A PostgreSQL server of a test's own (own data directory and port) on one of its hosts."""

    host: Host
    directory: Path
    bin: Path
    password: str
    port: int = 5432
    name: str = "search"
    user: str = "betavae"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host.name}:{self.port}/{self.name}"

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses={self.host.address}"
        sh(["ip", "netns", "exec", self.host.namespace, "runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"),
            "-D", str(self.directory / "data"), "-l", str(self.directory / "server.log"), "-o", options, "-w",
            *args], self.directory)

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parts[-3]))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


@pytest.fixture
def postgres():
    """postgres(host) -> Database: a PostgreSQL server of its own on host, with a database and a user
    whose password is a fresh secret; stopped and removed at the end of the test. Skips, saying why,
    where PostgreSQL is not installed (fails instead under REQUIRE_HOSTS: .ci/run installs it)."""
    import pwd
    import tempfile

    made: list[Database] = []

    def make(host: Host) -> Database:
        bin_dir = _postgres_bin()
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = None
        if bin_dir is None or owner is None:
            reason = "PostgreSQL is not installed here (the Debian package `postgresql`; .ci/run installs it)"
            if os.environ.get(REQUIRE_HOSTS):
                pytest.fail(f"{REQUIRE_HOSTS} is set but {reason}")
            pytest.skip(reason)
        directory = Path(tempfile.mkdtemp(prefix="betavae-postgres-"))  # outside the test's root-only tmp_path
        database = Database(host, directory, bin_dir, password=f"pw-{os.urandom(8).hex()}")
        made.append(database)
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        secret = directory / "password"
        secret.write_text(database.password)
        os.chown(secret, owner.pw_uid, owner.pw_gid)
        sh(["runuser", "-u", "postgres", "--", str(bin_dir / "initdb"), "-D", str(directory / "data"), "-U",
            database.user, f"--pwfile={secret}", "-A", "scram-sha-256"], directory)
        secret.unlink()
        with (directory / "data" / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {HOST_SUBNET}.0/24 scram-sha-256\n")
        database.start()
        sh(["ip", "netns", "exec", host.namespace, str(bin_dir / "createdb"), "-h", host.address, "-p",
            str(database.port), "-U", database.user, database.name], directory,
           {**os.environ, "PGPASSWORD": database.password})
        return database

    yield make
    for database in made:
        subprocess.run(["runuser", "-u", "postgres", "--", str(database.bin / "pg_ctl"), "-D",
                        str(database.directory / "data"), "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(database.directory, ignore_errors=True)
