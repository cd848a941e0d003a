"""Expected, user-facing failures, and how every entry point reports them.

A failure the user can fix (bad params, a missing or damaged file, an unwritable output, an unusable
device) is a `BetaVAEError` whose message is one line naming what is wrong. Entry points (the stage
scripts and the `betavae` command) print it as `<name>: error: <message>` and exit 1, without a
traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# torchrun gives each process its rank here; only rank 0 speaks, so a message is printed once.
RANK_VARIABLE = "RANK"


class BetaVAEError(Exception):
    """An expected failure; str(error) is what the user sees."""


def is_main_process() -> bool:
    """Whether this is process 0 of a data-parallel run, or the only process."""
    return os.environ.get(RANK_VARIABLE, "0") == "0"


def tell(message: str, stream=None) -> None:
    """Print message from process 0 only (stderr unless stream is given), at once."""
    if is_main_process():
        print(message, file=stream or sys.stderr, flush=True)


def line(name: str, error: BaseException | str) -> str:
    """The one format of every expected failure: `<name>: error: <message on one line>`."""
    return f"{name}: error: {one_line(error)}"


def one_line(error: BaseException | str) -> str:
    """Any message, folded onto one line."""
    return " ".join(str(error).split())


def run(main: Callable[[], None], name: str, on_failure: Callable[[], None] | None = None) -> None:
    """Call main(); an expected error becomes one line and exit status 1, Ctrl-C exit status 130.

    on_failure runs after either, before the exit (the stages use it to flag params that a failed
    `dvc exp run` leaves behind, betavae/compat/dvc_workspace.py)."""
    try:
        main()
    except BetaVAEError as error:
        _exit(line(name, error), 1, on_failure)
    except KeyboardInterrupt:
        _exit(f"{name}: interrupted", 130, on_failure)


def _exit(message: str, status: int, on_failure: Callable[[], None] | None) -> None:
    if on_failure is not None:
        on_failure()
    tell(message)
    raise SystemExit(status)
