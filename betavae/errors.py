"""Expected, user-facing failures, and how every entry point reports them.

A failure the user can fix (bad params, a missing or damaged file, an unwritable output, an unusable
device) is a `BetaVAEError` whose message is one line naming what is wrong. Every entry point (the
stages, the scripts, the `betavae` command) runs through `run`, which prints it as
`<name>: error: <message>` and exits 1, without a traceback. `run` says in the same one line what the
machine refuses the process, wherever in the project's code or a library's it happens: a write that
fails (a full disk, a quota, the file size limit, a read-only file system: `storage_failure`), an
allocation that fails (`out_of_memory`, naming the settings that asked for the memory), an
environment the process cannot run in (`check_environment`, checked first), and a signal that stops
it (STOPPING_SIGNALS). Any other exception is a bug and keeps its traceback. A process that torchrun
started leaves why it stopped for the launcher on its machine as well (`LastWords`).

Every message said through here (`line`, `one_line`, `tell`, `say`) is bounded (MAX_MESSAGE) and passes
through `redact`, which hides what is a secret by what it is: the credentials of URLs
(`postgresql://user:password@host`, `https://token@host`), the values of the query parameters that
carry credentials (`?token=`, `X-Amz-Signature=`) and the values of the environment variables known
to hold secrets (SECRET_VARIABLES), wherever they appear in a message, a tool's error or an
exception's text. A variable is never judged by a fragment of its name: `GIT_AUTHOR_NAME=work` leaves
`out/work/samples.txt` as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import copy
import dataclasses
import difflib
import errno
import gc
import json
import os
import re
import resource
import shlex
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

# torchrun gives each process its rank here; only rank 0 speaks, so a message is printed once.
RANK_VARIABLE = "RANK"
WORLD_SIZE_VARIABLE = "WORLD_SIZE"


class BetaVAEError(Exception):
    """An expected failure; str(error) is what the user sees, secrets hidden."""

    def __str__(self) -> str:
        return redact(super().__str__())


class EnvironmentProblem(BetaVAEError):
    """The process's environment lacks something every command needs (check_environment)."""


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


@dataclasses.dataclass(frozen=True)
class LastWords:
    """Why a process that torchrun started stopped, and the status it exited with, for the launcher on its
    machine (betavae/pipeline/launch.py), which says the run's one line from them: torchrun's error file
    for the process (the path in TORCHELASTIC_ERROR_FILE, under the run's log folder; torchrun's agent
    reads its "message" and "timestamp" too). Processes outside torchrun leave nothing."""

    message: str
    exitcode: int
    rank: int
    pid: int

    VARIABLE = "TORCHELASTIC_ERROR_FILE"
    FILE_NAME = "error.json"  # the name torchrun gives each process's error file in its log folder

    @classmethod
    def leave(cls, message: str, exitcode: int) -> None:
        path = os.environ.get(cls.VARIABLE)
        if not path:
            return
        rank = os.environ.get(RANK_VARIABLE, "")
        words = {"message": message, "timestamp": int(time.time()), "exitcode": exitcode,
                 "rank": int(rank) if rank.isdecimal() else None, "pid": os.getpid()}
        with contextlib.suppress(OSError):  # the launcher still says what it can without them
            Path(path).write_text(json.dumps(words), encoding="utf-8")

    @classmethod
    def found(cls, folder: Path, since: float = 0) -> dict[int, LastWords]:
        """{rank: its last words} of the processes under folder that left them at `since` or later."""
        found = {}
        for path in sorted(folder.rglob(cls.FILE_NAME)):
            try:
                words = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(words, dict) or type(words.get("timestamp")) is not int or \
                    words["timestamp"] < int(since):
                continue
            numbers = {name: words.get(name) for name in ("exitcode", "rank", "pid")}  # ints, not bools
            if type(words.get("message")) is str and all(type(value) is int for value in numbers.values()):
                found[numbers["rank"]] = cls(words["message"], **numbers)
        return found


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
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def first_of(failures: list[str], noun: str = "failure") -> str:
    """A list of failures as a person reads it: the first, and how many more there are
    ("cannot copy a: No space left on device (and 4,543 more failures)"), never the whole list."""
    if len(failures) <= 1:
        return failures[0] if failures else f"no {noun}"
    return f"{failures[0]} (and {counted(len(failures) - 1, 'more ' + noun)})"


def line(name: str, error: BaseException | str) -> str:
    """The one format of every expected failure: `<name>: error: <message on one line>`."""
    return f"{name}: error: {one_line(error)}"


MAX_MESSAGE = 400  # characters: two lines of a wide terminal; a longer message keeps its start and its end


def one_line(error: BaseException | str) -> str:
    """Any message, folded onto one line, secrets hidden, at most MAX_MESSAGE characters, and any control
    character (a NUL, a terminal's escape sequence in a file name) written as its escape, so that what
    is printed is what it says. An exception that carries no message (a bare EOFError from a
    truncated file) is named by its type, so that no error ever reads "()"."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return _bounded(redact("".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
                                   for char in text)))


def _bounded(text: str) -> str:
    """text cut to MAX_MESSAGE characters in the middle, where a long message lists what its start
    has already named (its end says what was done about it)."""
    if len(text) <= MAX_MESSAGE:
        return text
    kept = MAX_MESSAGE - 40  # room for the marker
    head = kept * 2 // 3
    return f"{text[:head]} ... [{len(text) - kept:,} characters left out] ... {text[len(text) - (kept - head):]}"


HIDDEN = "***"
# scheme://user:password@host or scheme://token@host: everything between :// and the last @ before the host
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#]+)@")
# The query parameters that carry a credential, by their names in the APIs that use them: OAuth and
# most web APIs, S3's and Google Cloud Storage's signed URLs, Azure's SAS tokens.
SECRET_QUERY_PARAMETERS = ("token", "access_token", "refresh_token", "id_token", "auth", "auth_token",
                           "authorization", "password", "passwd", "pwd", "secret", "client_secret", "key",
                           "api_key", "apikey", "sig", "signature", "credential", "credentials",
                           "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "X-Goog-Signature",
                           "X-Goog-Credential")
_SECRET_QUERY = re.compile(r"(?P<key>[?&;](?:" + "|".join(map(re.escape, SECRET_QUERY_PARAMETERS)) +
                           r"))=(?P<value>[^&\s#;'\"]+)", re.IGNORECASE)
# The environment variables known to hold a secret: those of the tools this project runs or reaches
# (DVC's remotes and Studio, git hosts and CI, Optuna's databases, model hubs). Listed by name:
# a fragment of a name (AUTH in GIT_AUTHOR_NAME) says nothing about what a variable holds.
SECRET_VARIABLES = frozenset({
    # cloud storage behind DVC remotes
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD", "GDRIVE_CREDENTIALS_DATA", "GOOGLE_OAUTH_ACCESS_TOKEN",
    "OSS_ACCESS_KEY_SECRET", "WEBDAV_PASSWORD", "HDFS_PASSWORD",
    # DVC Studio, git hosts, CI
    "DVC_STUDIO_TOKEN", "STUDIO_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN",
    "GITLAB_TOKEN", "GITLAB_PRIVATE_TOKEN", "CI_JOB_TOKEN", "CI_REGISTRY_PASSWORD", "BITBUCKET_TOKEN",
    "ACTIONS_RUNTIME_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "CODECOV_TOKEN",
    # databases (Optuna's storages)
    "PGPASSWORD", "MYSQL_PWD", "MYSQL_PASSWORD", "REDIS_PASSWORD", "POSTGRES_PASSWORD",
    # package indexes and model hubs
    "TWINE_PASSWORD", "PYPI_TOKEN", "UV_PUBLISH_TOKEN", "NPM_TOKEN", "NODE_AUTH_TOKEN", "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "NEPTUNE_API_TOKEN", "COMET_API_KEY",
})
MIN_SECRET_LENGTH = 6  # shorter values (a flag, "1", "yes") would hide ordinary words


def redact(text: str) -> str:
    """text with credentials hidden: the user and password of URLs, the values of the query parameters
    that carry credentials, and the values of the environment variables known to hold secrets."""
    text = _URL_CREDENTIALS.sub(lambda match: f"{match['scheme']}{HIDDEN}@", text)
    text = _SECRET_QUERY.sub(lambda match: f"{match['key']}={HIDDEN}", text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= MIN_SECRET_LENGTH and value in text:
            text = text.replace(value, HIDDEN)
    return text


# --- what the machine refuses the process ------------------------------------------------------------

# A write (or an open) that fails for what the machine allows, not for what the code asked: each errno
# with the words that say so (os.strerror's, and the limit where it is this process's own).
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE)


def os_reason(error: OSError) -> str:
    """Why an OSError failed, in words, with the process's own limit where that is the cause: the file
    size limit (`ulimit -f`) for EFBIG, the open-files limit (`ulimit -n`) for EMFILE."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    return reason + _own_limit(error.errno)


def _own_limit(number: int | None) -> str:
    """" (this process's file size limit, `ulimit -f`, is 1,048,576 bytes)" where this process has a limit
    that an error of this errno can come from (EFBIG, EMFILE), else ""."""
    limits = {errno.EFBIG: (resource.RLIMIT_FSIZE, "file size limit, `ulimit -f`", "bytes"),
              errno.EMFILE: (resource.RLIMIT_NOFILE, "open-files limit, `ulimit -n`", "files")}
    if number not in limits:
        return ""
    limit, name, unit = limits[number]
    soft = resource.getrlimit(limit)[0]
    return "" if soft == resource.RLIM_INFINITY else f" (this process's {name}, is {soft:,} {unit})"


# SQLite's primary result codes for a write the machine refused (its message says which): a read-only
# database, an I/O error (a full disk, or the file size limit, which SQLite reports so), a full disk or
# database, a file that cannot be opened.
SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = 8, 10, 13, 14
SQLITE_STORAGE_ERRORS = (SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN)


def storage_failure(error: BaseException) -> str | None:
    """A message for a write that the machine refused (STORAGE_ERRORS, or SQLite's equivalents in a
    library's database) wherever it was made, naming the file, or else the library that wrote it; None for
    any other error."""
    database = _sqlite_refusal(error)
    if database is not None:
        library = _library(error) or _library(database)
        reason = " ".join(str(database).split()) or database.sqlite_errorname
        if database.sqlite_errorcode & 0xFF == SQLITE_IOERR:
            reason += _own_limit(errno.EFBIG)
        return f"{f'a write by {library} to its' if library else 'a write to a'} SQLite database failed: {reason}"
    if not isinstance(error, OSError) or error.errno not in STORAGE_ERRORS:
        return None
    verb = "open" if error.errno in (errno.EMFILE, errno.ENFILE) else "write"
    if error.filename is not None:
        return f"cannot {verb} {os.fsdecode(error.filename)}: {os_reason(error)}"
    library = _library(error)
    return f"{f'a {verb} by {library}' if library else f'a {verb}'} failed: {os_reason(error)}"


def _sqlite_refusal(error: BaseException) -> BaseException | None:
    """The SQLite error behind error (itself, or what a library wrapped: SQLAlchemy's .orig, a raise from)
    when it is one of SQLITE_STORAGE_ERRORS, else None."""
    seen: list[BaseException] = []
    while error is not None and len(seen) < 8 and not any(error is one for one in seen):
        seen.append(error)
        code = getattr(error, "sqlite_errorcode", None)
        if type(error).__module__ == "sqlite3" and isinstance(code, int) and code & 0xFF in SQLITE_STORAGE_ERRORS:
            return error
        error = getattr(error, "orig", None) or error.__cause__ or error.__context__
    return None


def _library(error: BaseException) -> str | None:
    """The package of the first installed library the failing call went through (dvclive for a write in
    PIL that DVCLive asked for), or None."""
    traceback = error.__traceback__
    while traceback is not None:
        installed = Path(traceback.tb_frame.f_code.co_filename).parts
        if "site-packages" in installed or "dist-packages" in installed:
            return str(traceback.tb_frame.f_globals.get("__name__", "")).split(".")[0] or None
        traceback = traceback.tb_next
    return None


_MEMORY_USE = contextvars.ContextVar("betavae_memory_use", default=None)
_ALLOCATION_FAILED = re.compile(r"can't allocate memory|cannot allocate memory|out of memory|failed to map segment|"
                                r"can't start new thread|unable to allocate", re.IGNORECASE)


def memory_asked_by(what: str) -> None:
    """Record what the memory this process is about to allocate is for, with its settings ("training with
    z_dim 32, batch_size 512 ..."): an allocation that fails anyway is then reported as theirs
    (speed/runtime.py's check_memory records it when it estimates)."""
    _MEMORY_USE.set(what)


def out_of_memory(error: BaseException, command: str) -> str | None:
    """A message for an allocation that failed (MemoryError, torch's CPU allocator, CUDA's out of
    memory, a library that cannot be mapped under `ulimit -v`), naming the settings that asked for the
    memory (memory_asked_by), else the command; None for any other error."""
    text = " ".join(str(error).split())
    failed = (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
              or (isinstance(error, OSError) and error.errno == errno.ENOMEM)
              or (isinstance(error, (RuntimeError, ImportError, OSError)) and _ALLOCATION_FAILED.search(text)))
    if not failed:
        return None
    found = _ALLOCATION_FAILED.search(text)
    start = text.rfind(". ", 0, found.start()) + 2 if found and ". " in text[:found.start()] else 0
    words = ". ".join(text[start:].split(". ")[:2]).rstrip(".")[:200] or type(error).__name__
    if isinstance(error, ImportError):  # a library's code does not fit in the address space left
        program = command.split(" ", 1)[0]
        return (f"out of memory: the libraries `{program}` needs cannot be loaded under this process's memory "
                f"limit ({words}); raise the limit (`ulimit -v`) or free memory")
    what = _MEMORY_USE.get() or f"`{command}`"
    return (f"out of memory: {what} asked for more memory than this process can have ({words}); lower those "
            "settings, or run it where more memory is free or the limit is higher")


def check_environment() -> None:
    """What every command and stage needs from its environment, checked before any work (and before
    the heavy libraries load: torch dies in a current directory that was deleted): standard input,
    output and error open (a closed one is pointed at /dev/null, so no file the command opens takes
    its place), a current directory that exists, and a temporary directory it can write in.
    Locale and HOME are not needed: output is written in the terminal's encoding with escapes, and where
    HOME cannot hold matplotlib's cache, matplotlib says so and keeps it in a temporary directory."""
    _open_standard_streams()
    try:
        os.getcwd()
    except OSError as error:
        raise EnvironmentProblem(f"the current directory cannot be used ({os_reason(error)}: it was deleted or "
                                 "moved); change to a directory that exists and rerun") from None
    for variable in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(variable)
        if value and not (os.path.isdir(value) and os.access(value, os.W_OK | os.X_OK)):
            raise EnvironmentProblem(f"the environment sets {variable}={one_line(repr(value))[:120]}, which is not a "
                                     "directory this process can write in; unset it or make it one")
    try:
        tempfile.gettempdir()
    except OSError as error:
        raise EnvironmentProblem(f"no temporary directory can be written in ({one_line(error)}); set TMPDIR to "
                                 "a directory this process can write in") from None


def _open_standard_streams() -> None:
    for descriptor, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(descriptor)
            continue
        except OSError:
            pass
        empty = os.open(os.devnull, os.O_RDWR)
        if empty != descriptor:
            os.dup2(empty, descriptor)
            os.close(empty)
        if getattr(sys, name) is None:
            setattr(sys, name, open(descriptor, "r" if descriptor == 0 else "w", closefd=False))  # noqa: SIM115


# --- how a command ends ------------------------------------------------------------------------------

# The signals that stop a process by default and come from outside it: a closed terminal or ssh session
# (SIGHUP), Ctrl-C and Ctrl-\ (SIGINT, SIGQUIT), `kill` and every scheduler (SIGTERM; Slurm's warning
# before a time limit is SIGUSR1 or SIGUSR2 when asked for), a CPU-time limit (SIGXCPU), timers
# (SIGALRM, SIGVTALRM, SIGPROF), a failing power supply (SIGPWR) and I/O readiness (SIGIO).
# Not these: the ones a fault in the process raises (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS,
# SIGABRT), SIGKILL (it cannot be caught: what it leaves, the next run of the same writer removes,
# betavae/pipeline/atomic.py), and SIGPIPE and SIGXFSZ, which Python ignores so that the write fails
# instead (a closed pipe, the file size limit: said in one line too).
STOPPING_SIGNALS = tuple(getattr(signal, name) for name in (
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGALRM", "SIGVTALRM", "SIGPROF",
    "SIGPWR", "SIGIO") if hasattr(signal, name))


class Stopped(BaseException):
    """A stopping signal arrived (STOPPING_SIGNALS other than SIGINT, which raises KeyboardInterrupt):
    raised where the program is, so that what it was writing is cleaned up as on Ctrl-C."""

    def __init__(self, number: int):
        super().__init__(number)
        self.number = number


class _StopSignals:
    """While a command runs, every stopping signal whose action is still the default raises Stopped
    (one ignored, as under nohup, stays ignored). Once the command has ended, or is already stopping,
    a signal is remembered instead, so that nothing interrupts the cleanup or the last line."""

    def __init__(self):
        self.received: int | None = None
        self.holding = False
        self.previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers
        for number in STOPPING_SIGNALS:
            if number != signal.SIGINT and signal.getsignal(number) == signal.SIG_DFL:
                self.previous[number] = signal.signal(number, self._stop)

    def _stop(self, number: int, frame) -> None:
        if self.received is not None:
            return  # already stopping: the first signal's cleanup goes on
        self.received = number
        if not self.holding:
            raise Stopped(number)

    def hold(self) -> None:
        self.holding = True

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        if self.received is not None:  # it came after the work was done: delivered now, as it was meant to be
            signal.raise_signal(self.received)


def run(main: Callable[[], None], name: str, on_failure: Callable[[], None] | None = None) -> None:
    """Check the environment, call main(); an expected error becomes one line and exit status 1, Ctrl-C
    exit status 130.

    What the machine refuses the process becomes one line too, wherever it happens: a write that fails
    (storage_failure), an allocation that fails (out_of_memory), an environment it cannot run in
    (check_environment). A reader of the output that goes away (`betavae encode ... | head -1`) stops
    the command as it stops any command in a pipeline, said in one line (exit status 1); the files it
    writes are replaced whole or not at all (betavae/pipeline/atomic.py), so none is left half-written.
    Every other stopping signal (STOPPING_SIGNALS: SIGTERM, SIGHUP, ...) stops it as Ctrl-C does (no
    temporary file is left beside an output), says so, then ends the process by that signal itself,
    so that whoever sent it (a shell, torchrun, a scheduler) sees it so. What the failed work held is
    released before the exit, so that the libraries' own clean-up runs then, not as "Exception
    ignored" blocks at exit. on_failure runs before the exit (the stages use it to flag params that a
    failed `dvc exp run` leaves behind, betavae/compat/dvc_workspace.py)."""
    stops = _StopSignals()
    remembered = _MEMORY_USE.set(None)
    try:
        failure = _failure(main, name, stops)
        if failure is None:
            return
        gc.collect()  # the failed work's objects (a library's open files and repositories) are released here
        message, status, number = failure
        _exit(message, status, number or stops.received, on_failure)
    finally:
        _MEMORY_USE.reset(remembered)
        stops.restore()


def _failure(main: Callable[[], None], name: str, stops: _StopSignals) -> tuple[str, int, int | None] | None:
    """Run main; None if it succeeded, else (the line to say, the exit status, the signal to end by).
    A bug, and SystemExit, go on as they are."""
    try:
        check_environment()
        main()
    except BaseException as error:
        stops.hold()
        failure = _described(error, name)
        if failure is None:
            raise
        return failure
    stops.hold()
    return None


def _described(error: BaseException, name: str) -> tuple[str, int, int | None] | None:
    if isinstance(error, Stopped):
        said = "terminated" if error.number == signal.SIGTERM else f"stopped by {signal.Signals(error.number).name}"
        return f"{name}: {said}", 128 + error.number, error.number
    if isinstance(error, KeyboardInterrupt):
        return f"{name}: interrupted", 130, None
    if isinstance(error, BetaVAEError):
        return line(name, error), 1, None
    if isinstance(error, BrokenPipeError):
        _discard_output()
        return line(name, "stopped: the program reading its output closed the pipe (broken pipe)"), 1, None
    message = out_of_memory(error, shlex.join([name, *sys.argv[1:]])) or storage_failure(error)
    return None if message is None else (line(name, message), 1, None)


def _exit(message: str, status: int, number: int | None, on_failure: Callable[[], None] | None) -> None:
    if status == 1 and number is None:  # its own failure, not a stop from outside
        LastWords.leave(message, status)
    if on_failure is not None:
        with contextlib.suppress(OSError):  # best effort, on a machine that may have refused a write already
            on_failure()
    with contextlib.suppress(OSError):  # stderr is a closed pipe or a full disk too: the exit status says it
        tell(message)
    _discard_output()  # flushes what was printed
    if number is not None:  # end as the signal ends a process, for whoever sent it
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    raise SystemExit(status)


def _discard_output() -> None:
    """Flush stdout and stderr; one whose flush fails (a closed pipe, a full disk) is pointed at /dev/null,
    so that Python's last flush at exit does not fail again (and print "Exception ignored ...")."""
    empty = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.dup2(empty, stream.fileno())
    os.close(empty)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line, `<prog>: error: <what> (see `<prog> --help`)`, exit status 2:
    the parser of every command line (the stages, the scripts, `betavae`).

    An option no parser knows is named first, with the closest known one (`--output (did you mean
    --out?)`), by the parser it was given to (a subcommand's, for `betavae sample --output x.png`):
    argparse itself would first say that a required option is missing, the one the typo was meant
    to be. The help keeps each description's own lines (a docstring's examples, one to a line)."""

    # While parse_args runs: a list during its trial parse, which waives every parser's required
    # arguments and collects (parser, unknown option); () during the parse itself.
    _trial = contextvars.ContextVar("betavae_argument_trial", default=None)

    class _Abandoned(Exception):
        """The trial parse met another error, or a --help: the parse itself reports it."""

    def __init__(self, *args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def parse_args(self, args=None, namespace=None):
        if self._trial.get() is not None:
            return super().parse_args(args, namespace)
        args = sys.argv[1:] if args is None else list(args)
        unknown = []
        token = self._trial.set(unknown)
        try:
            self.parse_known_args(args, copy.copy(namespace))
        except ArgumentParser._Abandoned:
            unknown.clear()
        finally:
            self._trial.reset(token)
        if unknown:
            parser = unknown[0][0]
            parser.error(parser._unrecognized([option for owner, option in unknown if owner is parser]))
        token = self._trial.set(())
        try:
            return super().parse_args(args, namespace)
        finally:
            self._trial.reset(token)

    def parse_known_args(self, args=None, namespace=None):
        trial = self._trial.get()
        if trial is None:  # called directly: argparse's own behaviour
            return super().parse_known_args(args, namespace)
        if isinstance(trial, list):
            waived = [action for action in self._actions if action.required]
            for action in waived:
                action.required = False
            try:
                namespace, extras = super().parse_known_args(args, namespace)
            finally:
                for action in waived:
                    action.required = True
            options = [extra for extra in extras if self._is_option(extra)]
            trial.extend((self, option) for option in options)
            return namespace, [extra for extra in extras if extra not in options]
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # reported here, by the parser (a subcommand's) that was given them
            self.error(self._unrecognized(extras))
        return namespace, extras

    @staticmethod
    def _is_option(argument: str) -> bool:
        """Whether a command-line argument is an option's name (`--output`, `-x`, `--out=x`), not a value
        (`-`, `--`, a negative number)."""
        if not argument.startswith("-") or argument in ("-", "--"):
            return False
        try:
            float(argument)
        except ValueError:
            return True
        return False

    def _unrecognized(self, extras: list[str]) -> str:
        """`unrecognized arguments: ...`: the unknown options, each with the closest known one, or else
        every argument left over."""
        options = [extra for extra in extras if self._is_option(extra)]
        if not options:
            return f"unrecognized arguments: {' '.join(extras)}"
        known = [name for action in self._actions for name in action.option_strings]
        named = []
        for option in options:
            close = difflib.get_close_matches(option.split("=", 1)[0], known, n=1)
            named.append(f"{option} (did you mean {close[0]}?)" if close else option)
        return f"unrecognized arguments: {', '.join(named)}"

    def error(self, message: str):
        if isinstance(self._trial.get(), list):
            raise ArgumentParser._Abandoned
        self.exit(2, f"{line(self.prog.split()[0], message)} (see `{self.prog} --help`)\n")

    def exit(self, status: int = 0, message: str | None = None):
        if isinstance(self._trial.get(), list):
            raise ArgumentParser._Abandoned
        super().exit(status, message)

    def _print_message(self, message: str, file=None) -> None:
        if isinstance(self._trial.get(), list):  # --help, --version: said once, by the parse itself
            raise ArgumentParser._Abandoned
        super()._print_message(message, file)


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

