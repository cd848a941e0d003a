"""Hyperparameter search whose every trial is a DVC experiment: an Optuna study in a database.

    python scripts/search.py --space search.yaml --trials 20                  # SQLite: reports/search/study.db
    python scripts/search.py --space search.yaml --trials 60 --storage postgresql://... --remote origin

The search space is a small versioned YAML file (`load_space`): the study's name, one or two
objectives (metrics of reports/metrics.json, e.g. test.kl and test.recon for rate and distortion),
the params to search (a range, optionally on a log scale, or a list of choices) and params fixed in
every trial. Each trial is `dvc exp run --temp -n search-<study>-<n> -S key=value ...`, in a copy of
the workspace, so the workspace stays as it is and several processes can run trials at once; its
objectives are read back from the experiment's committed metrics with DVC's Python API, never from
the stage's output.

The study lives in Optuna's RDB storage, SQLite by default, or any database URL Optuna supports, so
the same command on several machines (each with `--remote`, which pushes every finished trial with
`dvc exp push`) shares one study. It is resumable and honest:
- a trial whose experiment fails is recorded as failed, with the stage's one-line error, and the
  search goes on;
- a trial left running by a process of this machine that no longer exists (Ctrl-C, kill -9) is
  finished on the next run: from its experiment, if DVC ran it to the end, else by running it again
  under the same number and name, so no trial is lost or run twice;
- `--trials N` means the study holds N trials in the end: a rerun with a larger N adds the difference.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

from betavae.core.metrics import BINARIZED_METRICS, METRICS
from betavae.errors import BetaVAEError, one_line, say
from betavae.experiments import table, tools
from betavae.pipeline import overrides, typed, yamlfile
from betavae.pipeline.params import Params, ParamsError

SPACE_KEYS = ("study", "objectives", "params", "fixed", "sampler")
SAMPLERS = ("tpe", "nsga2", "random")
DIRECTIONS = ("minimize", "maximize")
OBJECTIVE_METRICS = tuple(f"test.{name}" for name in METRICS) + tuple(
    f"binarized.{metric.name}" for metric in BINARIZED_METRICS)
EXPERIMENT_PREFIX = "search"


class SearchError(BetaVAEError):
    """A bad search-space file or a study that cannot go on; the message names what is wrong."""


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched param: a range (low, high, log) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    integer: bool = False


@dataclasses.dataclass(frozen=True)
class Space:
    study: str
    objectives: tuple[tuple[str, str], ...]  # (metric, direction)
    dimensions: tuple[Dimension, ...]
    fixed: dict  # dotted param key -> the value every trial runs with
    sampler: str = "tpe"
    seed: int = 0


def load_space(path: str | Path) -> Space:
    """The search space at path, validated; SearchError naming the key otherwise."""
    path = Path(path)
    try:
        raw = yamlfile.read(path)
    except yamlfile.YamlError as error:
        raise SearchError(str(error)) from None
    return parse_space(raw, str(path))


def parse_space(raw: object, source: str = "search space") -> Space:
    if not isinstance(raw, dict):
        raise SearchError(f"{source}: must be a mapping with {', '.join(SPACE_KEYS)}")
    for key in raw:
        if key not in SPACE_KEYS:
            raise SearchError(f"{source}: unknown key {key} (valid keys: {', '.join(SPACE_KEYS)})")
    study = raw.get("study")
    if not isinstance(study, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,60}", study):
        raise SearchError(f"{source}: study must be a name of letters, digits, - and _; got {typed.short(study)}")
    objectives = _objectives(raw.get("objectives"), source)
    try:
        fixed = overrides.fixed_values(raw.get("fixed") or {}, f"{source}: fixed")
    except ParamsError as error:
        raise SearchError(str(error)) from None
    _check_values(fixed, {}, f"{source}: fixed")
    searched = raw.get("params")
    if not isinstance(searched, dict) or not searched:
        raise SearchError(f"{source}: params must map at least one param to its range or choices")
    overlap = sorted(set(map(str, searched)) & set(fixed))
    if overlap:
        raise SearchError(f"{source}: {overlap[0]} is both searched and fixed")
    dimensions = tuple(_dimension(key, spec, fixed, source) for key, spec in searched.items())
    sampler = raw.get("sampler") or {}
    if not isinstance(sampler, dict) or set(sampler) - {"name", "seed"}:
        raise SearchError(f"{source}: sampler must be a mapping of name ({', '.join(SAMPLERS)}) and seed")
    name, seed = sampler.get("name", "tpe"), sampler.get("seed", 0)
    if name not in SAMPLERS:
        raise SearchError(f"{source}: sampler.name must be one of {', '.join(SAMPLERS)}; got {typed.short(name)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SearchError(f"{source}: sampler.seed must be an integer >= 0; got {typed.short(seed)}")
    return Space(study, objectives, dimensions, fixed, name, seed)


def _objectives(raw: object, source: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= 2:
        raise SearchError(f"{source}: objectives must be a list of one or two metrics to minimize or maximize")
    found = []
    for i, objective in enumerate(raw):
        where = f"{source}: objectives[{i}]"
        if not isinstance(objective, dict) or set(objective) != {"metric", "direction"}:
            raise SearchError(f"{where} must be a mapping of metric and direction; got {typed.short(objective)}")
        if objective["metric"] not in OBJECTIVE_METRICS:
            raise SearchError(f"{where}.metric must be one of {', '.join(OBJECTIVE_METRICS)}; "
                              f"got {typed.short(objective['metric'])}")
        if objective["direction"] not in DIRECTIONS:
            raise SearchError(f"{where}.direction must be minimize or maximize; "
                              f"got {typed.short(objective['direction'])}")
        found.append((objective["metric"], objective["direction"]))
    return tuple(found)


def _dimension(key: object, spec: object, fixed: dict, source: str) -> Dimension:
    where = f"{source}: params.{typed.short(key, quote=False)}"
    try:
        key = overrides.check_key(key, f"{source}: params")
    except ParamsError as error:
        raise SearchError(str(error)) from None
    kind = overrides.leaves()[key]
    if not isinstance(spec, dict):
        raise SearchError(f"{where} must be a mapping: low and high (and log), or choices; got {typed.short(spec)}")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise SearchError(f"{where}.choices must be a non-empty list, on its own")
        for value in spec["choices"]:
            _check_values(fixed, {key: value}, where)
        return Dimension(key, choices=tuple(spec["choices"]))
    unknown = set(spec) - {"low", "high", "log"}
    if unknown or not {"low", "high"} <= set(spec):
        raise SearchError(f"{where} must have low and high (and optionally log), or choices; got {sorted(spec)}")
    if kind not in (int, float):
        raise SearchError(f"{where}: a range needs a numeric param ({key} is {kind.__name__}); use choices")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SearchError(f"{where}.{name} must be a number; got {typed.short(value)}")
        if kind is int and not float(value).is_integer():
            raise SearchError(f"{where}.{name} must be an integer, as {key} is; got {typed.short(value)}")
        _check_values(fixed, {key: int(value) if kind is int else float(value)}, f"{where}.{name}")
    if not low < high:
        raise SearchError(f"{where}: low must be < high; got {low} and {high}")
    if not isinstance(log, bool):
        raise SearchError(f"{where}.log must be true or false; got {typed.short(log)}")
    if log and low <= 0:
        raise SearchError(f"{where}: a log scale needs low > 0; got {low}")
    return Dimension(key, float(low), float(high), log, integer=kind is int)


def _check_values(fixed: dict, trial: dict, where: str) -> None:
    """The params a trial would run with must pass params.yaml's own validation."""
    try:
        overrides.run_params(Params().to_dict(), {**fixed, **trial}, source="params")
    except ParamsError as error:
        raise SearchError(f"{where}: {str(error).removeprefix('params: ')}") from None


# --- the study ---------------------------------------------------------------------------------


def experiment_name(space: Space, number: int) -> str:
    return f"{EXPERIMENT_PREFIX}-{space.study}-{number}"


def distributions(space: Space) -> dict:
    import optuna

    found = {}
    for d in space.dimensions:
        if d.choices is not None:
            found[d.key] = optuna.distributions.CategoricalDistribution(d.choices)
        elif d.integer:
            found[d.key] = optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log)
        else:
            found[d.key] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.log)
    return found


def open_study(space: Space, storage: str):
    import optuna

    samplers = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                "random": optuna.samplers.RandomSampler}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [direction for _, direction in space.objectives]
    try:
        study = optuna.create_study(study_name=space.study, storage=storage, load_if_exists=True,
                                    directions=directions)
    except Exception as error:  # a bad URL, an unreachable server, a study of other directions
        raise SearchError(f"cannot open study {space.study!r} in {storage}: {one_line(error)[:300]}") from None
    _check_same_space(study, space)
    # A sampler seeded alike in every process draws the same params again after a restart, and in a
    # second process at once: each process's stream starts from the seed, the trials already in the
    # study and the process id.
    study.sampler = samplers[space.sampler](seed=_process_seed(space.seed, len(study.get_trials(deepcopy=False))))
    return study


def space_description(space: Space) -> str:
    """What a study's trials depend on in its space, as text that compares equal for equal spaces."""
    return json.dumps({"objectives": space.objectives, "dimensions": [dataclasses.asdict(d) for d in space.dimensions],
                       "fixed": space.fixed}, sort_keys=True, default=str)


def _check_same_space(study, space: Space) -> None:
    """A study keeps the space it was made from: its trials' params, objectives and fixed values only
    mean something together. A new study records it; an old one made from another is refused."""
    recorded = study.user_attrs.get("space")
    described = space_description(space)
    if recorded is None:
        if study.get_trials(deepcopy=False):
            raise SearchError(f"study {space.study!r} has trials but no record of its search space (made by an "
                              "older version); give this space a new study name")
        study.set_user_attr("space", described)
    elif recorded != described:
        before, now = json.loads(recorded), json.loads(described)
        changed = ", ".join(key for key in now if before.get(key) != now[key])
        raise SearchError(f"study {space.study!r} was made from another search space ({changed} differ); its "
                          "trials would not compare: restore the space file, or give it a new study name")


def _process_seed(seed: int, taken: int) -> int:
    return (seed * 1_000_003 + taken * 7_919 + os.getpid()) % 2**32


@dataclasses.dataclass
class Runner:
    """Runs trials as DVC experiments in the repository at `repo`."""

    space: Space
    repo: Path
    remote: str | None = None
    log: Callable[[str], None] = say
    environ: dict = dataclasses.field(default_factory=lambda: dict(os.environ))

    def run(self, study, trials: int) -> None:
        self.finish_abandoned(study)
        while _taken(study) < trials:
            trial = study.ask(distributions(self.space))
            trial.set_user_attr("experiment", experiment_name(self.space, trial.number))
            trial.set_user_attr("host", socket.gethostname())
            self._run_or_fail(study, trial)

    def _run_or_fail(self, study, trial) -> None:
        """Run the trial; whatever stops it other than an interruption (which leaves it running for the
        next search on this machine to finish, finish_abandoned) marks it failed with the reason, so
        no trial stays marked running with no process to run it."""
        import optuna

        try:
            self._run(study, trial)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:
            state = next(t.state for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            if state == optuna.trial.TrialState.RUNNING:
                trial.set_user_attr("error", one_line(error)[:500])
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            raise

    def finish_abandoned(self, study) -> None:
        """Trials this machine's processes left running when they died: finish each under its own number."""
        import optuna

        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            attrs = trial.user_attrs
            if not _abandoned(trial):
                continue
            name = attrs.get("experiment", experiment_name(self.space, trial.number))
            values = self._objectives(name)
            if values is not None:
                self.log(f"search: trial {trial.number} ({name}) finished before its process died: recorded")
                study.tell(trial.number, values)
            else:
                self.log(f"search: trial {trial.number} ({name}) was interrupted: running it again")
                self._run_or_fail(study, optuna.trial.Trial(study, trial._trial_id))

    def _run(self, study, trial) -> None:
        """Run trial's experiment and tell the study its objectives, or that it failed, and why."""
        import optuna

        trial.set_user_attr("pid", os.getpid())  # who runs it now: finish_abandoned's test of liveness
        number, params = trial.number, trial.params
        name = experiment_name(self.space, number)
        assignments = {**self.space.fixed, **params}
        command = ["dvc", "exp", "run", "--temp", "-n", name,
                   *(f"-S{key}={_yaml_scalar(value)}" for key, value in assignments.items())]
        self.log(f"search: trial {number} ({name}): " + ", ".join(f"{k}={v}" for k, v in params.items()))
        result = tools.run(command, self.repo, self.environ)
        values = self._objectives(name) if result.returncode == 0 else None
        if values is None:
            error = tools.error_line(result) if result.returncode != 0 else "the experiment has no test metrics"
            trial.set_user_attr("error", error)
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            self.log(f"search: trial {number} failed: {error}")
            return
        study.tell(number, values)
        self.log(f"search: trial {number}: " + ", ".join(f"{metric} {value:.2f}" for (metric, _), value in
                                                         zip(self.space.objectives, values)))
        if self.remote:
            self._push(name)

    def _objectives(self, name: str) -> list[float] | None:
        """The objectives from the experiment's committed metrics, or None if it has none."""
        row = find_experiment(name, self.repo)
        if row is None:
            return None
        values = [row.get(metric) for metric, _ in self.space.objectives]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            return None
        return [float(v) for v in values]

    def _push(self, name: str) -> None:
        result = tools.run(["dvc", "exp", "push", self.remote, name], self.repo, self.environ)
        if result.returncode != 0:
            raise SearchError(f"`dvc exp push {self.remote} {name}` failed: {tools.error_line(result)}; the study "
                              "has the trial, rerun the push by hand")


def find_experiment(name: str, repo: Path | str | None = None, commits: int = 1) -> dict | None:
    """DVC's row (table.exp_show) for the finished experiment of this name on the last `commits`
    commits (1: HEAD's experiments, as a running search makes them), or None."""
    for row in table.exp_show(repo, num=commits):
        if row.get("Experiment") == name and row.get("State") not in ("Failed", "Queued", "Running"):
            return row
    return None


def front(study) -> list:
    """The finished trials, and for two objectives the Pareto front (Optuna's best_trials)."""
    return study.best_trials if len(study.directions) > 1 else [study.best_trial]


def _taken(study) -> int:
    """Trials that count towards --trials: finished, failed, or running somewhere."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


CLAIM_GRACE_S = 60  # a trial asked for but not yet claimed is another process's for this long


def _abandoned(trial) -> bool:
    """Whether a running trial's process is gone: one of this machine's that no longer exists, or
    none at all (killed between asking Optuna for the trial and claiming it) after CLAIM_GRACE_S."""
    import datetime

    attrs = trial.user_attrs
    if "host" not in attrs:
        started = trial.datetime_start or datetime.datetime.now()
        return (datetime.datetime.now() - started).total_seconds() > CLAIM_GRACE_S
    return attrs["host"] == socket.gethostname() and not _alive(attrs.get("pid"))


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _yaml_scalar(value) -> str:
    """A -S value that DVC's override parser reads back as the same value."""
    if isinstance(value, str):
        return "'" + value.replace("'", "") + "'"
    return repr(value) if isinstance(value, float) else str(value)
