"""Compare every experiment of the current commit on the rate–distortion plane.

    python scripts/compare.py          # after a sweep such as `dvc exp run --queue -S beta=0.5,1.0,2.0`

Collects the baseline and its experiments with DVC's Python API (what `dvc exp show` lists),
keeps those with test metrics, and writes
  reports/rate_distortion.csv               one row per run: name, params, test metrics
  reports/figures/rate_distortion.png       KL (rate) against reconstruction (distortion), labelled
                                            by β, beside neg_elbo and nll against β
Only neg_elbo and nll compare across β; `loss` is each run's own β-weighted objective.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker

from betavae import atomic

PARAMS = ("beta", "z_dim", "epochs", "seed")
INTEGER_PARAMS = ("z_dim", "epochs", "seed", "active_units")  # the API's table gives every number as a float
METRICS = ("recon", "kl", "loss", "neg_elbo", "nll", "active_units")
UNFINISHED = ("Failed", "Queued", "Running")


def collect(repo: str | None = None, num: int = 1, epochs: int | None = None) -> list[dict]:
    """One dict per finished run with test metrics (of `epochs` epochs, if given): name, the
    PARAMS and the test METRICS, sorted by β."""
    import dvc.api  # heavy import, and only this entry point needs it

    runs = []
    for row in dvc.api.exp_show(repo=repo, num=num):
        # A failed run can still show the metrics files it found, from an earlier run: skip it.
        if row.get("rev") == "workspace" or row.get("State") in UNFINISHED:
            continue
        run = {key: _number(row.get(key)) for key in PARAMS}
        run.update({key: _number(row.get(f"test.{key}")) for key in METRICS})
        if any(value is None for value in run.values()):  # a commit from before these existed
            continue
        run.update({key: int(run[key]) for key in INTEGER_PARAMS})
        run = {"name": row.get("Experiment") or row.get("rev"), **run}
        if epochs is None or run["epochs"] == epochs:
            runs.append(run)
    return sorted(runs, key=lambda run: (run["beta"], run["name"]))


def _number(value) -> float | None:
    """DVC's table marks a missing or unreadable value with a string such as "!" or "-"."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def to_csv(runs: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["name", *PARAMS, *METRICS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(runs)
    return buffer.getvalue()


def figure(runs: list[dict], title: str):
    fig, (plane, bounds) = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
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
    if len(set(betas)) > 1 and min(betas) > 0:
        bounds.set_xscale("log")
        bounds.set_xticks(sorted(set(betas)), [f"{b:g}" for b in sorted(set(betas))])
        bounds.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    bounds.grid(alpha=0.3)
    bounds.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=None, help="DVC repository (default: the current one)")
    parser.add_argument("--num", type=int, default=1, help="commits back from HEAD to include")
    parser.add_argument("--epochs", type=int, default=None,
                        help="only runs of this many epochs (keep one training budget per figure)")
    parser.add_argument("--csv", type=Path, default=Path("reports/rate_distortion.csv"))
    parser.add_argument("--figure", type=Path, default=Path("reports/figures/rate_distortion.png"))
    parser.add_argument("--title", default="β sweep", help="figure title, e.g. the training budget")
    args = parser.parse_args()
    runs = collect(args.repo, args.num, args.epochs)
    if not runs:
        sys.exit("compare: error: no experiment with test metrics; run `dvc exp run` first")
    atomic.write_text(args.csv, to_csv(runs))
    fig = figure(runs, args.title)
    atomic.write_figure(args.figure, fig)
    plt.close(fig)
    for run in runs:
        print(f"compare: {run['name']}: β={run['beta']:g} recon {run['recon']:.2f} kl {run['kl']:.2f} "
              f"neg_elbo {run['neg_elbo']:.2f} nll {run['nll']:.2f}")
    print(f"compare: {len(runs)} runs -> {args.csv}, {args.figure}")


if __name__ == "__main__":
    main()
