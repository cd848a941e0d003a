"""Time both test tiers and record them in reports/test_times.json, which the README's tests line is
written from (scripts/readme_results.py):

    python benchmarks/test_tiers.py            # make test, then make test-all, here; a few to 20 minutes

Run it on a committed checkout with nothing else running on the machine: the record names the commit
(refused when the working tree has changes to tracked files), the machine (benchmarks/machine.py)
and pytest's own count and wall time of each tier. A tier with a failing test is not recorded; the
failing tests are named. The suite's check that the record counts the tests there are
(tests/test_docs.py) steps aside in the tiers timed here (RECORDING_VARIABLE): the counts this writes
are pytest's count of those very tiers.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

from betavae.errors import ArgumentParser, BetaVAEError, run, say
from betavae.pipeline import atomic

RECORD = Path("reports/test_times.json")
TIERS = {"fast": "test", "full": "test-all"}  # the record's name of each tier, and its make target
# pytest's last line, e.g. "=== 659 passed, 5 skipped, 3 deselected in 126.21s (0:02:06) ==="
SUMMARY = re.compile(r"(?P<counts>(?:\d+ \w+(?:, )?)+) in (?P<seconds>[\d.]+)s")
RECORDING_VARIABLE = "BETAVAE_RECORDING_TEST_TIMES"  # set in the tiers this times


class TimingError(BetaVAEError):
    """A tier failed, or its summary could not be read."""


def summary(output: str) -> dict:
    """{"tests": tests that ran (passed, failed or skipped), "seconds": pytest's wall time} from its output."""
    found = ([None, *SUMMARY.finditer(output)])[-1]  # the last summary: pytest's own, after any other output
    if found is None:
        raise TimingError("pytest printed no summary line")
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", found["counts"])}
    if counts.get("failed") or counts.get("errors") or counts.get("error"):
        failing = re.findall(r"(?m)^(?:FAILED|ERROR) (\S+)", output)  # pytest's short summary
        named = f" ({', '.join(failing[:5])}{', ...' if len(failing) > 5 else ''})" if failing else ""
        raise TimingError(f"the tier did not pass: {found['counts']}{named}")
    ran = sum(counts.get(kind, 0) for kind in ("passed", "skipped", "xfailed", "xpassed"))
    return {"seconds": round(float(found["seconds"])), "tests": ran}


def machine_text(machine: dict) -> str:
    """"the 2-core AMD EPYC (family 25 model 1, AVX2) machine": what the README says the tiers ran on."""
    isa = ("AMX" if machine.get("amx") else "AVX-512 BF16" if machine.get("avx512_bf16")
           else "AVX-512" if machine.get("avx512") else "AVX2" if "avx2" in machine.get("isa", []) else "no AVX2")
    name = machine.get("cpu", "unknown CPU").replace("(R)", "").replace(" Processor", "").strip()
    return (f"the {machine.get('cpu_count', '?')}-core {name} machine (family {machine.get('cpu_family')} "
            f"model {machine.get('cpu_model')}, {isa})")


def _main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RECORD, help="the record to write (default: %(default)s)")
    args = parser.parse_args()
    if subprocess.run(["git", "diff", "--quiet", "HEAD"]).returncode != 0:
        raise TimingError("the working tree has changes to tracked files: time a committed checkout")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    from machine import describe  # benchmarks/machine.py, beside this script

    record = {"commit": commit}
    for name, target in TIERS.items():
        say(f"test_tiers: make {target} ...")
        ended = subprocess.run(["make", target], capture_output=True, text=True,
                               env={**os.environ, RECORDING_VARIABLE: "1"})
        record[name] = summary(ended.stdout + ended.stderr)
        say(f"test_tiers: {name}: {record[name]['tests']} tests in {record[name]['seconds']} s")
    record["how"] = "make test, then make test-all (a pytest-xdist worker per core), in a checkout of the commit; " \
                    "pytest's own count and wall time"
    record["machine"] = machine_text(describe())
    atomic.write_json(args.out, record)
    say(f"test_tiers: written to {args.out}; `python scripts/readme_results.py` puts it in the README")


def main() -> None:
    run(_main, "test_tiers")


if __name__ == "__main__":
    main()
