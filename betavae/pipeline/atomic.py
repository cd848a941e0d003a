"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

Each write goes to a temporary file in the destination's directory (`.NAME.XXXXXXXX.tmp`), is
fsynced, then renamed over the destination (rename is atomic within one file system), and the
directory is fsynced so the rename itself survives a power loss. A write that fails (disk full, a
quota, the file size limit, no permission) or is stopped (Ctrl-C, SIGTERM, SIGHUP, ...) leaves the
old file in place and no temporary file beside it, and raises `OutputError` naming the file and the
reason. What a writer that cannot clean up leaves (SIGKILL, a power cut: a temporary file, an old
output set aside) is removed, or put back, by the next writer of the same output: while writers
write in a directory they hold a shared lock on it, and one that finds no other writer there clears
what a dead one left behind (`_Writers`). git ignores those names (.gitignore).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from betavae.errors import BetaVAEError, first_of, os_reason


class OutputError(BetaVAEError, OSError):
    """An output file could not be written; the old one, if any, is untouched."""


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: {path.parent} is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _Writers([path]):
            _replace(path, data)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {_reason(error)}") from None


def _replace(path: Path, data: bytes) -> None:
    temporary = _write_beside(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _reason(error: OSError) -> str:
    """Why an OSError failed, in a line: a failed copy of many files (shutil.Error, the list of every
    file that failed) is its first failure and a count of the others."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        failures = []
        for source, _, why in error.args[0]:  # why: str(OSError), "[Errno 28] No space left on device: 'a' -> 'b'"
            words = re.match(r"\[Errno \d+\] ([^:]+)", str(why))
            failures.append(f"{words[1] if words else why} copying {source}")
        return first_of(failures, "failed file")
    return os_reason(error)


@functools.cache
def _umask() -> int:
    # The only way to read the umask is to set it; done once, on first write, not at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def csv_text(rows: list[dict], fields: list[str] | None = None) -> str:
    """A table as CSV: a header of `fields` (default: the first row's keys), then a line per row.

    Text from outside lands in these tables (an image's file name, an experiment's name pulled from
    someone's remote). A cell holding a line break, a carriage return included, is quoted. A
    spreadsheet runs a cell that starts with = + - @ (or a tab or carriage return) as a formula, so
    such a text cell is written with a leading apostrophe, which spreadsheets show as text (OWASP's
    advice on CSV injection); numbers, "-0.5" among them, are written as they are."""
    import csv  # only the writers of tables need it

    fields = fields or list(rows[0])
    buffer = io.StringIO()
    # Written with "\r\n", the writer quotes a cell that holds either character (with "\n" alone it
    # leaves a "\r" bare, which readers take for the end of a line); each line then ends in "\n".
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\r\n")
    lines = []
    for row in [dict(zip(fields, fields)), *rows]:
        writer.writerow({key: _inert_cell(value) for key, value in row.items()})
        lines.append(buffer.getvalue().removesuffix("\r\n") + "\n")
        buffer.seek(0)
        buffer.truncate()
    return "".join(lines)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert_cell(value: object) -> object:
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def json_text(data: object) -> str:
    """data as the project writes JSON: indented, keys sorted, and valid for every reader (RFC 8259 has no
    NaN or Infinity, which Python writes and a browser's JSON.parse refuses): a non-finite number is null."""
    return json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _finite(data: object) -> object:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json_text(data))


def torch_bytes(obj: object) -> bytes:
    # torch.save names the zip's inner folder after the file it writes to; saving to memory
    # keeps that name fixed, so equal checkpoints are equal bytes whatever the temp file name.
    import torch  # only the writers of torch files need it

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_torch(path: str | Path, obj: object) -> None:
    write_bytes(path, torch_bytes(obj))


class Together:
    """Outputs that belong together, replaced together: a reader, and a stage that fails, see all of
    the old ones or all of the new ones.

        with atomic.Together() as outputs:
            outputs.bytes(directory / "encoder.onnx", encoder)
            outputs.json(directory / "explorer.json", page)
        # all replaced here; if one could not be written, none was, and OutputError names it

    Every file is first written in full beside its destination (a temporary file, fsynced), and a
    finished directory (`directory`) on another file system is first copied beside its
    destination; only when all are there are they renamed into place, each old one kept aside
    until the last rename has succeeded. A rename that fails puts back the ones made before it.
    """

    def __init__(self):
        self._files: dict[Path, bytes] = {}
        self._directories: dict[Path, Path] = {}

    def bytes(self, path: str | Path, data: bytes) -> None:
        self._files[Path(path)] = data

    def text(self, path: str | Path, text: str) -> None:
        self.bytes(path, text.encode())

    def json(self, path: str | Path, data: object) -> None:
        self.text(path, json_text(data))

    def directory(self, path: str | Path, source: str | Path) -> None:
        """Replace the directory at path by the finished directory source (which is moved, not kept)."""
        self._directories[Path(path)] = Path(source)

    def __enter__(self) -> Together:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()

    def commit(self) -> None:
        destinations = [*self._files, *self._directories]
        for destination in destinations:
            if destination.parent.exists() and not destination.parent.is_dir():
                raise OutputError(f"cannot write {destination}: {destination.parent} is not a directory")
            if destination in self._files and destination.is_dir():
                raise OutputError(f"cannot write {destination}: it is a directory")
        for destination in destinations:
            try:
                destination.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(f"cannot write {destination}: {_reason(error)}; every output was left as it "
                                  "was") from None
        with _Writers(destinations):
            self._commit()

    def _commit(self) -> None:
        staged = self._stage()  # destination -> (what is renamed onto it, whether that is a copy of the source)
        done: list[tuple[Path, Path | None]] = []  # (destination, the old one set aside)
        try:
            for destination, (temporary, _) in staged.items():
                done.append((destination, _set_aside(destination)))
                os.replace(temporary, destination)
        except BaseException as error:  # a failed rename, or a stop (Ctrl-C, SIGTERM) between two renames
            for destination, aside in reversed(done):
                _put_back(destination, aside, staged[destination], self._directories.get(destination))
            _discard(staged, self._directories)
            if not isinstance(error, OSError):
                raise
            raise OutputError(f"cannot replace {done[-1][0] if done else 'the outputs'}: "
                              f"{_reason(error)}; every output was left as it was") from None
        for destination, aside in done:
            _fsync_directory(destination.parent)
            if aside is not None:
                _remove_any(aside)
        for destination, source in self._directories.items():
            if staged[destination][1]:
                shutil.rmtree(source, ignore_errors=True)  # moved: the copy is in place

    def _stage(self) -> dict[Path, tuple[str | Path, bool]]:
        staged: dict[Path, tuple[str | Path, bool]] = {}
        try:
            for destination, data in self._files.items():
                try:
                    staged[destination] = (_write_beside(destination, data), False)
                except OSError as error:
                    raise OutputError(f"cannot write {destination}: {_reason(error)}; "
                                      "every output was left as it was") from None
            for destination, source in self._directories.items():
                try:
                    staged[destination] = _directory_beside(destination, source)
                except OSError as error:
                    raise OutputError(f"cannot write {destination}: {_reason(error)}; "
                                      "every output was left as it was") from None
        except BaseException:
            _discard(staged, self._directories)
            raise
        return staged


def _write_beside(path: Path, data: bytes) -> str:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def _directory_beside(destination: Path, source: Path) -> tuple[Path, bool]:
    """Where the finished directory source is renamed from: itself on the destination's file system, else a
    copy made beside the destination first (a copy that fails, a full disk, then fails before any output
    is touched); and whether it is a copy."""
    if os.stat(source).st_dev == os.stat(destination.parent).st_dev:
        return source, False
    copy = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"))
    try:
        shutil.copytree(source, copy, symlinks=True, dirs_exist_ok=True)
    except BaseException:
        shutil.rmtree(copy, ignore_errors=True)
        raise
    return copy, True


def _discard(staged: dict[Path, tuple[str | Path, bool]], directories: dict[Path, Path]) -> None:
    """Remove the temporary files and copies of a set that was not committed (a source moved is not one)."""
    for destination, (temporary, copied) in staged.items():
        if destination not in directories or copied:
            _remove_any(Path(temporary))


def _set_aside(destination: Path) -> Path | None:
    """Move the old output out of the way (a file stays in place as a hard link, so it is never
    missing); None if there was none."""
    if not destination.exists() and not destination.is_symlink():
        return None
    aside = _aside(destination)
    _remove_any(aside)
    if destination.is_dir() and not destination.is_symlink():
        os.replace(destination, aside)
    else:
        try:
            os.link(destination, aside, follow_symlinks=False)
        except OSError:  # a file system without hard links
            shutil.copy2(destination, aside, follow_symlinks=False)
    return aside


def _aside(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.old")


def _put_back(destination: Path, aside: Path | None, staged: tuple[str | Path, bool], source: Path | None) -> None:
    """Undo one rename of a commit: what was renamed onto destination goes back where it came from (a
    directory moved from source back there), and the old one set aside back into place."""
    try:
        if source is not None and destination.exists():
            if staged[1]:
                shutil.rmtree(destination, ignore_errors=True)
            else:
                os.replace(destination, source)
        if aside is not None and _same_file(aside, destination):
            aside.unlink()  # the old file was never replaced (renaming one hard link onto the other does nothing)
        elif aside is not None:
            os.replace(aside, destination)
        elif source is None:
            destination.unlink(missing_ok=True)
    except OSError:
        pass  # best effort: the error being raised says what failed


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _remove_any(path: Path) -> None:
    """Remove a file, link or directory at path, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


class _Writers:
    """While outputs are written beside their destinations: a shared lock (flock) on each directory they are
    written in, which a writer's death releases. A writer that finds no one else writing in a directory
    (it gets the exclusive lock at once) first clears what a writer of the same outputs that died there
    left behind (SIGKILL, a power cut): temporary files and copies (`.NAME.XXXXXXXX.tmp`) are removed,
    and an old output set aside (`.NAME.old`) goes back into place if nothing replaced it, else is
    removed. Where a directory cannot be locked (a file system without locks), nothing is cleared."""

    def __init__(self, destinations: list[Path]):
        self._names: dict[Path, list[str]] = {}
        for destination in destinations:
            self._names.setdefault(destination.parent, []).append(destination.name)
        self._handles: list[int] = []

    def __enter__(self) -> _Writers:
        try:
            for directory, names in self._names.items():
                self._lock(directory, names)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind, error, traceback) -> None:
        for handle in self._handles:
            os.close(handle)  # releases the lock
        self._handles.clear()

    def _lock(self, directory: Path, names: list[str]) -> None:
        try:
            handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        self._handles.append(handle)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            alone = False
        else:
            alone = True
        try:
            if alone:
                _clear_left_behind(directory, set(names))
            fcntl.flock(handle, fcntl.LOCK_SH)
        except OSError:
            pass  # no locks here: write without clearing


_LEFT_BEHIND = re.compile(r"\.(?P<name>.+)\.(?:[a-z0-9_]{8}\.tmp|(?P<old>old))")  # mkstemp's 8 characters


def _clear_left_behind(directory: Path, names: set[str]) -> None:
    with os.scandir(directory) as entries:
        found = [(match, Path(entry.path)) for entry in entries
                 if (match := _LEFT_BEHIND.fullmatch(entry.name)) and match["name"] in names]
    for match, path in found:
        destination = directory / match["name"]
        if match["old"] and not destination.exists() and not destination.is_symlink():
            os.replace(path, destination)  # set aside by a commit that died before its rename: put back
        else:
            _remove_any(path)


def replace_directory(destination: str | Path, source: str | Path) -> None:
    """Move the directory source to destination, replacing what was there: the old directory is
    moved aside first and deleted last, so destination is never a mix of the two."""
    with Together() as outputs:
        outputs.directory(destination, source)


def remove_directory(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove(path: str | Path) -> None:
    """Delete a file if it is there; a failure to delete is an OutputError too."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as error:
        raise OutputError(f"cannot remove {path}: {_reason(error)}") from None


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
