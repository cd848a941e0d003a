"""Expected, user-facing failures, and how every entry point reports them.

A failure the user can fix (bad params, a missing or damaged file, an unwritable output, an unusable
device) is a `BetaVAEError` whose message is one line naming what is wrong. Entry points (the stage
scripts and the `betavae` command) print it as `<name>: error: <message>` and exit 1, without a
traceback. Any other exception is a bug and keeps its traceback.

No message carries a secret: everything said through here (`line`, `one_line`, `tell`, `say`) passes
through `redact`, which hides the credentials of URLs (`postgresql://user:password@host`,
`https://token@host`), the values of secret-looking query parameters (`?token=`, `&password=`) and
the value of any environment variable whose name says it holds a secret (…_TOKEN, …_SECRET, …_KEY,
…PASSWORD…), wherever they appear in a message, a tool's error or an exception's text.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path

# torchrun gives each process its rank here; only rank 0 speaks, so a message is printed once.
RANK_VARIABLE = "RANK"
WORLD_SIZE_VARIABLE = "WORLD_SIZE"


class BetaVAEError(Exception):
    """An expected failure; str(error) is what the user sees, secrets hidden."""

    def __str__(self) -> str:
        return redact(super().__str__())


def is_main_process() -> bool:
    """Whether this is process 0 of a data-parallel run, or the only process. A rank that is not a number
    below WORLD_SIZE counts as process 0: no other process would speak for it, and the error that names
    it (distributed.world_from_environment) must be printed."""
    rank, size = os.environ.get(RANK_VARIABLE, "0"), os.environ.get(WORLD_SIZE_VARIABLE, "1")
    return not (rank.isdecimal() and size.isdecimal()) or int(rank) == 0 or int(rank) >= int(size)


def tell(message: str, stream=None) -> None:
    """Print message from process 0 only (stderr unless stream is given), at once, secrets hidden."""
    if is_main_process():
        _put(redact(message), stream or sys.stderr)


def say(message: str) -> None:
    """Print a progress line on stdout, secrets hidden (the scripts' and the stages' lines)."""
    _put(redact(message), sys.stdout)


def _put(text: str, stream) -> None:
    """Print text at once, each character the stream cannot encode written as its escape: a file name's
    byte that is not UTF-8 (`\\udcff`), or any non-ASCII character where the terminal is ASCII. A message
    about work that is done never fails for the text it quotes."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=stream, flush=True)


def counted(number: int, noun: str) -> str:
    """'1 image', '2 images': a count in a message, in the grammar a reader expects."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def line(name: str, error: BaseException | str) -> str:
    """The one format of every expected failure: `<name>: error: <message on one line>`."""
    return f"{name}: error: {one_line(error)}"


def one_line(error: BaseException | str) -> str:
    """Any message, folded onto one line, secrets hidden, and any control character (a NUL, a terminal's
    escape sequence in a file name) written as its escape, so that what is printed is what it says.
    An exception that carries no message (a bare EOFError from a truncated file) is named by its type,
    so that no error ever reads "()"."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return redact("".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
                          for char in text))


HIDDEN = "***"
# scheme://user:password@host or scheme://token@host: everything between :// and the last @ before the host
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#]+)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&;](?:[\w.-]*(?:pass|pwd|secret|token|key|sig|signature|credential|auth)"
                           r"[\w.-]*))=(?P<value>[^&\s#;'\"]+)", re.IGNORECASE)
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|_KEY$|AUTH",
                          re.IGNORECASE)
MIN_SECRET_LENGTH = 6  # shorter values (a flag, "1", "yes") would hide ordinary words


def redact(text: str) -> str:
    """text with credentials hidden: the user and password of URLs, secret query values, and the
    values of environment variables whose names mark them as secrets."""
    text = _URL_CREDENTIALS.sub(lambda match: f"{match['scheme']}{HIDDEN}@", text)
    text = _SECRET_QUERY.sub(lambda match: f"{match['key']}={HIDDEN}", text)
    for name, value in os.environ.items():
        if len(value) >= MIN_SECRET_LENGTH and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, HIDDEN)
    return text


class Terminated(BaseException):
    """SIGTERM arrived (`kill`, a job scheduler, torchrun stopping the other processes): raised where the
    program is, so that what it was writing is cleaned up as on Ctrl-C."""


def run(main: Callable[[], None], name: str, on_failure: Callable[[], None] | None = None) -> None:
    """Call main(); an expected error becomes one line and exit status 1, Ctrl-C exit status 130.

    A reader of the output that goes away (`betavae encode ... | head -1`) stops the command as it
    stops any command in a pipeline, said in one line (exit status 1); the files it writes are
    replaced whole or not at all (betavae/pipeline/atomic.py), so none is left half-written.
    SIGTERM stops it as Ctrl-C does (no temporary file is left beside an output), then ends the
    process by SIGTERM itself, so that whoever sent it (a shell, torchrun, a scheduler) sees it so.
    on_failure runs before the exit (the stages use it to flag params that a failed `dvc exp run`
    leaves behind, betavae/compat/dvc_workspace.py)."""
    previous = _raise_on_sigterm()
    try:
        main()
    except BetaVAEError as error:
        _exit(line(name, error), 1, on_failure)
    except KeyboardInterrupt:
        _exit(f"{name}: interrupted", 130, on_failure)
    except Terminated:
        _exit_by_sigterm(name, on_failure)
    except BrokenPipeError:
        _discard_output()
        _exit(line(name, "stopped: the program reading its output closed the pipe (broken pipe)"), 1, on_failure)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm():
    """Make SIGTERM raise Terminated; the handler it replaces, or None where none can be set (a thread
    other than the main one)."""
    def stop(number, frame):
        raise Terminated
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def _exit_by_sigterm(name: str, on_failure: Callable[[], None] | None) -> None:
    try:
        _exit(f"{name}: terminated", 128 + signal.SIGTERM, on_failure)
    except SystemExit:
        _discard_output()  # flushes what was printed
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise


def _exit(message: str, status: int, on_failure: Callable[[], None] | None) -> None:
    if on_failure is not None:
        on_failure()
    try:
        tell(message)
    except OSError:  # stderr is a closed pipe too: the exit status is all that is left to say it
        _discard_output()
    raise SystemExit(status)


def _discard_output() -> None:
    """Flush stdout and stderr; one whose flush fails (a closed pipe) is pointed at /dev/null, so that
    Python's last flush at exit does not fail again (and print "Exception ignored ... BrokenPipeError")."""
    empty = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            os.dup2(empty, stream.fileno())
    os.close(empty)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line, `<prog>: error: <what> (see `<prog> --help`)`, exit status 2:
    the parser of every command line (the stages, the scripts, `betavae`)."""

    def error(self, message: str):
        self.exit(2, f"{line(self.prog.split()[0], message)} (see `{self.prog} --help`)\n")


def integer_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (no upper bound where high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            upper = "" if high is None else f" and <= {high}"
            raise argparse.ArgumentTypeError(f"must be >= {low}{upper}, got {value}")
        return value
    return parse


def environment_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The value of environment variable `name`, one of choices (default when unset), else a BetaVAEError
    naming the variable: the environment is read like a command line, and as strictly."""
    value = os.environ.get(name, default)
    if value not in choices:
        raise BetaVAEError(f"the environment sets {name}={one_line(repr(value))[:80]}; it must be one of "
                           f"{', '.join(choices)}, or unset")
    return value


def environment_integer(name: str, default: int, low: int = 0) -> int:
    """The value of environment variable `name` as an integer >= low (default when unset), else a
    BetaVAEError naming the variable."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low:
        raise BetaVAEError(f"the environment sets {name}={one_line(repr(value))[:80]}; it must be an integer "
                           f">= {low}, or unset")
    return number


def output_file(*suffixes: str):
    """An argparse type: a file a command will write, checked when the command line is read, before any
    work: not a directory, ending in one of suffixes (when given), and in a directory this process can
    write in or create. Nothing is created here; the writer (betavae/pipeline/atomic.py) makes the
    missing directories when it writes."""
    def parse(text: str) -> Path:
        try:
            problem = _unwritable(Path(text), suffixes) if text else "is empty; name the file to write"
        except (OSError, ValueError) as error:  # a name the file system cannot hold (too long, a NUL byte)
            problem = f"is not a usable file name ({one_line(error)})"
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r} {problem}")
        return Path(text)
    return parse


def _unwritable(path: Path, suffixes: tuple[str, ...]) -> str | None:
    """Why a file cannot be written at path, or None; OSError or ValueError for a name that cannot be one."""
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            return "is a directory; name the file to write"
    except (FileNotFoundError, NotADirectoryError):
        pass
    if suffixes and path.suffix.lower() not in suffixes:
        return f"must end in {' or '.join(suffixes)}"
    existing = path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be written: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {existing} is not writable"
    return None

