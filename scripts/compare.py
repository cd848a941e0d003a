"""Compare every experiment of the current commit on the rate–distortion plane.

    python scripts/compare.py          # after a sweep such as `dvc exp run --queue -S beta=0.5,1.0,2.0`
    python scripts/compare.py --csv reports/rate_distortion.csv --figure reports/rate_distortion.png
                                       # rewrite the committed sweep report

Collects the baseline and its experiments with DVC's Python API (what `dvc exp show` lists; after
a sweep over several machines, `dvc exp pull origin` first), keeps those with test metrics, and
writes
  --csv        one row per run: name, params, test metrics
  --figure     KL (rate) against reconstruction (distortion), labelled by β; neg_elbo and nll
               against β; and what β does to the latent code: active units and the dimensions
               that hold 90% of the KL
by default in out/, which git ignores: a committed report is only written when named. A figure
compares one training budget: without --epochs, the runs of the length most of them have (the shorter
on a tie) are kept and the others named.
Only neg_elbo and nll compare across β; `loss` is each run's own β-weighted objective.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
from matplotlib.figure import Figure

from betavae import errors
from betavae.core.metrics import METRICS
from betavae.errors import ArgumentParser, BetaVAEError, integer_in, output_file, say
from betavae.experiments import table, tools
from betavae.pipeline import atomic, pictures
from betavae.uses import figures

MAX_COMMITS = 10_000
PARAMS = ("beta", "z_dim", "epochs", "seed")
REQUIRED = ("recon", "kl")  # the rate-distortion plane itself; any other metric an older run lacks stays empty
INTEGERS = ("z_dim", "epochs", "seed", "active_units", "kl_dims_90")  # the API gives every number as a float
UNFINISHED = ("Failed", "Queued", "Running")
CSV = tools.OUT_DIR / "rate_distortion.csv"
FIGURE = tools.OUT_DIR / "rate_distortion.png"


def collect(repo: str | None = None, num: int = 1) -> list[dict]:
    """One dict per finished run with test metrics: name, the PARAMS and the test METRICS, sorted by β."""
    runs = []
    for row in table.exp_show(repo, num=num):
        # A failed run can still show the metrics files it found, from an earlier run: skip it.
        if row.get("rev") == "workspace" or row.get("State") in UNFINISHED:
            continue
        run = {key: _number(row.get(key)) for key in PARAMS}
        run.update({key: _number(row.get(f"test.{key}")) for key in METRICS})
        if any(run[key] is None for key in (*PARAMS, *REQUIRED)):  # a commit from before these existed
            continue
        run.update({key: int(run[key]) for key in INTEGERS if run[key] is not None})
        run = {"name": row.get("Experiment") or row.get("rev"), **run}
        # The same params and metrics at several commits (--num) are one run: keep the newest.
        if not any(_same(run, kept) for kept in runs):
            runs.append(run)
    return sorted(runs, key=lambda run: (run["beta"], run["seed"], run["name"]))


def one_budget(runs: list[dict], epochs: int | None) -> tuple[list[dict], list[dict]]:
    """(the runs of `epochs` epochs, or of the length most runs have, the shorter on a tie; the others)."""
    if epochs is None and runs:
        lengths = [run["epochs"] for run in runs]
        epochs = min(set(lengths), key=lambda length: (-lengths.count(length), length))
    return ([run for run in runs if run["epochs"] == epochs], [run for run in runs if run["epochs"] != epochs])


def _same(run: dict, other: dict) -> bool:
    return all(run[key] == other[key] for key in (*PARAMS, *METRICS))


def _number(value) -> float | None:
    """DVC's table marks a missing or unreadable value with a string such as "!" or "-"."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def to_csv(runs: list[dict]) -> str:
    return atomic.csv_text(runs, ["name", *PARAMS, *METRICS])


def figure(runs: list[dict], title: str) -> Figure:
    fig = Figure(figsize=(17, 5), dpi=100)
    plane, bounds, code = fig.subplots(1, 3)
    rate = [run["kl"] for run in runs]
    distortion = [run["recon"] for run in runs]
    plane.plot(rate, distortion, color="0.7", zorder=1)
    plane.scatter(rate, distortion, c=range(len(runs)), cmap="viridis", s=50, zorder=2)
    for run in runs:
        plane.annotate(f"β={run['beta']:g}", (run["kl"], run["recon"]), textcoords="offset points",
                       xytext=(6, 4))
    plane.set(title="Rate–distortion (test set)", xlabel="rate: KL(q(z|x) ‖ p(z)), nats",
              ylabel="distortion: −log p(x|z), nats")
    plane.grid(alpha=0.3)
    betas = [run["beta"] for run in runs]
    bounds.plot(betas, [run["neg_elbo"] for run in runs], "o-", label="negative ELBO (recon + KL)")
    bounds.plot(betas, [run["nll"] for run in runs], "s-", label="NLL, importance-weighted")
    bounds.set(title="Bounds on −log p(x): comparable across β", xlabel="β", ylabel="nats per image")
    code.plot(betas, [run["active_units"] for run in runs], "o-", label="active units (Var E[z] > 0.01)")
    code.plot(betas, [run["kl_dims_90"] for run in runs], "s-", label="dimensions holding 90% of the KL")
    code.set(title="What β does to the latent code", xlabel="β", ylabel=f"dimensions (of z_dim {runs[0]['z_dim']})")
    code.set_ylim(bottom=0)
    for axis in (bounds, code):
        if len(set(betas)) > 1 and min(betas) > 0:
            axis.set_xscale("log")
            axis.set_xticks(sorted(set(betas)), [f"{b:g}" for b in sorted(set(betas))])
            axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(figures.literal(title))
    fig.tight_layout()
    return fig


def main() -> None:
    errors.run(_main, "compare")


def _figure_file(text: str) -> str:
    """--figure: '' for none, else a file that can be written (pictures.check_name checks its format)."""
    return str(output_file()(text)) if text else text


def _main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default=None, help="DVC repository (default: the current one)")
    parser.add_argument("--num", type=integer_in(1, MAX_COMMITS), default=1, help="commits back from HEAD to include")
    parser.add_argument("--epochs", type=integer_in(1), default=None,
                        help="only runs of this many epochs (keep one training budget per figure)")
    parser.add_argument("--csv", type=output_file(".csv"), default=CSV, help="table to write (default: %(default)s)")
    parser.add_argument("--figure", type=_figure_file, default=str(FIGURE),
                        help="the figure to write; '' for none, e.g. a table of seeds (default: %(default)s)")
    parser.add_argument("--title", default="β sweep", help="figure title, e.g. the training budget")
    args = parser.parse_args()
    tools.require_repository(args.repo)
    if args.figure:
        pictures.check_name(args.figure, "figures")
    runs, other_lengths = one_budget(collect(args.repo, args.num), args.epochs)
    if not runs:
        raise BetaVAEError(f"no experiment of {args.epochs} epochs with test metrics; run `dvc exp run` first")
    if other_lengths:
        names = ", ".join(f"{run['name']} ({run['epochs']})" for run in other_lengths)
        say(f"compare: runs of {runs[0]['epochs']} epochs; left out, of other lengths: {names} (--epochs picks one)")
    written = [args.csv]
    with atomic.Together() as outputs:  # the table and its figure: of the same runs
        outputs.text(args.csv, to_csv(runs))
        if args.figure:
            outputs.bytes(Path(args.figure), pictures.figure_bytes(figure(runs, args.title), args.figure))
            written.append(args.figure)
    for run in runs:
        shown = " ".join(f"{key} {'—' if run[key] is None else format(run[key], '.2f' if key not in INTEGERS else 'd')}"
                         for key in METRICS)
        say(f"compare: {run['name']}: β={run['beta']:g} {shown}")
    say(f"compare: {len(runs)} runs -> {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
