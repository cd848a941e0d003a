"""Record one DVC experiment's params and test metrics in a committed JSON file, from DVC's Python API.

    python scripts/record_experiment.py binarized-beta1 --out reports/binarized_mnist.json \
        --command "dvc exp run -S beta=1.0 -S data.binarize=dynamic -S eval.binarized_samples=5000"

Experiments live in a repository's local refs until pushed; this file is how a clone sees a run
that the README quotes (the binarized-MNIST reference, for one).
"""

from __future__ import annotations

import json
import subprocess

from betavae import errors
from betavae.errors import ArgumentParser, BetaVAEError, integer_in, output_file, say
from betavae.experiments import tools
from betavae.experiments.studies import find_experiment
from betavae.pipeline import atomic, dotted, yamlfile
from betavae.pipeline.params import PARAMS_FILE, Params

METRICS_FILE = "reports/metrics.json"  # dvc.yaml's evaluate stage writes it


def record(name: str, rev: str, params_text: str, metrics_text: str, command: str) -> dict:
    """The experiment's committed params.yaml and metrics file -> {"name", "rev", "params" (its
    params.yaml keys, dotted), "metrics" (dotted: "binarized.nll", ...), "command"}. Read from the
    files, not from exp_show's table, which turns every number into a float and booleans into text."""
    params = dotted.flatten(yamlfile.parse(params_text, f"{rev}:{PARAMS_FILE}"))
    known = dotted.flatten(Params().to_dict())
    return {"name": name, "rev": rev, "params": {key: value for key, value in params.items() if key in known},
            "metrics": dotted.flatten(json.loads(metrics_text)), "command": command}


def _committed(rev: str, path: str, repo: str | None) -> str:
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
    if shown.returncode != 0:
        raise BetaVAEError(f"{rev}:{path}: {shown.stderr.strip()}")
    return shown.stdout


def main() -> None:
    errors.run(_main, "record_experiment")


def _main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("name", help="the experiment's name (dvc exp run -n NAME)")
    parser.add_argument("--out", type=output_file(".json"), required=True, help="the record to write (JSON)")
    parser.add_argument("--command", required=True, help="the command that ran it, recorded beside it")
    parser.add_argument("--commits", type=integer_in(1, 10_000), default=20,
                        help="commits back from HEAD to look in (default 20)")
    parser.add_argument("--repo", default=None, help="DVC repository (default: the current one)")
    args = parser.parse_args()
    tools.require_repository(args.repo)
    row = find_experiment(args.name, args.repo, args.commits)
    if row is None:
        raise BetaVAEError(f"no finished experiment named {args.name!r} on the last {args.commits} commits "
                           "(`dvc exp list --all-commits` shows them)")
    rev = row["rev"]
    recorded = record(args.name, rev, _committed(rev, PARAMS_FILE, args.repo), _committed(rev, METRICS_FILE, args.repo),
                      args.command)
    atomic.write_json(args.out, recorded)
    say(f"record_experiment: {args.name} -> {args.out}")


if __name__ == "__main__":
    main()
