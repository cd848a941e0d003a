"""DVC's experiments table read in this process (dvc.api.exp_show): the one reader of it, for the
search (betavae/experiments/studies.py), scripts/compare.py and scripts/record_experiment.py.

It reads through pygit2's blob reader with the guard of betavae/compat/pygit2_blobs.py (without
it, a file that goes away mid-read hangs the reader forever), and a repository DVC cannot read (not
a DVC repository, a damaged git directory) is one TableError line, not a traceback.
"""

from __future__ import annotations

from pathlib import Path

from betavae.compat.pygit2_blobs import guard_blob_reader
from betavae.errors import BetaVAEError, one_line


class TableError(BetaVAEError, RuntimeError):
    """DVC could not list the experiments of a repository; the message says why."""


def exp_show(repo: Path | str | None = None, num: int = 1) -> list[dict]:
    """dvc.api.exp_show's rows: the workspace, the last `num` commits and their experiments."""
    import dvc.api  # heavy; only the entry points that list experiments need it

    guard_blob_reader()
    try:
        return dvc.api.exp_show(repo=None if repo is None else str(repo), num=num)
    except Exception as error:  # DVC's and scmrepo's errors (not a repository, a bad revision) have no common base
        where = repo or Path.cwd()
        raise TableError(f"cannot list the experiments of {where}: {type(error).__name__}: "
                         f"{one_line(error)[:300]}") from None
