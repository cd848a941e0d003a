"""Guards around DVC's workspace experiments (`dvc exp run` without --queue or --temp), which share
one params.yaml.

Trap 1 (DVC 3.67.1): a failed `dvc exp run -S key=value` leaves its values in params.yaml, and git
may not show it. To start the run, DVC stashes the workspace, resets it to HEAD (git's index records
the file's size and whole-second mtime) and writes the experiment's params.yaml back, usually within
the same second; DVC's YAML edit preserves the comment column, so the size often does not change
either. git then trusts its index: `git status` calls the file clean and `git checkout HEAD --
params.yaml` restores nothing. The next `dvc exp run -S other=1` runs with the stale values.

Trap 2: two `dvc exp run` at once in one workspace. The second writes its -S values into
params.yaml before DVC's lock refuses it, so the first may read, or later find, the second's values.

What the stages do inside a workspace experiment (DVC sets DVC_EXP_BASELINE_REV, and the stage runs
in the repository itself, DVC_ROOT, not in a queue's copy):
- at the start, every value this run's own `-S` sets (read from the command line of the `dvc exp
  run` above the stage) must be what params.yaml holds: otherwise another run wrote the file, and
  the stage refuses to start;
- at the start, params.yaml must not hold values recorded from a failed run that this run's `-S`
  does not set again;
- when a stage fails, it moves params.yaml's mtime past the index's, so git compares contents and
  shows the file modified; it records in .dvc/tmp/ the values this run's -S left there (values the
  workspace held before the run, `make smoke`'s say, are the user's own and stay), and says how to
  restore the file;
- while a stage runs, `Watch` notices params.yaml changing under it.
Outside an experiment, all of these do nothing but `Watch`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from betavae import errors
from betavae.pipeline import atomic, dotted, yamlfile
from betavae.pipeline.params import PARAMS_FILE, Params, ParamsError, load_params

BASELINE_VARIABLE = "DVC_EXP_BASELINE_REV"  # set by `dvc exp run` for its stages
ROOT_VARIABLE = "DVC_ROOT"  # the repository the experiment belongs to
RECORD = Path(".dvc") / "tmp" / "betavae-failed-experiment.json"
RESTORE = f"`git checkout HEAD -- {PARAMS_FILE}`"
SIDE_BY_SIDE = ("run experiments side by side with `dvc exp run --queue` and `dvc queue start`, restore "
                f"{PARAMS_FILE} with {RESTORE} (docs/troubleshooting.md), then rerun")


def run_stage(main: Callable[[], None], name: str) -> None:
    """A stage's entry point: refuse a params.yaml that is not this experiment's, run main, report
    failures in one line (errors.run), and flag what a failure leaves in params.yaml."""
    def guarded() -> None:
        refuse_other_values()
        refuse_leftovers()
        main()

    errors.run(guarded, name, on_failure=after_failure)


def refuse_other_values() -> None:
    """Every key this run's `dvc exp run -S` sets must hold that value in params.yaml."""
    root = _experiment_root()
    overrides = _overrides() if root is not None else None
    if not overrides:
        return
    try:
        now = yamlfile.read(root / PARAMS_FILE)
    except yamlfile.YamlError:
        return  # load_params reports a bad params.yaml
    if not isinstance(now, dict):
        return
    for key, text in overrides.items():
        wanted, found = _scalar(text), dotted.get(now, key)
        if wanted is not dotted.MISSING and not _same(wanted, found):
            shown = "no value" if found is dotted.MISSING else f"{key}: {found!r}"
            raise ParamsError(f"{PARAMS_FILE} holds {shown}, but this `dvc exp run` set {key}={text}: another "
                              f"`dvc exp run` in this workspace wrote it; nothing was run. {SIDE_BY_SIDE}")


def refuse_leftovers() -> None:
    root = _experiment_root()
    if root is None or not (root / RECORD).is_file():
        return
    try:
        leftovers = json.loads((root / RECORD).read_text())
        current = _differences(root, leftovers["baseline"])
    except (OSError, subprocess.SubprocessError, ParamsError, ValueError, KeyError, TypeError):
        return  # unreadable record or params: load_params reports a bad params.yaml
    overrides = _overrides()
    stale = {key: value for key, value in leftovers["values"].items()
             if current.get(key, dotted.MISSING) == value and (overrides is None or key not in overrides)}
    if not stale or (overrides is None and current == leftovers["values"]):
        (root / RECORD).unlink(missing_ok=True)  # restored, or set again by this run's own -S
        return
    values = ", ".join(f"{key}: {value!r}" for key, value in stale.items())
    undo = " ".join(_setting_back(key, leftovers["baseline"], root) for key in stale)
    raise ParamsError(f"{PARAMS_FILE} still holds {values} from a failed `dvc exp run`, not from this "
                      f"run's -S: set it again in this run ({undo} is HEAD's), or restore the file with "
                      f"{RESTORE} and rerun (docs/troubleshooting.md)")


def _setting_back(key: str, baseline: str, root: Path) -> str:
    """The -S that gives key its baseline value back (or removes a key the baseline lacks)."""
    try:
        value = dotted.get(_committed(root, baseline), key)
    except (OSError, subprocess.SubprocessError, ParamsError, ValueError):
        value = dotted.MISSING
    if value is dotted.MISSING:
        return f"-S '~{key}'"
    text = value if isinstance(value, str) and _scalar(value) == value else json.dumps(value, separators=(",", ":"))
    return f"-S {shlex.quote(f'{key}={text}')}"


def after_failure() -> None:
    root = _experiment_root()
    if root is None:
        return
    try:
        _make_visible_to_git(root / PARAMS_FILE)
        baseline = os.environ[BASELINE_VARIABLE]
        values = _differences(root, baseline)
    except (OSError, subprocess.SubprocessError, ParamsError, ValueError, KeyError):
        return  # best effort: the stage's own error is what matters
    touched = _touched_keys()
    if touched is not None:  # what the workspace held before this run is the user's, visible to git
        values = {key: value for key, value in values.items()
                  if any(key == set_key or key.startswith(set_key + ".") for set_key in touched)}
    if not values:
        return
    try:
        atomic.write_json(root / RECORD, {"baseline": baseline, "values": values})
    except OSError:
        return  # a full disk: the stage's own error is what matters
    errors.tell(f"{PARAMS_FILE} keeps this failed experiment's values ({', '.join(values)}); {RESTORE} restores it")


def rerun_command() -> str:
    """The command that started this stage, to repeat it: the `dvc exp run ...` or `dvc repro ...`
    above it, or the stage's own command line where DVC did not start it."""
    words = _dvc_command()
    if words is None:
        words = ["python", "-m", Path(sys.argv[0]).parent.name + "." + Path(sys.argv[0]).stem, *sys.argv[1:]]
    return shlex.join(words)


class Watch:
    """Notices when params.yaml changes under a running stage (a second `dvc exp run -S`, started
    while one trains, writes its values before DVC's lock refuses it)."""

    QUIET_S = 1.0  # how long the file must stay the same before it is described
    POLL_S = 0.1
    LIMIT_S = 10.0  # described as it is after this long, settled or not

    def __init__(self, path: str | Path, params: Params, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.path, self.params = Path(path), params
        self.digest = _digest(self.path)
        self.clock, self.sleep = clock, sleep

    def check(self) -> None:
        if _digest(self.path) == self.digest:
            return
        # DVC rewrites params.yaml several times per `exp run` (stash, apply, reset, unstash): describe
        # the file once it has stayed the same for a while, and carry on if it came back unchanged.
        if self._settled() == self.digest:
            return
        try:
            now, before = load_params(self.path).to_dict(), self.params.to_dict()
            changed = ", ".join(f"{key} {dotted.get(before, key)!r} -> {dotted.get(now, key)!r}"
                                for key in dotted.differing(before, now)) or "comments only"
        except ParamsError as error:
            changed = f"now invalid: {error}"
        raise ParamsError(f"{self.path} changed while this stage ran ({changed}); nothing more is written. "
                          f"Another `dvc exp run` in this workspace probably wrote it: {SIDE_BY_SIDE}")

    def _settled(self) -> str | None:
        """The file's digest once it has not changed for QUIET_S (or after LIMIT_S)."""
        digest, unchanged_since = _digest(self.path), self.clock()
        deadline = unchanged_since + self.LIMIT_S
        while self.clock() - unchanged_since < self.QUIET_S and self.clock() < deadline:
            self.sleep(self.POLL_S)
            current = _digest(self.path)
            if current != digest:
                digest, unchanged_since = current, self.clock()
        return digest


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _experiment_root() -> Path | None:
    root = os.environ.get(ROOT_VARIABLE)
    if not os.environ.get(BASELINE_VARIABLE) or not root:
        return None
    root = Path(root).resolve()
    return root if root == Path.cwd().resolve() else None


def _dvc_command() -> list[str] | None:
    """The command line of the nearest `dvc` process above this one, from `dvc` on (/proc, Linux)."""
    pid = os.getppid()
    while pid > 1:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            return None
        for i, word in enumerate(words[:2]):
            if Path(word).name == "dvc":
                return ["dvc", *words[i + 1:]]
    return None


def _assignments() -> list[str] | None:
    """This run's `dvc exp run -S` assignments as typed; None where the command line cannot be read
    or the stage was not started by `dvc exp run`."""
    words = _dvc_command()
    if words is None or words[1:3] != ["exp", "run"]:
        return None
    assignments = []
    for i, word in enumerate(words):
        if word in ("-S", "--set-param") and i + 1 < len(words):
            assignments.append(words[i + 1])
        elif word.startswith("--set-param="):
            assignments.append(word.split("=", 1)[1])
        elif word.startswith("-S") and len(word) > 2:
            assignments.append(word[2:])
    return assignments


def _assigned_key(assignment: str) -> tuple[str, str | None]:
    """("augment.rotation", "5") from "params.yaml:augment.rotation=5"; "+key=1" and "~key" keep
    their mark; the value is None where there is none."""
    key, has_value, value = assignment.partition("=")
    key = key.split(":", 1)[1] if ":" in key else key
    return key, value if has_value else None


def _overrides() -> dict[str, str] | None:
    """{key: value text} that this run's `dvc exp run -S key=value` sets; None where the command
    line cannot be read or the stage was not started by `dvc exp run`."""
    assignments = _assignments()
    if assignments is None:
        return None
    found = {}
    for key, value in map(_assigned_key, assignments):
        if value is not None and key and key[0] not in "+~":
            found[key] = value
    return found


def _touched_keys() -> set[str] | None:
    """Every key this run's -S sets, adds (+key) or removes (~key); None as for _overrides."""
    assignments = _assignments()
    if assignments is None:
        return None
    return {key.lstrip("+~") for key, _ in map(_assigned_key, assignments) if key.lstrip("+~")}


def _scalar(text: str) -> object:
    """A -S value as YAML 1.2 reads it; MISSING for anything but a plain scalar (a sweep, a list)."""
    try:
        value = yamlfile.parse(text, "-S")
    except yamlfile.YamlError:
        return dotted.MISSING
    return value if isinstance(value, (str, int, float, bool)) or value is None else dotted.MISSING


def _same(wanted: object, found: object) -> bool:
    if isinstance(wanted, bool) or isinstance(found, bool):
        return wanted is found
    if isinstance(wanted, (int, float)) and isinstance(found, (int, float)):
        return float(wanted) == float(found)
    return wanted == found or str(wanted) == str(found)


def _committed(root: Path, baseline: str) -> dict:
    """params.yaml as the baseline commit holds it."""
    committed = subprocess.run(["git", "show", f"{baseline}:{PARAMS_FILE}"], cwd=root, capture_output=True,
                               text=True, check=True).stdout
    return yamlfile.parse(committed, f"{baseline}:{PARAMS_FILE}") or {}


def _differences(root: Path, baseline: str) -> dict[str, object]:
    """{dotted key: value in params.yaml} for every key whose value differs from the baseline's."""
    before, now = _committed(root, baseline), yamlfile.read(root / PARAMS_FILE) or {}
    return {key: dotted.get(now, key, None) for key in dotted.differing(before, now)}


def _make_visible_to_git(path: Path) -> None:
    """Give the file an mtime in a later second than any stat git's index holds for it, so git
    compares its contents instead of trusting size and mtime."""
    time.sleep(1 - time.time() % 1)
    os.utime(path)
