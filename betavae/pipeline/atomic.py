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


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def torch_bytes(obj: object) -> bytes:
    # torch.save names the zip's inner folder after the file it writes to; saving to memory
    # keeps that name fixed, so equal checkpoints are equal bytes whatever the temp file name.
    import torch  # only the writers of torch files need it

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_torch(path: str | Path, obj: object) -> None:
    write_bytes(path, torch_bytes(obj))


def write_figure(path: str | Path, figure) -> None:
    buffer = io.BytesIO()
    # No Software/date metadata, so the same figure is the same bytes on every run.
    figure.savefig(buffer, format="png", metadata={"Software": None}, dpi=figure.dpi)
    write_bytes(path, buffer.getvalue())


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
