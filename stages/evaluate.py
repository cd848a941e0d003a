"""Stage evaluate: test-set recon, KL, β-loss, negative ELBO, importance-weighted NLL, active
units (--metrics, JSON) and the same per digit (--per-digit, CSV)."""

import argparse
import csv
import io
from pathlib import Path

import torch

from betavae import atomic, cli, runtime
from betavae.checkpoint import load_model
from betavae.data import load_test
from betavae.evaluate import per_digit, per_image, summarize
from betavae.params import load_params

DECIMALS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--per-digit", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    run = runtime.resolve(params)
    runtime.make_deterministic(params.seed, run.device)
    runtime.retain_freed_memory()
    model, record = load_model(args.model, run.device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    test = load_test(args.data, params.data.limit).to(run.device)
    generator = torch.Generator(run.device).manual_seed(params.seed)
    results = per_image(model, test, params.eval.iw_samples, run, generator)
    beta = record["params"]["beta"]  # the loss the model was trained for, not today's params.yaml
    metrics = {key: _round(value) for key, value in summarize(results, beta).items()}
    atomic.write_json(args.metrics, {"test": metrics})
    atomic.write_text(args.per_digit, _csv(per_digit(results, test.labels)))
    print("evaluate: " + ", ".join(f"{key} {value}" for key, value in metrics.items()))


def _round(value):
    return round(value, DECIMALS) if isinstance(value, float) else value


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _round(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue()


if __name__ == "__main__":
    cli.run(main, "evaluate")
