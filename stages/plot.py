"""Stage plot: training history, prior samples, reconstructions, latent interpolation, a 2-D
projection of the test set's posterior means and latent traversals, as PNGs in --out."""

from pathlib import Path

import torch

from betavae.compat import dvc_workspace
from betavae.core import grids
from betavae.core.data import INFERENCE_BATCH, load_test, ordered_batches, to_float
from betavae.errors import ArgumentParser, say
from betavae.pipeline import atomic, pictures
from betavae.pipeline.params import PARAMS_FILE, load_params
from betavae.uses import api, figures

FIGURES = ("training_history.png", "samples.png", "reconstructions.png", "interpolation.png",
           "latent_projection.png", "traversal.png")  # what --out holds; README shows the first three
RECONSTRUCTIONS = 32  # test images shown with their reconstructions
INTERPOLATION_ROWS = 6
INTERPOLATION_STEPS = 10
TRAVERSAL_IMAGE = 0  # the test image whose posterior mean the traversals move around


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)")
    parser.add_argument("--data", type=Path, required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--model", type=Path, required=True, help="the trained model file")
    parser.add_argument("--history", type=Path, required=True, help="DVCLive metrics directory")
    parser.add_argument("--out", type=Path, required=True, help="directory of the figures (PNGs)")
    args = parser.parse_args()
    params = load_params(args.params)
    watch = dvc_workspace.Watch(args.params, params)
    torch.manual_seed(params.seed)
    # Figures are cheap; the CPU in fp32 keeps them identical wherever the model was trained.
    vae = api.load(args.model, device="cpu")
    test = load_test(args.data, params.data.limit, vae.model_file.params.data.binarize)
    history = figures.history_figure(figures.read_history(args.history))
    pairs = torch.randperm(len(test), generator=torch.Generator().manual_seed(params.seed))
    starts, ends = (to_float(test.images[index]) for index in pairs[: 2 * INTERPOLATION_ROWS].view(2, -1))
    with torch.no_grad():
        means = torch.cat([vae.model.encode(x)[0] for x, _ in ordered_batches(test, INFERENCE_BATCH)])
    reconstructed = grids.reconstructions(vae.model, to_float(test.images[:RECONSTRUCTIONS]))
    interpolated = grids.interpolations(vae.model, starts, ends, INTERPOLATION_STEPS)
    traversal = vae.traversal_figure(means[TRAVERSAL_IMAGE], f"the posterior mean of test image {TRAVERSAL_IMAGE}")
    drawn = {
        "training_history.png": pictures.figure_bytes(history),
        "samples.png": pictures.pixels_bytes(grids.mosaic(vae.sample(grids.SAMPLES, params.seed))),
        "reconstructions.png": pictures.pixels_bytes(grids.mosaic(reconstructed)),
        "interpolation.png": pictures.pixels_bytes(grids.mosaic(interpolated, INTERPOLATION_STEPS)),
        "latent_projection.png": pictures.figure_bytes(figures.projection_figure(means, test.labels)),
        "traversal.png": pictures.figure_bytes(traversal),
    }
    watch.check()
    with atomic.Together() as outputs:
        for name in FIGURES:
            outputs.bytes(args.out / name, drawn[name])
    say(f"plot: {len(FIGURES)} figures written to {args.out}")


if __name__ == "__main__":
    dvc_workspace.run_stage(main, "plot")
