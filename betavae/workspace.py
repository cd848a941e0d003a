"""A guard around DVC's workspace experiments (`dvc exp run` without --queue or --temp).

The trap (DVC 3.67.1, the newest release): a failed `dvc exp run -S key=value` leaves its values in
params.yaml, and git may not show it. To start the run, DVC stashes the workspace, resets it to HEAD
(git's index records the file's size and whole-second mtime) and writes the experiment's params.yaml
back, usually within the same second; DVC's YAML edit preserves the comment column, so the size
often does not change either. git then trusts its index: `git status` calls the file clean and
`git checkout HEAD -- params.yaml` restores nothing. The next `dvc exp run -S other=1` runs with the
stale values, silently.

What the stages do, inside a workspace experiment (DVC sets DVC_EXP_BASELINE_REV, and the stage
runs in the repository itself, DVC_ROOT, not in a queue's copy):
- when a stage fails, it moves params.yaml's mtime past the index's, so git compares contents and
  shows the file modified; it records the values that differ from the baseline commit in
  .dvc/tmp/, and says how to restore the file;
- when a stage starts and params.yaml still holds recorded values that this run's own -S does not
  set (read from the `dvc exp run` command line), it refuses to run: they came from the failed run.
  Restoring params.yaml, or setting those keys again with -S, clears the record.
Outside an experiment, both do nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from betavae import errors
from betavae.params import ParamsError, differing_keys

BASELINE_VARIABLE = "DVC_EXP_BASELINE_REV"  # set by `dvc exp run` for its stages
ROOT_VARIABLE = "DVC_ROOT"  # the repository the experiment belongs to
PARAMS_FILE = "params.yaml"  # the file `dvc exp run -S` edits
RECORD = Path(".dvc") / "tmp" / "betavae-failed-experiment.json"


def run_stage(main: Callable[[], None], name: str) -> None:
    """A stage's entry point: refuse leftovers of a failed experiment, run main, report failures
    in one line (errors.run), and flag what a failure leaves in params.yaml."""
    def guarded() -> None:
        refuse_leftovers()
        main()

    errors.run(guarded, name, on_failure=after_failure)


def refuse_leftovers() -> None:
    root = _experiment_root()
    if root is None or not (root / RECORD).is_file():
        return
    try:
        leftovers = json.loads((root / RECORD).read_text())
        current = _differences(root, leftovers["baseline"])
    except (OSError, subprocess.SubprocessError, yaml.YAMLError, ValueError, KeyError, TypeError):
        return  # unreadable record or params: load_params reports a bad params.yaml
    overridden = _override_keys()
    stale = {key: value for key, value in leftovers["values"].items()
             if current.get(key, _MISSING) == value and (overridden is None or key not in overridden)}
    if not stale or (overridden is None and current == leftovers["values"]):
        (root / RECORD).unlink(missing_ok=True)  # restored, or set again by this run's own -S
        return
    values = ", ".join(f"{key}: {value!r}" for key, value in stale.items())
    raise ParamsError(f"{PARAMS_FILE} still holds {values} from a failed `dvc exp run`, not from this "
                      f"run's -S; restore it with `git checkout HEAD -- {PARAMS_FILE}` and rerun "
                      "(README, When things go wrong)")


def after_failure() -> None:
    root = _experiment_root()
    if root is None:
        return
    try:
        _make_visible_to_git(root / PARAMS_FILE)
        baseline = os.environ[BASELINE_VARIABLE]
        values = _differences(root, baseline)
    except (OSError, subprocess.SubprocessError, yaml.YAMLError, ValueError):
        return  # best effort: the stage's own error is what matters
    if not values:
        return
    (root / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (root / RECORD).write_text(json.dumps({"baseline": baseline, "values": values}, indent=2))
    if os.environ.get(errors.RANK_VARIABLE, "0") == "0":
        print(f"{PARAMS_FILE} keeps this failed experiment's values ({', '.join(values)}); "
              f"`git checkout HEAD -- {PARAMS_FILE}` restores it", file=sys.stderr, flush=True)


_MISSING = object()


def _experiment_root() -> Path | None:
    root = os.environ.get(ROOT_VARIABLE)
    if not os.environ.get(BASELINE_VARIABLE) or not root:
        return None
    root = Path(root).resolve()
    return root if root == Path.cwd().resolve() else None


def _override_keys() -> set[str] | None:
    """The keys this run's `dvc exp run -S key=value` sets, read from the command line of the
    `dvc exp run` process above this stage (/proc, Linux); None where it cannot be read, and then
    only an exact repeat of the failed run's values counts as intended."""
    pid = os.getppid()
    while pid > 1:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if "exp" in words and "run" in words[words.index("exp"):]:
            return {_key(words[i + 1]) for i, word in enumerate(words[:-1]) if word in ("-S", "--set-param")} | \
                   {_key(word.split("=", 1)[1]) for word in words if word.startswith("--set-param=")}
    return None


def _key(assignment: str) -> str:
    """"params.yaml:augment.rotation=10" -> "augment.rotation"."""
    key = assignment.split("=", 1)[0]
    return key.split(":", 1)[1] if ":" in key else key


def _differences(root: Path, baseline: str) -> dict[str, object]:
    """{dotted key: value in params.yaml} for every key whose value differs from the baseline's."""
    committed = subprocess.run(["git", "show", f"{baseline}:{PARAMS_FILE}"], cwd=root, capture_output=True,
                               text=True, check=True).stdout
    before, now = yaml.safe_load(committed) or {}, yaml.safe_load((root / PARAMS_FILE).read_text()) or {}
    return {key: _get(now, key) for key in differing_keys(before, now)}


def _get(tree: dict, dotted: str):
    value = tree
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _make_visible_to_git(path: Path) -> None:
    """Give the file an mtime in a later second than any stat git's index holds for it, so git
    compares its contents instead of trusting size and mtime."""
    time.sleep(1 - time.time() % 1)
    os.utime(path)
