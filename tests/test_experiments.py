"""betavae/compat/pygit2_blobs.py: DVC's experiments table read without pygit2's endless waits; and
betavae/experiments/table.py, the one reader of the table.

Each read runs in a thread joined with a deadline, so a reader that waits forever fails the test
instead of hanging it. The failed writer is real (a blob whose git object is gone, as when another
process's temporary experiment is removed during exp_show); the lost wake-up is driven by hand: a
writer that signals exactly between the reader's look at the queue and its clearing of the event.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import pygit2
import pytest
from pygit2 import blob

from betavae.compat import pygit2_blobs
from betavae.experiments import table

DEADLINE_S = 60


def _read_with_deadline(read):
    result = {}

    def reader() -> None:
        try:
            result["value"] = read()
        except Exception as error:  # handed to the test
            result["error"] = error

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "the reader waits forever"
    if "error" in result:
        raise result["error"]
    return result["value"]


def _repository_with_blob(directory: Path, data: bytes):
    repo = pygit2.init_repository(str(directory), bare=True)
    return repo, repo.create_blob(data)


def test_a_blob_read_through_the_guarded_reader_is_whole(tmp_path):
    pygit2_blobs.guard_blob_reader()
    data = os.urandom(3 * 1024 * 1024 + 17)  # many of the writer's chunks, the last one short
    repo, oid = _repository_with_blob(tmp_path, data)

    def read() -> bytes:
        with pygit2.BlobIO(repo[oid]) as stream:
            return stream.read()

    assert _read_with_deadline(read) == data


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's, expected
def test_a_blob_whose_git_object_is_gone_fails_its_read_instead_of_waiting_forever(tmp_path):
    pygit2_blobs.guard_blob_reader()
    repo, oid = _repository_with_blob(tmp_path, b"{\"test\": {\"kl\": 25.0}}\n" * 1000)
    found = repo[oid]
    (tmp_path / "objects" / str(oid)[:2] / str(oid)[2:]).unlink()

    def read() -> bytes:
        with pygit2.BlobIO(found) as stream:
            return stream.read()

    with pytest.raises(pygit2_blobs.BlobWriterFailed, match="writer failed before the end of the blob"):
        _read_with_deadline(read)


class SignalsAfterTheLook(threading.Event):
    """The writer's 'closed' event: the first time the reader finds it unset, the writer acts."""

    def __init__(self, action):
        super().__init__()
        self.action = action

    def is_set(self) -> bool:
        seen = super().is_set()
        if not seen and self.action is not None:
            action, self.action = self.action, None
            action()
        return seen


class HandDrivenReader(blob._BlobIO):
    """pygit2's reader (its methods, as guarded) over a queue, events and a writer the test drives."""

    def __init__(self, writer_action, writer: threading.Thread):
        self._queue = queue.Queue(maxsize=1)
        self._ready = threading.Event()
        self._writer_closed = SignalsAfterTheLook(lambda: writer_action(self))
        self._chunk = None
        self._thread = writer
        self._ready.set()  # left set by the chunk before: the reader finds the queue empty


def _puts_a_chunk(reader) -> None:
    reader._queue.put(b"metrics")
    reader._ready.set()


def _closes(reader) -> None:
    threading.Event.set(reader._writer_closed)
    reader._ready.set()


@pytest.mark.parametrize("writer_action, expected", [(_puts_a_chunk, b"metrics"), (_closes, b"")],
                         ids=["a chunk", "the end"])
def test_a_signal_sent_between_the_readers_look_and_its_clear_is_not_lost(writer_action, expected):
    pygit2_blobs.guard_blob_reader()
    writer_done = threading.Event()
    writer = threading.Thread(target=writer_done.wait, daemon=True)  # a writer still running
    writer.start()
    reader = HandDrivenReader(writer_action, writer)
    buffer = bytearray(64)
    try:
        size = _read_with_deadline(lambda: reader.readinto(buffer))
    finally:
        writer_done.set()
        writer.join()
    assert bytes(buffer[:size]) == expected


def test_a_directory_that_is_not_a_dvc_repository_is_one_line(tmp_path):
    with pytest.raises(table.TableError, match=f"cannot list the experiments of {tmp_path}"):
        table.exp_show(tmp_path)
