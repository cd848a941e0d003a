"""Record one DVC experiment's params and test metrics in a committed JSON file, from DVC's Python API.

    python scripts/record_experiment.py binarized-beta1 --out reports/binarized_mnist.json \
        --command "dvc exp run -S beta=1.0 -S data.binarize=dynamic -S eval.binarized_samples=5000"

Experiments live in a repository's local refs until pushed; this file is how a clone sees a run
that the README quotes (the binarized-MNIST reference, for one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from betavae import atomic, dotted, errors
from betavae.errors import BetaVAEError
from betavae.params import Params
from betavae.search import find_experiment

METRIC_GROUPS = ("test.", "binarized.")  # reports/metrics.json's groups, as exp_show names them


def record(row: dict, command: str) -> dict:
    """An exp_show row -> {"name", "rev", "params": the params.yaml keys, "metrics", "command"}."""
    params = {key: row[key] for key in dotted.flatten(Params().to_dict()) if key in row}
    metrics = {key: value for key, value in row.items() if key.startswith(METRIC_GROUPS)}
    return {"name": row["Experiment"], "rev": row["rev"], "params": params, "metrics": metrics, "command": command}


def main() -> None:
    errors.run(_main, "record_experiment")


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the experiment's name (dvc exp run -n NAME)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", required=True, help="the command that ran it, recorded beside it")
    parser.add_argument("--commits", type=int, default=20, help="commits back from HEAD to look in (default 20)")
    parser.add_argument("--repo", default=None)
    args = parser.parse_args()
    row = find_experiment(args.name, args.repo, args.commits)
    if row is None:
        raise BetaVAEError(f"no finished experiment named {args.name!r} on the last {args.commits} commits "
                           "(`dvc exp list --all-commits` shows them)")
    atomic.write_json(args.out, record(row, args.command))
    print(f"record_experiment: {args.name} -> {args.out}")


if __name__ == "__main__":
    main()
