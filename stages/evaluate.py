"""Stage evaluate: test-set recon, KL, β-loss, negative ELBO, importance-weighted NLL, active units
and KL concentration, and the NLL on the literature's binarized test set (--metrics, JSON), the same
per digit (--per-digit, CSV), and the KL of each latent dimension, most first (--latent-kl, CSV).
A model trained on binarized images (data.binarize: dynamic, as its file records) is scored on the
binarized test set throughout."""

from pathlib import Path

import torch

from betavae.compat import dvc_workspace
from betavae.core.data import load_test
from betavae.core.idx import MNIST_TEST_IMAGES
from betavae.core.metrics import binarized_summary, latent_rows, memory_bytes, per_digit, per_image, summarize
from betavae.errors import ArgumentParser, say
from betavae.pipeline import atomic
from betavae.pipeline.modelfile import load_model
from betavae.pipeline.params import PARAMS_FILE, load_params
from betavae.speed import runtime

DECIMALS = 4


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)")
    parser.add_argument("--data", type=Path, required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--model", type=Path, required=True, help="the trained model file")
    parser.add_argument("--metrics", type=Path, required=True, help="test metrics to write (JSON)")
    parser.add_argument("--per-digit", type=Path, required=True, help="metrics per digit to write (CSV)")
    parser.add_argument("--latent-kl", type=Path, required=True, help="KL per latent dimension to write (CSV)")
    args = parser.parse_args()
    params = load_params(args.params)
    watch = dvc_workspace.Watch(args.params, params)
    compute = runtime.resolve(params.device, params.precision, params.channels_last)
    runtime.make_deterministic(params.seed, compute.device)
    runtime.retain_freed_memory()
    model, trained = load_model(args.model, compute.device)
    images = params.data.limit or MNIST_TEST_IMAGES
    samples = max(params.eval.iw_samples, params.eval.binarized_samples)
    runtime.check_memory(memory_bytes(model.config.latent_dim, samples, images, compute.device),
                         f"evaluation with {samples} importance samples", compute.device)
    model = compute.place(model)
    # The data and the loss the model was trained for, from its file, not today's params.yaml.
    test = load_test(args.data, params.data.limit, trained.params.data.binarize).to(compute.device)
    binary = load_test(args.data, params.data.limit, "dynamic").to(compute.device)
    generator = torch.Generator(compute.device).manual_seed(params.seed)
    results = per_image(model, test, params.eval.iw_samples, compute, generator)
    metrics = {key: _round(value) for key, value in summarize(results, trained.params.beta).items()}
    literature = per_image(model, binary, params.eval.binarized_samples, compute, generator)
    summary = binarized_summary(literature, params.eval.binarized_samples)
    protocol = {key: _round(value) for key, value in summary.items()}
    watch.check()
    with atomic.Together() as outputs:
        outputs.json(args.metrics, {"test": metrics, "binarized": protocol})
        outputs.text(args.per_digit, _csv(per_digit(results, test.labels)))
        outputs.text(args.latent_kl, _csv(latent_rows(results)))
    say("evaluate: " + ", ".join(f"{key} {value}" for key, value in metrics.items()))
    say(f"evaluate: binarized test set, {params.eval.binarized_samples} importance samples: "
          f"nll {protocol['nll']} nats, {protocol['bits_per_dim']} bits/dim")


def _round(value):
    return round(value, DECIMALS) if isinstance(value, float) else value


def _csv(rows: list[dict]) -> str:
    return atomic.csv_text([{key: _round(value) for key, value in row.items()} for row in rows])


if __name__ == "__main__":
    dvc_workspace.run_stage(main, "evaluate")
