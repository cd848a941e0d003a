"""Reading a file named from outside: a regular file only, at most a bound's bytes, each failure one line.

A name given on a command line, in params.yaml or to the API may name anything: a directory, a FIFO
that blocks until some writer comes, /dev/zero or /dev/urandom that never end, a file larger than
memory. Every reader of such a file (IDX, PNG, YAML, the training log) reads it through `read_bytes`,
so each of these is refused in one line before it is read, never a hang or a process killed for memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from betavae.errors import BetaVAEError, one_line

MISSING = "no such file"
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def read_bytes(path: str | Path, limit: int, what: str, error: type[BetaVAEError] = BetaVAEError,
               missing: str = MISSING) -> bytes:
    """The bytes of the regular file at path, at most `limit` of them (else `error` says it is too large for
    `what`, e.g. "a settings file"); a missing file is `error` "<path>: <missing>"."""
    path = Path(path)
    too_large = f"{path}: larger than {size_text(limit)}, too large for {what}"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below, once opened.
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except OSError as failure:
        raise error(_unreadable(path, failure)) from None
    except ValueError as failure:  # a name the file system cannot hold (a NUL byte)
        raise error(f"{path}: not a usable file name ({one_line(failure)})") from None
    try:
        status = os.fstat(handle)
        if stat.S_ISDIR(status.st_mode):
            raise error(f"{path}: is a directory, not a file")
        if not stat.S_ISREG(status.st_mode):
            kind = next((name for test, name in _KINDS if test(status.st_mode)), "something else")
            raise error(f"{path}: is {kind}, not a regular file")
        if status.st_size > limit:  # refused before a byte is read
            raise error(too_large)
        data = _read_all(handle, limit + 1)
    except BetaVAEError:  # raised above; `error` may itself be an OSError
        raise
    except OSError as failure:
        raise error(_unreadable(path, failure)) from None
    finally:
        os.close(handle)
    if len(data) > limit:  # it grew while it was read
        raise error(too_large)
    return data


def _unreadable(path: Path, failure: OSError) -> str:
    return f"{path}: cannot be read ({failure.strerror or type(failure).__name__})"


def _read_all(handle: int, most: int) -> bytes:
    """Up to `most` bytes from handle, to its end."""
    parts, left = [], most
    while left > 0:
        part = os.read(handle, min(left, 2**24))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def size_text(size: int) -> str:
    """1048576 -> '1 MiB', 1024 -> '1 KiB', 1000 -> '1000 bytes'."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"
