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
- a trial whose worker elsewhere stopped sending heartbeats (Optuna's, every HEARTBEAT_S; a worker
  killed, its machine lost) is failed by the next worker that asks for a trial, and its params are
  queued again as a new trial, which the database gives to one worker only;
- a database that goes away is one line (`storage_writes`); the trial stays running for the rerun;
- `--trials N` means the study holds N trials in the end: a rerun with a larger N adds the difference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import socket
import threading
import time
import warnings
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


HEARTBEAT_S = 60  # seconds between a running trial's heartbeats (search.py --heartbeat)
GRACE_HEARTBEATS = 3  # heartbeats a trial may miss before its worker counts as gone
MAX_RETRIES = 3  # times a trial whose worker was lost is queued again
CONNECT_TIMEOUT_S = 10  # how long a database server may take to answer a new connection


def open_study(space: Space, storage: str, heartbeat_s: int = HEARTBEAT_S):
    """The study in the database at the URL `storage`, made if new. Each running trial's worker records a
    heartbeat every heartbeat_s seconds (Optuna's), so that a worker lost with its machine is noticed by
    the others (Runner)."""
    import optuna

    samplers = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                "random": optuna.samplers.RandomSampler}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [direction for _, direction in space.objectives]
    try:
        with warnings.catch_warnings():  # the heartbeat is an experimental feature of Optuna's, and says so
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            engine = {"pool_pre_ping": True}  # a connection the server dropped (a restart) is made again
            if not storage.startswith("sqlite"):
                engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
            database = optuna.storages.RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                                                  grace_period=GRACE_HEARTBEATS * heartbeat_s,
                                                  heartbeat_stale_trial_callback=_queue_again)
        study = optuna.create_study(study_name=space.study, storage=database, load_if_exists=True,
                                    directions=directions)
    except Exception as error:  # a bad URL, an unreachable server, a study of other directions, a full disk
        raise SearchError(f"cannot open study {space.study!r} in {storage}: {_database_words(error)}") from None
    with storage_writes():
        _check_same_space(study, space)
        # A sampler seeded alike in every process draws the same params again after a restart, and in a
        # second process at once: each process's stream starts from the seed, the trials already in the
        # study and the process id.
        study.sampler = samplers[space.sampler](seed=_process_seed(space.seed, len(study.get_trials(deepcopy=False))))
    return study


@contextlib.contextmanager
def storage_writes():
    """Where the study's database is read and written (Optuna's storage: creating the study, asking for a
    trial, telling its result): one the database refuses (a full disk, a read-only file, a server that
    went away) is a SearchError in one line, never a traceback from inside SQLAlchemy. Nothing recorded
    is lost: each of Optuna's writes is one transaction, whole or not at all."""
    import optuna
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        raise SearchError(f"the study's database refused a write: {_database_words(error)}; it keeps every "
                          "trial recorded before") from None


def _database_words(error: BaseException) -> str:
    """What the database itself said (sqlite's "database or disk is full"), not Optuna's or SQLAlchemy's
    wrapping of it (the statement, a link to their documentation)."""
    if error.__cause__ is not None and type(error).__name__ == "StorageInternalError":
        error = error.__cause__
    error = getattr(error, "orig", None) or error
    return one_line(str(error).split("\n[SQL:")[0])[:300]


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
    trust_heartbeats_from: float | None = None  # time.monotonic() from which others' heartbeats are judged

    def run(self, study, trials: int) -> None:
        with storage_writes():
            self.finish_abandoned(study)
            self.trust_heartbeats_from = time.monotonic() + _grace_s(study)
            while True:
                self._judge_heartbeats(study)
                if _taken(study) >= trials and not _waiting(study):
                    break
                with warnings.catch_warnings():  # Optuna's heartbeat is made for its optimize(); here it is kept
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")  # by _heartbeats
                    trial = study.ask(distributions(self.space))  # a trial queued again first, else a new one
                trial.set_user_attr("experiment", experiment_name(self.space, trial.number))
                trial.set_user_attr("host", socket.gethostname())
                self._run_or_fail(study, trial)

    def _judge_heartbeats(self, study) -> None:
        """Fail the running trials whose worker stopped sending heartbeats (a machine lost, a worker
        killed elsewhere) and queue each again as a new trial (_queue_again); only once this worker has
        itself reached the database for a whole grace period, so that a database that was away (every
        heartbeat late at once) fails no live worker's trial."""
        import optuna

        if self.trust_heartbeats_from is not None and time.monotonic() >= self.trust_heartbeats_from:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)

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
            if not _abandoned(trial) or not _claimed(study, trial):
                continue
            name = attrs.get("experiment", experiment_name(self.space, trial.number))
            values = self._objectives(name)
            if values is not None:
                self.log(f"search: trial {trial.number} ({name}) finished before its process died: recorded")
                study.tell(trial.number, values)
                if self.remote:
                    self._push(name)
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
        with _heartbeats(study, trial, self):
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
    """Trials that count towards --trials: finished, failed (unless queued again), running somewhere, or
    queued again."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried = {number for trial in trials for number in trial.system_attrs.get(RETRIED_ATTR, [])}
    return sum(1 for trial in trials if trial.state != optuna.trial.TrialState.FAIL or trial.number not in retried)


def _waiting(study) -> bool:
    import optuna

    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


RETRIED_ATTR = "retry_history"  # the numbers of the trials a queued-again trial repeats (Optuna's name for it)


def _queue_again(study, trial) -> None:
    """Optuna's callback for a trial failed for its worker's silence: the same params, queued as a new
    trial that the next worker to ask takes (atomically: a queued trial is given to one worker only),
    under its own number and experiment name; at most MAX_RETRIES times."""
    import optuna

    history = [*trial.system_attrs.get(RETRIED_ATTR, []), trial.number]
    host = trial.user_attrs.get("host", "an unknown machine")
    if len(history) > MAX_RETRIES:
        say(f"search: trial {trial.number} ({host}) stopped sending heartbeats, the {len(history)}th of its "
            "params' tries: failed, not queued again")
        return
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, system_attrs={RETRIED_ATTR: history}))
    say(f"search: trial {trial.number} ({trial.user_attrs.get('experiment', '')} on {host}) stopped sending "
        "heartbeats: failed, and its params queued again as a new trial")


def _grace_s(study) -> float:
    grace = getattr(study._storage, "get_heartbeat_interval", lambda: None)()
    return GRACE_HEARTBEATS * grace if grace else 0.0


@contextlib.contextmanager
def _heartbeats(study, trial, runner: Runner):
    """Record the trial's heartbeat now and every heartbeat interval while its experiment runs. A
    heartbeat the database does not take (a server restarting) is not an error here, as the trial goes
    on; the worker only judges others' heartbeats a grace period after its own went through again."""
    interval = getattr(study._storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    study._storage.record_heartbeat(trial._trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                study._storage.record_heartbeat(trial._trial_id)
            except Exception:  # the database is away: the trial's end says so, or tells its result
                runner.trust_heartbeats_from = time.monotonic() + _grace_s(study) + interval

    thread = threading.Thread(target=beat, name="search-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _claimed(study, trial) -> bool:
    """Take over an abandoned trial of this machine: its heartbeat recorded at once, so that no worker
    elsewhere judges it lost while it runs again, and still running once recorded (not failed meanwhile
    by a worker that found it silent)."""
    import optuna

    storage = study._storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)():
        storage.record_heartbeat(trial._trial_id)
    return storage.get_trial(trial._trial_id).state == optuna.trial.TrialState.RUNNING


CLAIM_GRACE_S = 60  # a trial asked for but not yet claimed is another process's for this long


def _abandoned(trial) -> bool:
    """Whether a running trial's process is gone: one of this machine's that no longer exists, or
    none at all (killed between asking Optuna for the trial and claiming it) after CLAIM_GRACE_S."""
    import datetime

    attrs = trial.user_attrs
    if "host" not in attrs:
        started = trial.datetime_start or datetime.datetime.now()
        return (datetime.datetime.now() - started).total_seconds() > CLAIM_GRACE_S
    pid = attrs.get("pid")
    return attrs["host"] == socket.gethostname() and not (isinstance(pid, int) and tools.process_exists(pid))


def _yaml_scalar(value) -> str:
    """A -S value that DVC's override parser reads back as the same value."""
    if isinstance(value, str):
        return "'" + value.replace("'", "") + "'"
    return repr(value) if isinstance(value, float) else str(value)
