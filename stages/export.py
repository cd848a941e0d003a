"""Stage export: the trained model as ONNX for deployers and the in-browser explorer (--out:
encoder.onnx, decoder.onnx, explorer.json), written only after onnxruntime has run both graphs on
the test images and agreed with PyTorch within betavae.uses.onnx_graphs.TOLERANCE."""

from pathlib import Path

import torch

from betavae.compat import dvc_workspace
from betavae.core.data import load_test
from betavae.errors import ArgumentParser, say
from betavae.pipeline import atomic
from betavae.pipeline.modelfile import load_model
from betavae.pipeline.params import PARAMS_FILE, load_params
from betavae.uses import explorer, onnx_graphs


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)")
    parser.add_argument("--data", type=Path, required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--model", type=Path, required=True, help="the trained model file")
    parser.add_argument("--out", type=Path, required=True, help="directory of the explorer page")
    args = parser.parse_args()
    params = load_params(args.params)
    watch = dvc_workspace.Watch(args.params, params)
    model, trained = load_model(args.model, torch.device("cpu"))
    # The digits the model was trained on: binary ones for a model of binarized MNIST.
    test = load_test(args.data, params.data.limit, trained.params.data.binarize)
    graphs = onnx_graphs.to_onnx(model)
    differences = onnx_graphs.check(graphs, model, test.images)
    page = onnx_graphs.explorer_page(trained, test, len(test))
    watch.check()
    with atomic.Together() as outputs:  # the page's graphs and its digits always belong to one model
        for name, data in graphs.items():
            outputs.bytes(args.out / name, data)
        outputs.json(args.out / explorer.EXPLORER, page)
    say(f"export: {explorer.ENCODER} and {explorer.DECODER} written to {args.out}; onnxruntime agrees with "
          f"PyTorch on {len(test)} test images within {max(differences.values()):.2g} "
          f"(tolerance {onnx_graphs.TOLERANCE:g})")


if __name__ == "__main__":
    dvc_workspace.run_stage(main, "export")
