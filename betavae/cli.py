"""What every stage script shares: one clear line and a non-zero exit for expected failures."""

from __future__ import annotations

import sys
from typing import Callable

from betavae.checkpoint import CheckpointError
from betavae.download import DownloadError
from betavae.idx import IdxError
from betavae.params import ParamsError
from betavae.runtime import DeviceError

EXPECTED_ERRORS = (ParamsError, CheckpointError, DownloadError, IdxError, DeviceError)


def run(main: Callable[[], None], stage: str, expected: tuple[type[Exception], ...] = ()) -> None:
    try:
        main()
    except EXPECTED_ERRORS + expected as error:
        sys.exit(f"{stage}: error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"{stage}: interrupted")
