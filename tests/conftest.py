"""Shared fixtures: tiny synthetic MNIST files, tiny params, and throwaway git + DVC copies of this
repository on them. Every test builds what it needs from these, so each one runs alone."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from betavae import idx
from betavae.download import TEST_CHECKSUMS_ENV
from betavae.params import parse_params

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
    params = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


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


# Helpers reach the tests as fixtures (pytest's factory-as-fixture pattern), never by importing
# this file as a module.

@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def make_mnist():
    """write_mnist(directory, train=400, test=100) -> md5s: tiny synthetic IDX files."""
    return write_mnist


@pytest.fixture(scope="session")
def tiny():
    """tiny(**overrides) -> the tiny params as a raw dict (what a params.yaml would hold)."""
    return tiny_params


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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny copy after `dvc repro`, committed: shared by the tests of one module, which must
    leave it as they found it."""
    repo, env = make_tiny_repo(tmp_path_factory.mktemp("run"))
    sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny run"], repo, env)
    return repo, env
