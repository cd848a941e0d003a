"""Fill the README's result tables from the committed files (run by `make repro`):

    results   reports/metrics.json       the reference run against the spec
    seed      reports/seeds.csv          runs that differ only in the seed (scripts/compare.py --csv)
    sweep     reports/rate_distortion.csv  the β sweep (scripts/compare.py)

Each table sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; everything else in the README is
left alone. tests/test_readme.py checks that the committed README holds exactly these tables.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from betavae import atomic

# (metric key, label, the write-up's value or None, what it means); "\\|" keeps a bar inside a table cell
ROWS = (
    ("recon", "Reconstruction −log p(x\\|z)", 71.16, "lower is better"),
    ("kl", "KL(q(z\\|x) ‖ p(z))", 29.79, "the rate, in nats"),
    ("loss", "Loss recon + β·KL (the spec's \"total\")", 95.00, "depends on β"),
    ("neg_elbo", "Negative ELBO recon + KL", 100.95, "the spec's is implied: 71.16 + 29.79"),
    ("nll", "NLL, importance-weighted", None, "comparable across β"),
    ("active_units", "Active units (of z_dim)", None, "Var(E[z]) > 0.01"),
    ("kl_dims_90", "Dimensions holding 90% of the KL", None, "the code's effective size"),
)
RUN_COLUMNS = ("recon", "kl", "loss", "neg_elbo", "nll", "active_units", "kl_dims_90")
RUN_HEADER = "recon | KL | loss | neg_elbo | NLL | active units | dims for 90% of KL"


def results_table(metrics: dict) -> str:
    lines = ["| Test-set metric (nats per image) | Spec | This repo | Note |", "|---|---:|---:|---|"]
    for key, label, spec, note in ROWS:
        lines.append(f"| {label} | {'—' if spec is None else f'{spec:.2f}'} | {_cell(metrics[key])} | {note} |")
    return "\n".join(lines)


def seed_table(runs: list[dict]) -> str:
    """Runs that differ only in their seed, and the spread of each metric across them."""
    lines = [f"| Seed | {RUN_HEADER} |", "|---:|" + "---:|" * len(RUN_COLUMNS)]
    for run in sorted(runs, key=lambda run: int(run["seed"])):
        lines.append(f"| {run['seed']} | " + " | ".join(_cell(run[key]) for key in RUN_COLUMNS) + " |")
    spread = [max(float(run[key]) for run in runs) - min(float(run[key]) for run in runs) for key in RUN_COLUMNS]
    lines.append("| spread (max − min) | " + " | ".join(f"{value:.2f}" for value in spread[:5]) + " | | |")
    return "\n".join(lines)


def sweep_table(runs: list[dict]) -> str:
    lines = ["| β | " + RUN_HEADER.replace("loss", "loss (own β)") + " |", "|---:|" + "---:|" * len(RUN_COLUMNS)]
    for run in sorted(runs, key=lambda run: float(run["beta"])):
        lines.append(f"| {float(run['beta']):g} | " + " | ".join(_cell(run[key]) for key in RUN_COLUMNS) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() and "." not in str(value) else f"{number:.2f}"


def fill(readme: str, name: str, table: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if readme.count(begin) != 1 or readme.count(end) != 1:
        raise ValueError(f"README must hold exactly one {begin} ... {end} block")
    head, rest = readme.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def tables(metrics: Path, seeds: Path, sweep: Path) -> dict[str, str]:
    """Block name -> table, for each of the files that exists."""
    found = {}
    if metrics.exists():
        found["results"] = results_table(json.loads(metrics.read_text())["test"])
    if seeds.exists():
        found["seed"] = seed_table(list(csv.DictReader(seeds.open())))
    if sweep.exists():
        found["sweep"] = sweep_table(list(csv.DictReader(sweep.open())))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    parser.add_argument("--seeds", type=Path, default=Path("reports/seeds.csv"))
    parser.add_argument("--sweep", type=Path, default=Path("reports/rate_distortion.csv"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args()
    readme = args.readme.read_text()
    filled = tables(args.metrics, args.seeds, args.sweep)
    for name, table in filled.items():
        readme = fill(readme, name, table)
    atomic.write_text(args.readme, readme)
    print(f"readme: {', '.join(filled)} tables in {args.readme} filled from the committed files")


if __name__ == "__main__":
    main()
