"""Record one DVC experiment's params and metrics in a committed JSON file, from DVC's Python API.

    python scripts/record_experiment.py binarized-beta1 --out reports/binarized_mnist.json \
        --command "dvc exp run -S beta=1.0 -S data.binarize=dynamic -S eval.binarized_samples=5000"

Experiments live in a repository's local refs until pushed; this file is how a clone sees a run
that the README quotes (the binarized-MNIST reference, a search's best trial).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from betavae import atomic, errors
from betavae.errors import BetaVAEError


def experiment(name: str, repo: str | None = None) -> dict:
    """{"name", "rev", "params": {...}, "metrics": {"test.recon": ...}} of the named experiment."""
    import dvc.api  # heavy import, and only this entry point needs it

    for row in dvc.api.exp_show(repo=repo):
        if row.get("Experiment") == name:
            params = {key: value for key, value in row.items() if not key.startswith(("test.", "binarized."))
                      and key not in ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")}
            metrics = {key: value for key, value in row.items() if key.startswith(("test.", "binarized."))}
            return {"name": name, "rev": row.get("rev"), "state": row.get("State"), "params": params,
                    "metrics": metrics}
    raise BetaVAEError(f"no experiment named {name!r} (`dvc exp list` shows them)")


def main() -> None:
    errors.run(_main, "record_experiment")


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the experiment's name (dvc exp run -n NAME)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", required=True, help="the command that ran it, recorded beside it")
    parser.add_argument("--repo", default=None)
    args = parser.parse_args()
    record = {**experiment(args.name, args.repo), "command": args.command}
    atomic.write_json(args.out, record)
    print(f"record_experiment: {args.name} -> {args.out}")


if __name__ == "__main__":
    main()
