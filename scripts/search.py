"""Search hyperparameters with Optuna, every trial a DVC experiment (betavae/experiments/studies.py says how).

    python scripts/search.py --space search.yaml --trials 12
    python scripts/search.py --space search.yaml --trials 40 --storage postgresql://user@host/db --remote origin

The same command on several machines shares one study in a database server (PostgreSQL): every
trial runs once, and the trial of a worker lost mid-trial is run again elsewhere (docs/scaling.md).

Writes, for the study, <reports>/search/<study>_trials.csv (every trial: number, state, params,
objectives, experiment, error) and, for two objectives, the Pareto front as
<reports>/search/<study>_front.csv and <reports>/search/<study>_front.png. --reports is out/ by
default, which git ignores, as is the default storage: the committed study files are only written
with `--reports reports`. `dvc exp show` lists the trials as search-<study>-<n>.
"""

from __future__ import annotations

from pathlib import Path

from betavae import errors
from betavae.errors import ArgumentParser, integer_in, say
from betavae.experiments import studies, tools
from betavae.pipeline import atomic, pictures

MAX_TRIALS = 100_000
MAX_HEARTBEAT_S = 3600
REPORTS = tools.OUT_DIR  # what --reports is unless given
STORAGE = f"sqlite:///{REPORTS / 'search' / 'study.db'}"


def main() -> None:
    errors.run(_main, "search")


def _main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--space", type=Path, required=True, help="the search-space file (YAML)")
    parser.add_argument("--trials", type=integer_in(1, MAX_TRIALS), required=True,
                        help="trials the study holds when this ends")
    parser.add_argument("--storage", default=STORAGE,
                        help="Optuna storage URL (default: %(default)s); one URL for several machines")
    parser.add_argument("--remote", default=None, help="git remote to `dvc exp push` each finished trial to")
    parser.add_argument("--heartbeat", type=integer_in(1, MAX_HEARTBEAT_S), default=studies.HEARTBEAT_S,
                        metavar="SECONDS", help="seconds between a running trial's heartbeats (default: %(default)s); "
                        f"a trial {studies.GRACE_HEARTBEATS} heartbeats late is another machine's lost worker's, and "
                        "is queued again")
    parser.add_argument("--reports", type=Path, default=REPORTS,
                        help="the study's tables and figure go in REPORTS/search/ (default: %(default)s)")
    args = parser.parse_args()
    # Everything the search needs from outside, checked before the first trial (docs/trust.md).
    space = studies.load_space(args.space)
    tools.require_tools("dvc", "git")
    repo = tools.require_repository()
    if args.remote is not None:
        tools.require_git_remote(args.remote, repo)
    tools.require_writable_directory(args.reports / "search")
    if args.storage.startswith("sqlite:///"):
        database = args.storage.removeprefix("sqlite:///")
        if database in ("", ":memory:"):
            raise studies.SearchError(f"--storage {args.storage} names no file: a study is kept in one, so that a "
                                      "second process shares it and a rerun resumes it")
        tools.require_writable_directory(Path(database).parent)
    study = studies.open_study(space, args.storage, args.heartbeat)
    studies.Runner(space, repo, args.remote).run(study, args.trials)
    write_reports(study, space, args.reports)


def write_reports(study, space: studies.Space, reports: Path) -> None:
    keys = [d.key for d in space.dimensions]
    metrics = [metric for metric, _ in space.objectives]
    rows = [_row(trial, keys, metrics) for trial in study.get_trials(deepcopy=False)]
    trials, trials_text = reports / "search" / f"{space.study}_trials.csv", atomic.csv_text(rows)
    finished = [trial for trial in study.get_trials(deepcopy=False) if trial.values is not None]
    if not finished:
        atomic.write_text(trials, trials_text)
        raise studies.SearchError("no trial finished; their errors are in the trials CSV")
    best = studies.front(study)
    with atomic.Together() as outputs:  # the trials, their front and its figure: of one study's state
        outputs.text(trials, trials_text)
        outputs.text(reports / "search" / f"{space.study}_front.csv",
                     atomic.csv_text([_row(trial, keys, metrics) for trial in sorted(best, key=lambda t: t.values)]))
        if len(metrics) == 2:
            path = reports / "search" / f"{space.study}_front.png"
            outputs.bytes(path, pictures.figure_bytes(front_figure(finished, best, metrics, space.study), path))
    say(f"search: {len(finished)} of {len(rows)} trials finished; the front holds {len(best)}")


def _row(trial, keys: list[str], metrics: list[str]) -> dict:
    values = trial.values or [None] * len(metrics)
    return {"number": trial.number, "state": trial.state.name, **{key: trial.params.get(key) for key in keys},
            **dict(zip(metrics, values)), "experiment": trial.user_attrs.get("experiment", ""),
            "error": trial.user_attrs.get("error", "")}


def front_figure(finished: list, best: list, metrics: list[str], title: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), dpi=100)
    axis = figure.subplots()
    axis.scatter([t.values[0] for t in finished], [t.values[1] for t in finished], color="0.7", label="trials")
    ordered = sorted(best, key=lambda t: t.values[0])
    axis.plot([t.values[0] for t in ordered], [t.values[1] for t in ordered], "o-", color="tab:red",
              label="Pareto front")
    for trial in ordered:
        axis.annotate(str(trial.number), (trial.values[0], trial.values[1]), textcoords="offset points", xytext=(5, 4))
    axis.set(title=f"Study {title}: {len(finished)} trials", xlabel=metrics[0], ylabel=metrics[1])
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    main()
