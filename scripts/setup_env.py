"""Build the virtual environment (`make setup`): the interpreter checked, then each phase on one line
with its time and the size it added, pip's own output kept in a log unless a phase fails.

    python3 scripts/setup_env.py [--venv DIR]

    --venv DIR   the virtual environment to build or update (default .venv, the Makefile's VENV)
    -h, --help   this text

The interpreter that runs this script makes the environment. It must be one that requires-python in
pyproject.toml allows (the versions for which every pin of requirements.txt and requirements-dev.txt
has a wheel); any other is refused in one line, before anything is created, naming the versions that
work. Where DIR already holds an environment, its own interpreter is checked instead and used; to
change interpreters, remove DIR first.

The phases, each after the first a `python -m pip install` by DIR's interpreter (2 to 4 with both
requirement files as constraints, so that each installs only the pinned versions):

    1. the virtual environment (`python -m venv DIR`; kept where it exists)
    2. torch and torchvision: the big one (on Linux, PyPI's build with NVIDIA's CUDA libraries)
    3. the rest of requirements.txt
    4. the dev tools, requirements-dev.txt
    5. the project itself, editable, with its dev extra: the same `pip install -e '.[dev]'` that
       alone would build the same environment, here with nothing left to install but the project

pip's output goes to DIR/setup.log; when a phase fails, its last lines are shown and the error names
the phase. DIR/installed records a hash of the contents of requirements.txt, requirements-dev.txt and
pyproject.toml once every phase has succeeded: while they are unchanged a rerun only says so, even
after a checkout that rewrote them (new file times, same contents); after a failure or Ctrl-C the
next run goes through the phases again (pip skips what is already installed).

This script runs before any dependency is installed and under whichever Python `python3` is, so it
uses only the standard library, parses its own small command line rather than the project's parser
(betavae/errors.py needs a supported Python), and keeps to what Python 3.6 runs: an interpreter too old
for the project still gets the one-line refusal.
"""

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

NAME = "setup"
PROJECT = Path(__file__).resolve().parent.parent
PYPROJECT = "pyproject.toml"
REQUIREMENTS = "requirements.txt"
DEV_REQUIREMENTS = "requirements-dev.txt"
DEFINITION = (REQUIREMENTS, DEV_REQUIREMENTS, PYPROJECT)  # what the environment is built from
STAMP = "installed"  # in the environment: the hash of DEFINITION's contents, written when every phase succeeded
LOG = "setup.log"  # in the environment: pip's output, every phase
DEFAULT_VENV = ".venv"
BIG = ("torch", "torchvision")  # installed first, alone: most of the size and the time
# The size BIG and what they require take once installed: PyPI's Linux wheels of the pinned versions,
# a CUDA build with NVIDIA's libraries (tests/test_setup.py holds it against an installed environment).
BIG_GB = 5.8
TAIL_LINES = 15  # of pip's output, shown when a phase fails
OPERATORS = (">=", "<=", "!=", "==", ">", "<")  # of requires-python, as setup reads it


class SetupError(Exception):
    """A failure the user can act on; str(error) is the one line printed after `setup: error: `."""


# --- which Pythons: requires-python, read and applied ------------------------------------------------

def requires_python(pyproject_text):
    """The requires-python of pyproject.toml's [project] table: by tomllib where this Python has it
    (3.11 on), else by its one line, so that an older interpreter can be refused in words."""
    try:
        import tomllib
    except ModuleNotFoundError:
        found = re.search(r"^requires-python\s*=\s*[\"']([^\"']*)[\"']", pyproject_text, re.MULTILINE)
        if not found:
            raise SetupError(f"{PYPROJECT} has no requires-python line") from None
        return found.group(1)
    try:
        return tomllib.loads(pyproject_text)["project"]["requires-python"]
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as error:
        raise SetupError(f"{PYPROJECT} has no readable [project] requires-python ({error})") from None


def specifiers(text):
    """requires-python as a list of (operator, release tuple): ">=3.11,<3.15" -> [(">=", (3, 11)), ("<", (3, 15))].
    Only plain releases and the operators of OPERATORS: what a range of Pythons needs."""
    clauses = []
    for clause in text.split(","):
        found = re.fullmatch(r"\s*(" + "|".join(map(re.escape, OPERATORS)) + r")\s*(\d+(?:\.\d+)*)\s*", clause)
        if not found:
            raise SetupError(f"{PYPROJECT}'s requires-python {text!r}: setup cannot read {clause.strip()!r} "
                             f"(it reads {', '.join(OPERATORS)} with plain versions such as 3.11)")
        clauses.append((found.group(1), tuple(int(part) for part in found.group(2).split("."))))
    return clauses


def _padded(version, length):
    return tuple(version) + (0,) * (length - len(version))


def allows(clauses, version):
    """Whether a Python of version (major, minor, micro) satisfies every clause, as pip compares them:
    releases padded with zeros, so that 3.14.0 == 3.14 and 3.15.0 is not < 3.15."""
    tests = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "!=": lambda a, b: a != b,
             "==": lambda a, b: a == b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
    for operator, release in clauses:
        length = max(len(release), len(version))
        if not tests[operator](_padded(version, length), _padded(release, length)):
            return False
    return True


def _dotted(release):
    return ".".join(map(str, release))


def describe(clauses):
    """The versions clauses allow, in words: [(">=", (3, 11)), ("!=", (3, 14, 1)), ("<", (3, 15))] ->
    "3.11 to 3.14, except 3.14.1" (the README and the refusal say it so)."""
    low = high = None
    others, excluded = [], []
    for operator, release in clauses:
        if operator == ">=":
            low = _dotted(release)
        elif operator == "<" and len(release) == 2 and release[1] > 0:
            high = f"{release[0]}.{release[1] - 1}"
        elif operator == "<=" and len(release) == 2:
            high = _dotted(release)
        elif operator == "!=":
            excluded.append(_dotted(release))
        else:
            others.append(f"{operator}{_dotted(release)}")
    if low and high:
        words = f"{low} to {high}"
    elif low:
        words = f"{low} or newer"
    elif high:
        words = f"{high} or older"
    else:
        words = "any version"
    if others:
        words += f" ({', '.join(others)})"
    if excluded:
        words += f", except {' and '.join(excluded)}"
    return words


def probe(python):
    """(major, minor, micro) of the interpreter at path or name python, or None where it does not run."""
    try:
        result = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:3])"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
        version = tuple(int(part) for part in result.stdout.decode().split())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return version if result.returncode == 0 and len(version) == 3 else None


def example_interpreter(clauses):
    """The name of an allowed Python found on PATH (python3.11, python3.12, ..., the oldest first), or None."""
    for minor in range(40):
        if not any(allows(clauses, (3, minor, micro)) for micro in range(40)):
            continue
        name = f"python3.{minor}"
        if shutil.which(name):
            version = probe(name)
            if version is not None and allows(clauses, version):
                return name
    return None


def refusal(what, clauses, example, remedy="use"):
    """The one line that refuses an interpreter, what being `Python 3.10.13 (/usr/bin/python3)` or the like:
    the versions that work, and an allowed interpreter found on PATH to run make setup with."""
    use = f"{remedy} Python {describe(clauses)}"
    if example:
        use += f", e.g. make setup PYTHON={example}"
    else:
        use += " (none is on PATH: install one, then make setup PYTHON=python3.N)"
    return f"{what} cannot install the pinned requirements; {use}"


# --- what the environment is built from ---------------------------------------------------------------

def fingerprint(project):
    """sha256 of the names and contents of DEFINITION: the environment is rebuilt when this changes."""
    digest = hashlib.sha256()
    for name in DEFINITION:
        content = (project / name).read_bytes()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def pins(requirements_text):
    """{name: version} of the `name==version` lines of a requirements file, names lowercased."""
    found = {}
    for line in requirements_text.splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def editable_title(pyproject_text):
    """The last phase's title: the project by its name, and its commands ([project.scripts])."""
    try:
        import tomllib
    except ModuleNotFoundError:  # an older interpreter running this for an environment that has a newer one
        return "the project itself, editable, with its commands and its dev extra"
    project = tomllib.loads(pyproject_text).get("project", {})
    commands = " and ".join(f"`{command}`" for command in project.get("scripts", {}))
    command_words = f"the {commands} command{'s' if ' and ' in commands else ''}" if commands else "no command"
    return f"{project.get('name', 'the project')} itself, editable, with {command_words} and its dev extra"


def phases(project):
    """(title, pip install arguments) of phases 2 on, each run by the environment's interpreter."""
    runtime = pins((project / REQUIREMENTS).read_text())
    dev = pins((project / DEV_REQUIREMENTS).read_text())
    missing = [name for name in BIG if name not in runtime]
    if missing:
        raise SetupError(f"{REQUIREMENTS} pins no {' or '.join(missing)} (name==version)")
    constraints = ["-c", str(project / REQUIREMENTS), "-c", str(project / DEV_REQUIREMENTS)]
    big = " and ".join(f"{name} {runtime[name]}" for name in BIG)
    return [
        (f"{big}: the big one, on Linux a CUDA build with NVIDIA's libraries (about {BIG_GB:g} GB; minutes)",
         [*(f"{name}=={runtime[name]}" for name in BIG), *constraints]),
        (f"the rest of {REQUIREMENTS} ({len(runtime) - len(BIG)} pinned packages)",
         ["-r", str(project / REQUIREMENTS), *constraints]),
        (f"the dev tools of {DEV_REQUIREMENTS} ({len(dev)} pinned packages)",
         ["-r", str(project / DEV_REQUIREMENTS), *constraints]),
        (editable_title((project / PYPROJECT).read_text()), ["-e", ".[dev]"]),
    ]


# --- running the phases -------------------------------------------------------------------------------

def size_of(directory):
    """Bytes in the files under directory (links not followed)."""
    total = 0
    for root, _, files in os.walk(str(directory)):
        for name in files:
            with contextlib.suppress(OSError):  # removed while counted
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def amount(size, change=True):
    """Bytes in words, decimal units: "+5.8 GB", "+412 MB", "+0 MB" (a change) or "6.3 GB" (change=False)."""
    sign = ("-" if size < 0 else "+") if change else ""
    size = abs(size)
    return sign + (f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB")


def duration(seconds):
    """'0.4 s', '48 s', '2 min 05 s'."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if round(seconds) < 60:
        return f"{round(seconds)} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def say(text, end="\n"):
    """A progress line on stdout, at once: `setup: <text>`."""
    print(f"{NAME}: {text}", end=end, flush=True)


def run_phase(number, count, title, command, venv, shown, cwd):
    """Run one phase (a pip command) in cwd with its output appended to venv/LOG; say its time and the size
    venv grew by, or show pip's last lines and raise a SetupError naming the phase (shown: venv's name)."""
    say(f"{number}/{count} {title} ...", end="")
    before, start = size_of(venv), time.monotonic()
    log_path = venv / LOG
    offset = log_path.stat().st_size if log_path.exists() else 0
    try:
        with open(str(log_path), "ab") as log:
            log.write(f"\n=== {number}/{count} {title}\n$ {' '.join(command)}\n".encode())
            log.flush()
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(cwd)).returncode
    except OSError as error:
        print(flush=True)
        raise SetupError(f"phase {number}/{count} ({title}) could not run: {error}") from None
    elapsed = time.monotonic() - start
    if status != 0:
        print(f" failed after {duration(elapsed)}", flush=True)
        with open(str(log_path), "rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        for line in lines[-TAIL_LINES:]:
            print(f"    {line}", file=sys.stderr, flush=True)
        raise SetupError(f"phase {number}/{count} ({title}) failed: pip exited with status {status} (its last "
                         f"lines above; all of it in {shown}/{LOG})")
    print(f" {duration(elapsed)}, {amount(size_of(venv) - before)}", flush=True)


def check_interpreter(clauses, venv, shown, this=None):
    """The interpreter that builds the environment, as (path, version), once requires-python allows it:
    the environment's own where it exists, else this one (this: (path, version), the interpreter running
    this script unless given); a SetupError refusing it otherwise."""
    if not venv.exists():
        executable, version = this or (Path(sys.executable), tuple(sys.version_info[:3]))
        if not allows(clauses, version):
            raise SetupError(refusal(f"Python {_dotted(version)} ({executable})", clauses,
                                     example_interpreter(clauses)))
        return Path(executable), version
    python = venv / "bin" / "python"
    version = probe(python)
    if version is None:
        raise SetupError(f"{shown} exists but {shown}/bin/python does not run; remove it (rm -r {shown}) and run "
                         "make setup again")
    if not allows(clauses, version):
        raise SetupError(refusal(f"Python {_dotted(version)} of {shown}", clauses, example_interpreter(clauses),
                                 remedy=f"remove {shown} (rm -r {shown}) and make it again with"))
    return python, version


def make_venv(venv, shown, count):
    """Phase 1: `python -m venv` by this interpreter, unless the environment exists."""
    if venv.exists():
        say(f"1/{count} the virtual environment {shown}: kept (to start afresh: rm -r {shown})")
        return
    say(f"1/{count} the virtual environment {shown} ...", end="")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        print(" failed", flush=True)
        for line in result.stdout.decode(errors="replace").splitlines()[-TAIL_LINES:]:
            print(f"    {line}", file=sys.stderr, flush=True)
        raise SetupError(f"phase 1/{count} (the virtual environment) failed: {sys.executable} -m venv exited with "
                         f"status {result.returncode}")
    print(f" {duration(time.monotonic() - start)}, {amount(size_of(venv))}", flush=True)


def setup(project, venv, shown):
    """Check the interpreter, then build or update venv (shown: its name as the user gave it) phase by
    phase, or say that it is up to date."""
    clauses = specifiers(requires_python((project / PYPROJECT).read_text()))
    python, version = check_interpreter(clauses, venv, shown)
    wanted = fingerprint(project)
    stamp = venv / STAMP
    if stamp.exists() and stamp.read_text().strip() == wanted:
        say(f"{shown} (Python {_dotted(version)}) is up to date with {', '.join(DEFINITION)}")
        return
    say(f"Python {_dotted(version)} ({python}) can install the pinned requirements: Python {describe(clauses)}, "
        f"as {PYPROJECT}'s requires-python says")
    steps = phases(project)
    count = len(steps) + 1
    start = time.monotonic()
    if stamp.exists():
        stamp.unlink()  # until every phase has succeeded again
    make_venv(venv, shown, count)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--progress-bar", "off"]
    for number, (title, arguments) in enumerate(steps, start=2):
        run_phase(number, count, title, pip + arguments, venv, shown, project)
    temporary = venv / (STAMP + ".tmp")
    temporary.write_text(wanted + "\n")
    os.replace(str(temporary), str(stamp))
    say(f"done in {duration(time.monotonic() - start)}; {shown} holds {amount(size_of(venv), change=False)}; "
        f"activate it with: source {shown}/bin/activate")


def arguments(argv):
    """The environment's directory from argv (--venv DIR or --venv=DIR; default DEFAULT_VENV in the
    project), as (path, name to show), or SetupError for anything else."""
    venv = None
    rest = list(argv)
    while rest:
        argument = rest.pop(0)
        if argument in ("-h", "--help"):
            print(__doc__.strip())
            raise SystemExit(0)
        if argument == "--venv":
            venv = rest.pop(0) if rest else ""
        elif argument.startswith("--venv="):
            venv = argument.split("=", 1)[1]
        else:
            raise SetupError(f"unrecognized argument {argument!r} (see `python3 scripts/setup_env.py --help`)")
        if not venv:
            raise SetupError("--venv needs a directory (see `python3 scripts/setup_env.py --help`)")
    if venv is None:
        return PROJECT / DEFAULT_VENV, DEFAULT_VENV
    return Path(venv).absolute(), venv


def main(argv=None):
    try:
        venv, shown = arguments(sys.argv[1:] if argv is None else argv)
        setup(PROJECT, venv, shown)
    except (SetupError, OSError) as error:  # OSError: an unreadable requirement file, an unwritable environment
        print(f"{NAME}: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"\n{NAME}: error: stopped by Ctrl-C; run make setup again to finish", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
