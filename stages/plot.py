"""Stage plot: training history, prior samples, reconstructions, latent interpolation and a 2-D
projection of the test set's posterior means, as PNGs in --out."""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from betavae import atomic, cli, figures, images
from betavae.checkpoint import load_model
from betavae.data import load_test, to_float
from betavae.params import load_params

SAMPLES = 64
GRID_COLUMNS = 8
INTERPOLATION_ROWS = 6
INTERPOLATION_STEPS = 10
PROJECTION_BATCH = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True, help="DVCLive metrics directory")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    torch.manual_seed(params.seed)
    # Figures are cheap; the CPU in fp32 keeps them identical wherever the model was trained.
    model, _ = load_model(args.model, torch.device("cpu"))
    test = load_test(args.data, params.data.limit)
    generator = torch.Generator().manual_seed(params.seed)

    _save_figure(args.out / "training_history.png", figures.history_figure(figures.read_history(args.history)))
    latents = torch.randn(SAMPLES, model.config.latent_dim, generator=generator)
    atomic.write_bytes(args.out / "samples.png", images.sample_grid(model, latents, GRID_COLUMNS))
    atomic.write_bytes(args.out / "reconstructions.png",
                       images.reconstruction_grid(model, to_float(test.images[:32]), GRID_COLUMNS))
    pairs = torch.randperm(len(test), generator=generator)[: 2 * INTERPOLATION_ROWS].view(2, -1)
    atomic.write_bytes(args.out / "interpolation.png",
                       figures.interpolation_grid(model, to_float(test.images[pairs[0]]),
                                                  to_float(test.images[pairs[1]]), INTERPOLATION_STEPS))
    with torch.no_grad():
        means = torch.cat([model.encode(to_float(test.images[i:i + PROJECTION_BATCH]))[0]
                           for i in range(0, len(test), PROJECTION_BATCH)])
    _save_figure(args.out / "latent_projection.png", figures.projection_figure(means, test.labels))
    print(f"plot: figures written to {args.out}")


def _save_figure(path: Path, figure) -> None:
    atomic.write_figure(path, figure)
    plt.close(figure)


if __name__ == "__main__":
    cli.run(main, "plot")
