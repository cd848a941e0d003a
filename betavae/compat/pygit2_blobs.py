"""A guard on pygit2's blob reader (pygit2 1.21.0, the version requirements.txt pins; tests/test_experiments.py
drives both of its endless waits), which DVC's experiments table reads every committed file through.

DVC reads every file of a git revision (an experiment's metrics and params) through scmrepo, which
streams it with pygit2's BlobIO: a writer thread puts chunks on a one-slot queue and sets an event,
and the reader waits on that event. pygit2's reader (`_BlobIO`, up to 1.21.0, the newest release)
waits forever in two cases:
- the writer fails: it raises in its thread (seen: `NotFoundError: object not found`, when another
  search process's temporary experiment, which exp_show lists as running, went away during the
  read) and never signals, so readinto, then close, wait on an event nobody will set. A search
  process in a test hung so for 11 minutes, until it was killed;
- a lost wake-up: readinto finds the queue empty, then clears the event, and a chunk or the end
  that the writer signals between the two is lost (the writer, its slot full, then waits too).
pygit2's fix of the same class (PR 1491) made close() drain the queue; it covers neither case.
`guard_blob_reader` gives the reader a wait that looks, besides the event, at the queue, the end and
the writer's thread, so a lost signal costs at most one look, then asks DVC: a failed writer becomes
an OSError for that one file, which DVC records as that file's error, and the table comes back.
"""

from __future__ import annotations

WRITER_POLL_S = 0.1  # how often a waiting reader looks at the queue, the end and the writer's thread


class BlobWriterFailed(OSError):
    """pygit2's writer thread ended before the blob did: the git object could not be read."""


def guard_blob_reader() -> None:
    """Give pygit2's blob reader the guarded wait (idempotent, this process only)."""
    from pygit2 import blob

    blob._BlobIO.readinto = _readinto
    blob._BlobIO.close = _close


def _wait(reader) -> None:
    """Until the writer signals, or its state shows a signal was lost or will never come."""
    while not reader._ready.wait(WRITER_POLL_S):
        if not reader._queue.empty() or reader._writer_closed.is_set() or not reader._thread.is_alive():
            return


def _readinto(self, buffer, /) -> int:
    """The bytes of the next chunk into buffer, 0 at the end of the blob."""
    while self._chunk is None:
        _wait(self)
        if self._queue.empty():
            if self._writer_closed.is_set():
                return 0
            if not self._thread.is_alive():
                raise BlobWriterFailed("pygit2's blob writer failed before the end of the blob")
            self._ready.clear()  # a signal this clear erases is seen by _wait's look at the queue and the end
            continue
        self._chunk = self._queue.get() or None
    size = min(len(self._chunk), len(buffer))
    buffer[:size] = self._chunk[:size]
    self._chunk = self._chunk[size:] or None
    return size


def _close(self) -> None:
    """Let the writer finish (a chunk left unread would block it on the full queue), then join it."""
    while self._queue is not None:
        _wait(self)
        while not self._queue.empty():
            self._queue.get()
        if self._writer_closed.is_set() or not self._thread.is_alive():
            break
        self._ready.clear()
    self._thread.join()
    self._queue = None
