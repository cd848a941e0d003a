"""Fill the README's results table from reports/metrics.json (run by `make repro`).

The table sits between the markers below; everything else in the README is left alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from betavae import atomic

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
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


def table(metrics: dict) -> str:
    lines = ["| Test-set metric (nats per image) | Spec | This repo | Note |", "|---|---:|---:|---|"]
    for key, label, spec, note in ROWS:
        ours = metrics[key]
        ours = f"{ours:.2f}" if isinstance(ours, float) else str(ours)
        lines.append(f"| {label} | {'—' if spec is None else f'{spec:.2f}'} | {ours} | {note} |")
    return "\n".join(lines)


def fill(readme: str, metrics: dict) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError(f"README must hold exactly one {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table(metrics)}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--readme", type=Path, required=True)
    args = parser.parse_args()
    metrics = json.loads(args.metrics.read_text())["test"]
    atomic.write_text(args.readme, fill(args.readme.read_text(), metrics))
    print(f"readme: results table in {args.readme} updated from {args.metrics}")


if __name__ == "__main__":
    main()
