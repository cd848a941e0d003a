"""Open the explorer page in headless Chromium: a screenshot for the README and the decode time
per frame.

    python scripts/screenshot_explorer.py --out docs/explorer.png [--frames 200]

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`) and selenium
(requirements-dev.txt). tests/test_explorer.py drives the page through `chromium` and `open_page`.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import threading
from collections.abc import Iterator
from pathlib import Path

from betavae.errors import ArgumentParser, BetaVAEError, integer_in, output_file, run, say
from betavae.pipeline import atomic
from betavae.uses import explorer

PAGE = Path(__file__).resolve().parents[1] / "reports" / "explorer"
WINDOW = (1240, 860)
PAGE_TIMEOUT_S = 120
MAX_FRAMES = 100_000
BROWSERS = ("chromium", "google-chrome")  # Debian's package, or Google's build (GitHub's runners have it)


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, BROWSERS)), None)


def browser_missing() -> str | None:
    """Why Chromium cannot be driven here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    if _browser() is None or shutil.which("chromedriver") is None:
        return "Chromium or chromedriver is not installed (Debian: apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def chromium(*flags: str) -> Iterator[object]:
    """A headless Chromium under selenium, closed afterwards; flags are extra command-line switches."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _browser()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", *flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_script_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def served(directory: Path = PAGE) -> Iterator[str]:
    """The page served on 127.0.0.1 in a thread; yields its address."""
    running = explorer.server(directory, port=0)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    try:
        yield explorer.url(running)
    finally:
        running.shutdown()
        running.server_close()


def open_page(driver, address: str) -> bool:
    """Load the page and wait until it is ready (True) or has said why it cannot run (False)."""
    driver.get(address)
    return driver.execute_async_script("window.explorer.ready.then(arguments[arguments.length - 1])")


def decode_times_ms(driver, frames: int) -> list[float]:
    """Decode-and-draw time of each of `frames` slider settings along a path through latent space."""
    return driver.execute_async_script("""
        const [frames, done] = arguments;
        const z = window.explorer.latent();
        const before = window.explorer.decodeMs().length;
        (async () => {
          for (let frame = 0; frame < frames; frame++) {
            await window.explorer.setLatent(z.map((v, i) => v + Math.sin(frame / 10 + i)));
          }
          done(window.explorer.decodeMs().slice(before));
        })();""", frames)


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=output_file(".png"), required=True, help="screenshot PNG")
    parser.add_argument("--frames", type=integer_in(2, MAX_FRAMES), default=200,
                        help="frames to time, at least 2 for the percentiles (default: %(default)s)")
    args = parser.parse_args()
    missing = browser_missing()
    if missing:
        raise BetaVAEError(missing)
    with served() as address, chromium() as driver:
        if not open_page(driver, address):
            raise BetaVAEError(f"the page did not start: {driver.execute_script('return window.explorer.error')}")
        times = decode_times_ms(driver, args.frames)
        driver.execute_async_script("window.explorer.testDigit().then(arguments[0])")
        atomic.write_bytes(args.out, driver.get_screenshot_as_png())
    say(f"explorer: screenshot written to {args.out}; decode and draw per frame over {len(times)} frames: "
          f"median {statistics.median(times):.2f} ms, 90th percentile "
          f"{statistics.quantiles(times, n=10)[-1]:.2f} ms")


if __name__ == "__main__":
    run(main, "explorer")
