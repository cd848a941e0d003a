"""`make setup` (scripts/setup_env.py): the interpreter is checked against pyproject.toml's
requires-python before anything is made, and refused in one line naming the versions that work; each
phase says its time and size; pip's output is shown only when a phase fails; a rerun with the same
requirements does nothing. The phases run here against a stand-in for the environment's interpreter
(a shell script that answers the version probe and records each `pip install`), not a 6 GB install."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts import setup_env

RANGE = ">=3.11,!=3.14.1,<3.15"  # a range of the shape pyproject.toml states, for the rules below
FAKE_PINS = "# a comment\ntorch==9.1.0\ntorchvision==0.99.0\nnumpy==2.0.0  # trailing\ndvc==3.0.0\n"
FAKE_DEV_PINS = "pytest==9.0.0\nruff==0.1.0\n"
PHASE_LINE = re.compile(r"setup: (\d)/5 (.+) \.\.\. (\d+(?:\.\d)? s|\d+ min \d\d s), ([+-]\d+(?:\.\d)? [MG]B)")


def _fake_interpreter(venv: Path, version: str = "3 12 1", fail_on_call: int = 0) -> Path:
    """venv/bin/python as a shell script: `-c ...` prints version (the version probe); `-m pip install
    ARGS` records ARGS in venv/pip-calls.txt and writes call-number MB into venv/lib, or, on call
    fail_on_call, prints 30 numbered lines and exits 1."""
    (venv / "bin").mkdir(parents=True)
    (venv / "lib").mkdir()
    python = venv / "bin" / "python"
    python.write_text(f"""#!/bin/sh
if [ "$1" = "-c" ]; then echo "{version}"; exit 0; fi
here=$(dirname "$0")/..
shift 3
echo "$*" >> "$here/pip-calls.txt"
call=$(wc -l < "$here/pip-calls.txt")
if [ "$call" -eq {fail_on_call} ]; then
  for line in $(seq 1 30); do echo "pip line $line"; done
  exit 1
fi
head -c $((call * 1000000)) /dev/zero > "$here/lib/installed-$call"
echo "Successfully installed what call $call asked for"
""")
    python.chmod(0o755)
    return python


@pytest.fixture
def project(tmp_path, repo_root) -> Path:
    """A project with the setup script, this repository's pyproject.toml and small requirement files."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(repo_root / "scripts" / "setup_env.py", root / "scripts" / "setup_env.py")
    shutil.copy(repo_root / "pyproject.toml", root / "pyproject.toml")
    (root / "requirements.txt").write_text(FAKE_PINS)
    (root / "requirements-dev.txt").write_text(FAKE_DEV_PINS)
    return root


def _setup(project: Path, *arguments: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(project / "scripts" / "setup_env.py"), *arguments], cwd=project,
                          capture_output=True, text=True, timeout=120)


def _pip_calls(venv: Path) -> list[str]:
    calls = venv / "pip-calls.txt"
    return calls.read_text().splitlines() if calls.exists() else []


# --- which Pythons -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "allowed"), [
    ((3, 11, 0), True), ((3, 11, 7), True), ((3, 12, 1), True), ((3, 13, 0), True), ((3, 14, 0), True),
    ((3, 14, 2), True), ((3, 14, 1), False), ((3, 15, 0), False), ((3, 10, 13), False), ((2, 7, 18), False),
    ((4, 0, 0), False)])
def test_the_check_applies_requires_python_as_pip_does(version, allowed):
    assert setup_env.allows(setup_env.specifiers(RANGE), version) is allowed


def test_the_range_is_said_in_words():
    assert setup_env.describe(setup_env.specifiers(RANGE)) == "3.11 to 3.14, except 3.14.1"
    assert setup_env.describe(setup_env.specifiers(">=3.11")) == "3.11 or newer"
    assert setup_env.describe(setup_env.specifiers(">=3.11,<=3.13")) == "3.11 to 3.13"


@pytest.mark.parametrize("text", ["~=3.11", ">=3.11,<3.15.*", ">=three", ""])
def test_a_requires_python_setup_cannot_read_is_refused_by_name(text):
    with pytest.raises(setup_env.SetupError, match="setup cannot read"):
        setup_env.specifiers(text)


def test_requires_python_reads_the_same_with_and_without_tomllib(repo_root, monkeypatch):
    """Python 3.10 and older have no tomllib: the one line is read instead, with the same result."""
    text = (repo_root / "pyproject.toml").read_text()
    with_tomllib = setup_env.requires_python(text)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails as on Python 3.10
    assert setup_env.requires_python(text) == with_tomllib
    setup_env.specifiers(with_tomllib)  # and setup can read it


def test_the_readme_states_the_pythons_of_requires_python(repo_root):
    """The README's statement of the supported Pythons is the one pyproject.toml's requires-python gives."""
    words = setup_env.describe(setup_env.specifiers(
        setup_env.requires_python((repo_root / "pyproject.toml").read_text())))
    assert f"It needs Python {words}" in " ".join((repo_root / "README.md").read_text().split())


def test_an_unsupported_interpreter_is_refused_in_one_line_before_anything_is_made(tmp_path):
    venv = tmp_path / "venv"
    with pytest.raises(setup_env.SetupError) as refused:
        setup_env.check_interpreter(setup_env.specifiers(RANGE), venv, "venv",
                                    this=(Path("/usr/bin/python3.10"), (3, 10, 13)))
    message = str(refused.value)
    assert message.startswith("Python 3.10.13 (/usr/bin/python3.10) cannot install the pinned requirements; "
                              "use Python 3.11 to 3.14, except 3.14.1")
    assert "make setup PYTHON=python3." in message and "\n" not in message
    assert not venv.exists()


def test_a_supported_interpreter_is_accepted(tmp_path):
    python, version = setup_env.check_interpreter(setup_env.specifiers(RANGE), tmp_path / "venv", "venv",
                                                  this=(Path("/usr/bin/python3.13"), (3, 13, 0)))
    assert (python, version) == (Path("/usr/bin/python3.13"), (3, 13, 0))


def test_an_environment_made_by_an_unsupported_python_is_refused_in_one_line(project, tmp_path):
    venv = tmp_path / "venv"
    _fake_interpreter(venv, version="3 10 13")
    result = _setup(project, "--venv", str(venv))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"setup: error: Python 3.10.13 of {venv} cannot install the pinned "
                                    f"requirements; remove {venv} (rm -r {venv}) and make it again with Python ")
    assert _pip_calls(venv) == [] and not (venv / "setup.log").exists()


def _older_interpreters() -> list[str]:
    """Interpreters of Python 3.6 to 3.10 on this machine: python3.N on PATH, or installed by pyenv."""
    found = {}
    candidates = [f"python3.{minor}" for minor in range(6, 11)]
    candidates += sorted(str(path) for path in (Path.home() / ".pyenv" / "versions").glob("3.*/bin/python3"))
    for candidate in candidates:
        version = setup_env.probe(candidate) if shutil.which(candidate) else None
        if version is not None and (3, 6) <= version[:2] <= (3, 10):
            found.setdefault(version, candidate)
    return list(found.values())


def test_a_real_older_python_runs_the_script_to_its_one_line_refusal(project, tmp_path):
    """The script keeps to what Python 3.6 parses, so that `make setup PYTHON=python3.6` is refused in
    words, not with a SyntaxError; each older interpreter found here runs it."""
    source = (project / "scripts" / "setup_env.py").read_text()
    ast.parse(source, feature_version=(3, 6))
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names), "setup runs before any dependency is installed"
    older = _older_interpreters()
    if not older:
        pytest.skip("no python3.6 to python3.10 on PATH to run the script with")
    for python in older:
        venv = tmp_path / f"venv-{python}"
        result = _setup(project, "--venv", str(venv), python=python)
        assert result.returncode == 1, (python, result.stderr)
        assert result.stderr.count("\n") == 1 and "cannot install the pinned requirements; use Python" in \
            result.stderr, (python, result.stderr)
        assert not venv.exists()


@pytest.mark.parametrize(("arguments", "error"), [
    (["--venv-dir", "x"], "unrecognized argument '--venv-dir'"), (["--venv"], "--venv needs a directory"),
    (["--venv="], "--venv needs a directory")])
def test_a_bad_argument_is_one_line(project, arguments, error):
    result = _setup(project, *arguments)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"setup: error: {error} (see `python3 scripts/setup_env.py --help`)\n"
    assert not (project / ".venv").exists()


# --- the phases ----------------------------------------------------------------------------------------

def test_each_phase_says_its_time_and_size_and_installs_the_pins(project, tmp_path):
    venv = tmp_path / "venv"
    _fake_interpreter(venv)
    result = _setup(project, "--venv", str(venv))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("setup: Python 3.12.1 (") and "Python 3.11 to 3.14, except 3.14.1" in lines[0]
    assert lines[1] == f"setup: 1/5 the virtual environment {venv}: kept (to start afresh: rm -r {venv})"
    phases = [PHASE_LINE.fullmatch(line) for line in lines[2:6]]
    assert all(phases), lines
    assert [phase[4] for phase in phases] == ["+1 MB", "+2 MB", "+3 MB", "+4 MB"]  # what each call wrote
    assert phases[0][2].startswith("torch 9.1.0 and torchvision 0.99.0: the big one")
    assert phases[1][2] == "the rest of requirements.txt (2 pinned packages)"
    assert phases[2][2] == "the dev tools of requirements-dev.txt (2 pinned packages)"
    assert phases[3][2] == "betavae itself, editable, with the `betavae` command and its dev extra"
    assert re.fullmatch(rf"setup: done in .+ s; {re.escape(str(venv))} holds 10 MB; activate it with: "
                        rf"source {re.escape(str(venv))}/bin/activate", lines[6])
    assert len(lines) == 7
    constraints = f"-c {project}/requirements.txt -c {project}/requirements-dev.txt"
    options = "--disable-pip-version-check --no-input --progress-bar off "
    assert [call.removeprefix(options) for call in _pip_calls(venv)] == [
        f"torch==9.1.0 torchvision==0.99.0 {constraints}",
        f"-r {project}/requirements.txt {constraints}",
        f"-r {project}/requirements-dev.txt {constraints}",
        "-e .[dev]"]
    assert "Successfully installed what call 4 asked for" in (venv / "setup.log").read_text()


def test_a_rerun_with_the_same_contents_does_nothing_and_a_change_reruns(project, tmp_path):
    venv = tmp_path / "venv"
    _fake_interpreter(venv)
    assert _setup(project, "--venv", str(venv)).returncode == 0
    requirements = project / "requirements-dev.txt"
    requirements.write_text(requirements.read_text())  # a fresh clone's new file times, the same contents
    again = _setup(project, "--venv", str(venv))
    assert again.returncode == 0
    assert again.stdout == (f"setup: {venv} (Python 3.12.1) is up to date with requirements.txt, "
                            "requirements-dev.txt, pyproject.toml\n")
    assert len(_pip_calls(venv)) == 4
    requirements.write_text(FAKE_DEV_PINS + "hypothesis==6.0.0\n")
    changed = _setup(project, "--venv", str(venv))
    assert changed.returncode == 0 and "the dev tools of requirements-dev.txt (3 pinned packages)" in changed.stdout
    assert len(_pip_calls(venv)) == 8


def test_a_failing_phase_shows_pips_last_lines_and_names_the_phase(project, tmp_path):
    venv = tmp_path / "venv"
    _fake_interpreter(venv, fail_on_call=2)
    result = _setup(project, "--venv", str(venv))
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("setup: 3/5 the rest of requirements.txt (2 pinned packages) "
                                                     "... failed after ")
    errors = result.stderr.splitlines()
    assert errors[:-1] == [f"    pip line {line}" for line in range(16, 31)]
    assert errors[-1] == ("setup: error: phase 3/5 (the rest of requirements.txt (2 pinned packages)) failed: pip "
                          f"exited with status 1 (its last lines above; all of it in {venv}/setup.log)")
    assert not (venv / "installed").exists()  # so the next make setup runs the phases again
    assert "up to date" not in _setup(project, "--venv", str(venv)).stdout


def test_requirements_without_the_big_pins_are_refused_by_name(project, tmp_path):
    venv = tmp_path / "venv"
    _fake_interpreter(venv)
    (project / "requirements.txt").write_text("numpy==2.0.0\n")
    result = _setup(project, "--venv", str(venv))
    assert result.returncode == 1
    assert result.stderr.endswith("setup: error: requirements.txt pins no torch or torchvision (name==version)\n")
    assert _pip_calls(venv) == []


# --- the size the big phase announces ------------------------------------------------------------------

def _closure(names: list[str]) -> set[str]:
    """The installed distributions names require, with their extras' requirements, names normalized."""
    installed = {re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(): dist for dist in metadata.distributions()}
    seen: set[tuple[str, str]] = set()
    waiting = [(name, "") for name in names]
    while waiting:
        name, extra = waiting.pop()
        name = re.sub(r"[-_.]+", "-", name).lower()
        if (name, extra) in seen or name not in installed:
            continue
        seen.add((name, extra))
        for text in installed[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                waiting += [(requirement.name, ""), *((requirement.name, wanted) for wanted in requirement.extras)]
    return {name for name, _ in seen}


def test_the_big_phases_announced_size_is_what_the_pinned_torch_installs(repo_root):
    """BIG_GB, said before the longest phase starts, against torch, torchvision and what they require
    as installed beside these tests by make setup (PyPI's Linux build, with NVIDIA's libraries)."""
    pinned = setup_env.pins((repo_root / "requirements.txt").read_text())
    names = list(setup_env.BIG)
    try:
        installed = {name: metadata.version(name) for name in names}
    except metadata.PackageNotFoundError:
        pytest.skip("torch or torchvision is not installed here")
    if any(installed[name].split("+")[0] != pinned[name] for name in names) or "+" in installed["torch"]:
        pytest.skip(f"not the pinned PyPI build here ({installed}), so not what make setup installs")
    size = 0
    for name in _closure(names):
        dist = metadata.distribution(name)
        for file in dist.files or []:
            path = dist.locate_file(file)
            size += path.stat().st_size if path.is_file() else 0
    assert size / 1e9 == pytest.approx(setup_env.BIG_GB, rel=0.15), f"{size / 1e9:.2f} GB installed"
