"""The `betavae` command: use a trained model, and check params, from a shell.

    betavae sample      --model models/model.pt -n 64 --seed 0 --out samples.png
    betavae reconstruct --model models/model.pt --images digit.png [more.png ...] --out recon.png
    betavae encode      --model models/model.pt --images data/mnist/t10k-images-idx3-ubyte --out latents.csv
    betavae traverse    --model models/model.pt --out traversal.png [--images digit.png --index 0]
    betavae check-params [--params params.yaml]

Every subcommand has --help. Errors are one line and a non-zero exit (betavae/errors.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch

from betavae import api, atomic, errors, grids
from betavae.errors import BetaVAEError
from betavae.params import check_file

PROGRAM = "betavae"


class UsageError(BetaVAEError):
    """A command-line argument that cannot work (e.g. an output directory that does not exist)."""


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    errors.run(lambda: args.command(args), PROGRAM)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    sample = _model_command(commands, "sample", _sample, "decode prior samples into a grid PNG")
    sample.add_argument("-n", "--count", type=int, default=grids.SAMPLES, help="images (default: %(default)s)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default: %(default)s)")

    reconstruct = _model_command(commands, "reconstruct", _reconstruct,
                                 "a grid PNG: rows of images, each above their reconstructions")
    _images_argument(reconstruct, required=True)

    encode = _model_command(commands, "encode", _encode, "posterior mean and log-variance of each image, "
                            "to .csv (a row per image) or .npy (float32, shape (N, 2, Z))")
    _images_argument(encode, required=True)

    traverse = _model_command(commands, "traverse", _traverse, "decodings as each of the most informative "
                              "latent dimensions moves from -3 to +3, the others fixed")
    _images_argument(traverse, required=False)
    traverse.add_argument("--index", type=int, default=0,
                          help="which of --images to traverse around (default: 0; without --images, the prior mean)")
    traverse.add_argument("--rows", type=int, default=api.TRAVERSAL_ROWS,
                          help="dimensions to show, most KL first (default: %(default)s)")

    check = commands.add_parser("check-params", help="validate a params file without running anything",
                                description="Validate a params file and print its warnings.")
    check.add_argument("--params", type=Path, default=Path("params.yaml"))
    check.set_defaults(command=_check_params)
    return parser


def _model_command(commands, name: str, function, summary: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"),
                        help="trained model file (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output file; its directory must exist")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.set_defaults(command=function)
    return parser


def _images_argument(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--images", type=Path, nargs="+", required=required,
                        help="one IDX image file (e.g. data/mnist/t10k-images-idx3-ubyte) or 28x28 grey PNG files")


def _sample(args) -> None:
    _check_out(args.out)
    _write_grid(args.out, api.load(args.model, args.device).sample(args.count, args.seed))


def _reconstruct(args) -> None:
    _check_out(args.out)
    images = api.read_images(args.images)
    outputs = api.load(args.model, args.device).reconstruct(images)
    columns = min(grids.COLUMNS, len(images))
    _write_grid(args.out, grids.interleave_rows(api.as_batch(images), outputs, columns), columns)


def _encode(args) -> None:
    if args.out.suffix not in (".csv", ".npy"):
        raise UsageError(f"--out {args.out}: must end in .csv or .npy")
    _check_out(args.out)
    images = api.read_images(args.images)
    mean, logvar = api.load(args.model, args.device).encode(images)
    if args.out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, torch.stack([mean, logvar], 1).numpy().astype(np.float32))
        atomic.write_bytes(args.out, buffer.getvalue())
    else:
        atomic.write_text(args.out, _latents_csv(_names(args.images, len(mean)), mean, logvar))
    print(f"{PROGRAM}: {len(mean)} images encoded to {args.out}")


def _traverse(args) -> None:
    _check_out(args.out)
    if args.rows < 1:
        raise UsageError(f"--rows must be >= 1; got {args.rows}")
    vae = api.load(args.model, args.device)
    base, around = None, "the prior mean"
    if args.images:
        images = api.read_images(args.images)
        if not 0 <= args.index < len(images):
            raise UsageError(f"--index {args.index}: the images hold {len(images)}")
        base = vae.encode(images[args.index:args.index + 1])[0][0]
        around = f"the posterior mean of {_names(args.images, len(images))[args.index]}"
    atomic.write_figure(args.out, vae.traversal_figure(base, around, args.rows))
    print(f"{PROGRAM}: traversal written to {args.out}")


def _check_params(args) -> None:
    for warning in check_file(args.params):
        print(f"{PROGRAM}: warning: {warning}")
    print(f"{PROGRAM}: {args.params} is valid")


def _check_out(path: Path) -> None:
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: directory {path.parent} does not exist")


def _write_grid(path: Path, images: torch.Tensor, columns: int = grids.COLUMNS) -> None:
    atomic.write_bytes(path, grids.png(grids.mosaic(images, columns)))
    print(f"{PROGRAM}: {len(images)} images written to {path}")


def _names(paths: list[Path], count: int) -> list[str]:
    """A name per image: the PNG file names, or `<IDX file>[i]`."""
    if len(paths) == count and all(path.suffix.lower() == ".png" for path in paths):
        return [path.name for path in paths]
    return [f"{paths[0].name}[{i}]" for i in range(count)]


def _latents_csv(names: list[str], mean: torch.Tensor, logvar: torch.Tensor) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    latent_dim = mean.shape[1]
    writer.writerow(["image", *(f"mean_{j}" for j in range(latent_dim)), *(f"logvar_{j}" for j in range(latent_dim))])
    for name, means, logvars in zip(names, mean.tolist(), logvar.tolist()):
        writer.writerow([name, *(f"{x:.6g}" for x in means), *(f"{x:.6g}" for x in logvars)])
    return buffer.getvalue()


if __name__ == "__main__":
    main(sys.argv[1:])
