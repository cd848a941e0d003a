"""Stage evaluate: test-set recon, KL, β-loss, negative ELBO, importance-weighted NLL, active units
and KL concentration (--metrics, JSON), the same per digit (--per-digit, CSV), and the KL of each
latent dimension, most first (--latent-kl, CSV)."""

import argparse
import csv
import io
from pathlib import Path

import torch

from betavae import atomic, runtime, workspace
from betavae.checkpoint import load_model
from betavae.data import load_test
from betavae.evaluate import latent_rows, memory_bytes, per_digit, per_image, summarize
from betavae.params import MNIST_TEST_IMAGES, PARAMS_FILE, load_params

DECIMALS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--per-digit", type=Path, required=True)
    parser.add_argument("--latent-kl", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    watch = workspace.Watch(args.params, params)
    compute = runtime.resolve(params)
    runtime.make_deterministic(params.seed, compute.device)
    runtime.retain_freed_memory()
    model, record = load_model(args.model, compute.device)
    images = params.data.limit or MNIST_TEST_IMAGES
    runtime.check_memory(memory_bytes(model.config.latent_dim, params.eval.iw_samples, images, compute.device),
                         f"evaluation with {params.eval.iw_samples} importance samples", compute.device)
    model = compute.place(model)
    test = load_test(args.data, params.data.limit).to(compute.device)
    generator = torch.Generator(compute.device).manual_seed(params.seed)
    results = per_image(model, test, params.eval.iw_samples, compute, generator)
    beta = record["params"]["beta"]  # the loss the model was trained for, not today's params.yaml
    metrics = {key: _round(value) for key, value in summarize(results, beta).items()}
    watch.check()
    atomic.write_json(args.metrics, {"test": metrics})
    atomic.write_text(args.per_digit, _csv(per_digit(results, test.labels)))
    atomic.write_text(args.latent_kl, _csv(latent_rows(results)))
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
    workspace.run_stage(main, "evaluate")
