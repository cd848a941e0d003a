"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

Each write goes to a temporary file in the destination's directory, is fsynced, then renamed
over the destination (rename is atomic within one file system), and the directory is fsynced
so the rename itself survives a power loss. A write that fails (disk full, no permission)
leaves the old file in place and raises `OutputError`, naming the file and the reason.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from betavae.errors import BetaVAEError


class OutputError(BetaVAEError, OSError):
    """An output file could not be written; the old one, if any, is untouched."""


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: {path.parent} is not a directory")
    try:
        _replace(path, data)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"cannot write {path}: {reason}") from None


def _replace(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


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

    Every file is first written in full beside its destination (a temporary file, fsynced); only
    when all are written are they renamed into place, each old file kept aside until the last
    rename has succeeded. A rename that fails puts back the ones made before it. A finished
    directory (`directory`) is moved into place the same way.
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
        """Replace the directory at path by the finished directory source."""
        self._directories[Path(path)] = Path(source)

    def __enter__(self) -> Together:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()

    def commit(self) -> None:
        staged = self._stage()
        done: list[tuple[Path, Path | None, bool]] = []  # (destination, the old one set aside, is a directory)
        try:
            for destination, temporary in staged.items():
                done.append((destination, _set_aside(destination), False))
                os.replace(temporary, destination)
            for destination, source in self._directories.items():
                done.append((destination, _set_aside(destination), True))
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(source, destination)
        except BaseException as error:  # a failed rename, or a stop (Ctrl-C, SIGTERM) between two renames
            for destination, aside, is_directory in reversed(done):
                _put_back(destination, aside, is_directory)
            for temporary in staged.values():
                Path(temporary).unlink(missing_ok=True)
            if not isinstance(error, OSError):
                raise
            raise OutputError(f"cannot replace {done[-1][0] if done else 'the outputs'}: "
                              f"{error.strerror or error}; every output was left as it was") from None
        for destination, aside, is_directory in done:
            _fsync_directory(destination.parent)
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True) if is_directory else aside.unlink(missing_ok=True)

    def _stage(self) -> dict[Path, str]:
        staged: dict[Path, str] = {}
        try:
            for destination, data in self._files.items():
                if destination.parent.exists() and not destination.parent.is_dir():
                    raise OutputError(f"cannot write {destination}: {destination.parent} is not a directory")
                if destination.is_dir():
                    raise OutputError(f"cannot write {destination}: it is a directory")
                try:
                    staged[destination] = _write_beside(destination, data)
                except OSError as error:
                    raise OutputError(f"cannot write {destination}: {error.strerror or type(error).__name__}; "
                                      "every output was left as it was") from None
        except BaseException:
            for temporary in staged.values():
                Path(temporary).unlink(missing_ok=True)
            raise
        return staged


def _write_beside(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def _set_aside(destination: Path) -> Path | None:
    """Move the old output out of the way (a file stays in place as a hard link, so it is never
    missing); None if there was none."""
    if not destination.exists() and not destination.is_symlink():
        return None
    aside = destination.with_name(f".{destination.name}.old")
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    else:
        aside.unlink(missing_ok=True)
    if destination.is_dir() and not destination.is_symlink():
        os.replace(destination, aside)
    else:
        try:
            os.link(destination, aside, follow_symlinks=False)
        except OSError:  # a file system without hard links
            shutil.copy2(destination, aside, follow_symlinks=False)
    return aside


def _put_back(destination: Path, aside: Path | None, is_directory: bool) -> None:
    try:
        if is_directory and destination.exists():
            shutil.rmtree(destination, ignore_errors=True)
        if aside is not None and _same_file(aside, destination):
            aside.unlink()  # the old file was never replaced (renaming one hard link onto the other does nothing)
        elif aside is not None:
            os.replace(aside, destination)
        elif not is_directory:
            destination.unlink(missing_ok=True)
    except OSError:
        pass  # best effort: the error being raised says what failed


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def replace_directory(destination: str | Path, source: str | Path) -> None:
    """Move the directory source to destination, replacing what was there: the old directory is
    moved aside first and deleted last, so destination is never a mix of the two."""
    destination, source = Path(destination), Path(source)
    aside = destination.with_name(f".{destination.name}.old")
    try:
        shutil.rmtree(aside, ignore_errors=True)
        if destination.exists():
            os.replace(destination, aside)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, destination)  # a rename on one file system
        _fsync_directory(destination.parent)
    except OSError as error:
        raise OutputError(f"cannot replace {destination} with {source}: {error.strerror or error}") from None
    shutil.rmtree(aside, ignore_errors=True)


def remove_directory(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove(path: str | Path) -> None:
    """Delete a file if it is there; a failure to delete is an OutputError too."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as error:
        raise OutputError(f"cannot remove {path}: {error.strerror or type(error).__name__}") from None


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
