"""The outside tools the experiment commands drive (git, DVC, a database), checked before any work
starts and quoted, when they fail, by the line that says what failed.

Every command that runs experiments (scripts/search.py, scripts/sweep.py, scripts/compare.py,
scripts/record_experiment.py) calls the `require_*` checks it needs first, so a missing tool, a
directory that is not a DVC repository or a remote that does not answer is one line before a
minute of work, not after an hour. A tool's failure is reported by `error_line`: its own line that
names the failure (DVC's `ERROR: ...`, git's `fatal: ...`, a stage's `<stage>: error: ...`), not
the advice that follows it, with every secret hidden (betavae/errors.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from betavae.errors import BetaVAEError, one_line

# The first of these found in a tool's output is the line that says what failed, most specific first.
_CAUSE_LINES = (re.compile(r"^\w+: error: "), re.compile(r"^ERROR: "), re.compile(r"^fatal: "),
                re.compile(r"^error: ", re.IGNORECASE))
# Lines that only ever follow a failure: advice and links, never its cause.
_ADVICE = ("Having any troubles?", "Hit us up at", "dvc.org/support", "dvc.org/doc",
           "Please make sure you have the correct access rights", "and the repository exists.",
           "To see the full output", "Use `-v`", "use -v")

# Where the commands write by default, ignored by git (.gitignore): a committed report (reports/...) is
# only written when its path is given.
OUT_DIR = Path("out")


class ToolError(BetaVAEError, RuntimeError):
    """A tool, repository, remote or directory a command needs is missing or failed; the message says which."""


def process_exists(pid: int) -> bool:
    """Whether a process of this id runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def error_line(result: subprocess.CompletedProcess) -> str:
    """The line of a failed command's output that says what failed, on one line, secrets hidden."""
    text = "\n".join(part for part in (result.stderr, result.stdout) if isinstance(part, str))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in _CAUSE_LINES:
        for line in lines:
            if pattern.match(line) and not any(advice in line for advice in _ADVICE):
                return one_line(line)[:500]
    remaining = [line for line in lines if not any(advice in line for advice in _ADVICE)]
    return one_line(remaining[-1])[:500] if remaining else f"exit status {result.returncode}"


def run(command: list[str], cwd: Path | str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """command's result, never raising for its exit status; a tool that is not installed is a ToolError."""
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise ToolError(f"`{command[0]}` is not installed or not on PATH") from None
    except OSError as error:
        raise ToolError(f"cannot start `{command[0]}`: {error.strerror or error}") from None


def checked(command: list[str], cwd: Path | str | None = None, env: dict | None = None) -> str:
    """command's standard output, or a ToolError quoting the line that says what failed."""
    result = run(command, cwd, env)
    if result.returncode != 0:
        raise ToolError(f"`{' '.join(command[:4])}{' ...' if len(command) > 4 else ''}` failed: {error_line(result)}")
    return result.stdout


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise ToolError(f"{' and '.join(f'`{name}`' for name in missing)} not installed or not on PATH "
                        "(`make setup`, then `source .venv/bin/activate`)")


def require_repository(path: Path | str | None = None) -> Path:
    """The root of the DVC repository that path is in (default: the current directory)."""
    path = Path(path or Path.cwd())
    if not path.is_dir():
        raise ToolError(f"{path}: no such directory")
    require_tools("git")
    result = run(["git", "rev-parse", "--show-toplevel"], path)
    if result.returncode != 0:
        raise ToolError(f"{path} is not inside a git repository; run this in a clone of the project")
    root = Path(result.stdout.strip())
    if not (root / ".dvc").is_dir():
        raise ToolError(f"{root} is a git repository but not a DVC one (no .dvc directory); run this in a clone "
                        "of the project")
    return root


def require_git_remote(remote: str, repo: Path | str) -> None:
    """The git remote exists, answers, and would accept a push of experiment refs."""
    known = checked(["git", "remote"], repo).split()
    if remote not in known:
        listed = ", ".join(known) or "none"
        raise ToolError(f"git remote {remote!r} does not exist in {repo} (remotes: {listed})")
    for command in (["git", "ls-remote", "--heads", remote],
                    ["git", "push", "--dry-run", "--quiet", remote, "HEAD:refs/betavae/probe"]):
        result = run(command, repo, {**os.environ, "GIT_TERMINAL_PROMPT": "0"})
        if result.returncode != 0:
            raise ToolError(f"git remote {remote!r} cannot take the experiments: {error_line(result)}")


def require_dvc_remote(repo: Path | str) -> str:
    """The default DVC remote, set and readable; its name."""
    require_tools("dvc")
    default = run(["dvc", "remote", "default"], repo)
    name = default.stdout.strip() if default.returncode == 0 else ""
    if not name:
        raise ToolError("no default DVC remote: `dvc remote add -d NAME URL` (the runs' outputs go there)")
    result = run(["dvc", "status", "--cloud"], repo)  # exits 0 with differences listed, non-zero if unreadable
    if result.returncode != 0:
        raise ToolError(f"DVC remote {name!r} cannot be read: {error_line(result)}")
    return name


def require_writable_directory(path: Path | str) -> Path:
    """path, created if missing, that this process can write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ToolError(f"{path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ToolError(f"cannot create {path}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ToolError(f"{path} is not writable")
    return path
