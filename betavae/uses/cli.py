"""The `betavae` command: use a trained model, and check params, from a shell.

    betavae sample      --model models/model.pt -n 64 --seed 0 --out samples.png
    betavae reconstruct --model models/model.pt --images digit.png [more.png ...] --out recon.png
    betavae encode      --model models/model.pt --images data/mnist/t10k-images-idx3-ubyte --out latents.csv
    betavae traverse    --model models/model.pt --out traversal.png [--images digit.png --index 0]
    betavae digits      --images data/mnist/t10k-images-idx3-ubyte --first 8 --out-dir digits/
    betavae check-params [--params params.yaml] [-S KEY=VALUE ...]
    betavae explore     [--port 8000] [--open]       the latent explorer page, on 127.0.0.1

Every subcommand has --help. Every argument is bounded by what the code can do, and errors are one
line and a non-zero exit (betavae/errors.py). The model and its libraries (torch, matplotlib) are
imported by the commands that need them, so `check-params` and `--help` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from betavae import errors
from betavae.errors import ArgumentParser, BetaVAEError, counted, integer_in, say
from betavae.pipeline import pictures
from betavae.pipeline.params import DEVICES, MAX_SEED, PARAMS_FILE

PROGRAM = "betavae"
DEFAULT_MODEL = Path("models/model.pt")
DEFAULT_IMAGES = Path("data/mnist/t10k-images-idx3-ubyte")
DEFAULT_PAGE = Path("reports/explorer")
REPOSITORY_FILE = Path("dvc.yaml")  # in the directory the default paths are relative to: the repository's root
LATENT_FORMATS = (".csv", ".npy")  # what `encode` writes
DEFAULT_PORT = 8000
MAX_GRID_IMAGES = 10_000  # a grid PNG beyond this is too large to look at
MAX_DIGITS = 10_000  # PNG files `digits` writes at once


class UsageError(BetaVAEError):
    """A command-line argument that cannot work (e.g. an output directory that does not exist)."""


def main(argv: list[str] | None = None) -> None:
    def command() -> None:  # the command line is read inside errors.run, after the environment is checked
        args = _parser().parse_args(argv)
        args.command(args)

    errors.run(command, PROGRAM)


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROGRAM, description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=ArgumentParser)

    picture_formats, figure_formats = tuple(pictures.PIXEL_FORMATS), pictures.FIGURE_FORMATS
    sample = _model_command(commands, "sample", _sample, "decode prior samples into a grid PNG", picture_formats)
    sample.add_argument("-n", "--count", type=integer_in(1, MAX_GRID_IMAGES),
                        help=f"images, 1 to {MAX_GRID_IMAGES} (default: as many as reports/figures/samples.png)")
    sample.add_argument("--seed", type=integer_in(0, MAX_SEED), default=0,
                        help="seed of the prior draws (default: %(default)s)")

    reconstruct = _model_command(commands, "reconstruct", _reconstruct,
                                 "a grid PNG: rows of images, each above their reconstructions",
                                 picture_formats)
    _images_argument(reconstruct, required=True)

    encode = _model_command(commands, "encode", _encode, "posterior mean and log-variance of each image, "
                            "to .csv (a row per image) or .npy (float32, shape (N, 2, Z))", LATENT_FORMATS)
    _images_argument(encode, required=True)

    traverse = _model_command(commands, "traverse", _traverse, "decodings as each of the most informative "
                              "latent dimensions moves from -3 to +3, the others fixed", figure_formats)
    _images_argument(traverse, required=False)
    traverse.add_argument("--index", type=integer_in(0, None), default=0,
                          help="which of --images to traverse around (default: 0; without --images, the prior mean)")
    traverse.add_argument("--rows", type=integer_in(1, None),
                          help="dimensions to show, most KL first, at most the latent size (default: as in "
                               "reports/figures/traversal.png)")

    digits = commands.add_parser("digits", help="write images of an IDX file as 28x28 grey PNGs",
                                 description="Write the first images of an IDX file (the test set by default) "
                                             "as 28x28 greyscale PNG files, to use with --images.")
    digits.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="IDX image file (default: %(default)s)")
    digits.add_argument("--first", type=integer_in(1, MAX_DIGITS), default=8, help="how many (default: %(default)s)")
    digits.add_argument("--out-dir", type=Path, required=True,
                        help="directory for digit-<index>.png (created if missing)")
    digits.set_defaults(command=_digits)

    check = commands.add_parser("check-params", help="validate a params file without running anything",
                                description="Validate a params file and print its warnings; with -S, the params "
                                            "that `dvc exp run -S KEY=VALUE ...` would run (the file is not changed).")
    check.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="the params file (default: %(default)s)")
    check.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="a value to check in place of the file's, as `dvc exp run -S` takes it (repeatable)")
    check.set_defaults(command=_check_params)

    explore = commands.add_parser("explore", help="serve the latent explorer page on 127.0.0.1",
                                  description="Serve the in-browser latent explorer (reports/explorer) on "
                                              "127.0.0.1 until Ctrl-C.")
    explore.add_argument("--dir", type=Path, default=DEFAULT_PAGE, help="the page's directory (default: %(default)s)")
    explore.add_argument("--port", type=integer_in(0, 65535), default=DEFAULT_PORT,
                         help="port, 0 for any free one (default: %(default)s)")
    explore.add_argument("--open", action="store_true", help="open the page in the default browser")
    explore.set_defaults(command=_explore)
    return parser


def _model_command(commands, name: str, function, summary: str, formats: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="trained model file (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"output file, in the format its suffix names: {', '.join(formats)}")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto (CUDA if present), cpu or cuda")
    parser.set_defaults(command=function)
    return parser


def _images_argument(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--images", type=Path, nargs="+", required=required,
                        help="one IDX image file (e.g. data/mnist/t10k-images-idx3-ubyte) or 28x28 grey PNG files")


def _sample(args) -> None:
    from betavae.core import grids

    _check_out(args.out, "pixels")
    _write_grid(args.out, _load(args).sample(args.count or grids.SAMPLES, args.seed))


def _reconstruct(args) -> None:
    from betavae.core import grids
    from betavae.uses import api

    _check_out(args.out, "pixels")
    images = _read_images(args.images)
    outputs = _load(args).reconstruct(images)
    columns = min(grids.COLUMNS, len(images))
    _write_grid(args.out, grids.interleave_rows(api.as_batch(images), outputs, columns), columns)


def _encode(args) -> None:
    import io

    import numpy as np
    import torch

    from betavae.pipeline import atomic
    from betavae.uses import api

    if args.out.suffix.lower() not in LATENT_FORMATS:
        raise UsageError(f"--out {args.out}: latents are written as {' or '.join(LATENT_FORMATS)}")
    images = api.read_images(args.images)
    mean, logvar = _load(args).encode(images)
    if args.out.suffix.lower() == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, torch.stack([mean, logvar], 1).numpy().astype(np.float32))
        atomic.write_bytes(args.out, buffer.getvalue())
    else:
        atomic.write_text(args.out, _latents_csv(_names(args.images, len(mean)), mean, logvar))
    say(f"{PROGRAM}: {counted(len(mean), 'image')} encoded to {args.out}")


def _traverse(args) -> None:
    from betavae.pipeline import atomic
    from betavae.uses import api

    _check_out(args.out, "figures")
    vae = _load(args)
    if args.rows is not None and args.rows > vae.latent_dim:
        raise UsageError(f"--rows {args.rows}: the model has {vae.latent_dim} latent dimensions")
    base, around = None, "the prior mean"
    if args.images:
        images = api.read_images(args.images)
        if args.index >= len(images):
            raise UsageError(f"--index {args.index}: the images hold {counted(len(images), 'image')}, "
                             "numbered from 0")
        base = vae.encode(images[args.index:args.index + 1])[0][0]
        around = f"the posterior mean of {_names(args.images, len(images))[args.index]}"
    atomic.write_bytes(args.out, pictures.figure_bytes(vae.traversal_figure(base, around, args.rows), args.out))
    say(f"{PROGRAM}: traversal written to {args.out}")


def _digits(args) -> None:
    from betavae.pipeline import atomic
    from betavae.uses import api

    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir}: not a directory")
    images = api.read_images([_found(args.images, DEFAULT_IMAGES, "--images")])[:args.first]
    with atomic.Together() as outputs:  # every digit, or none when one cannot be written
        for index, image in enumerate(images):
            outputs.bytes(args.out_dir / f"digit-{index:04d}.png", pictures.pixels_bytes(image))
    say(f"{PROGRAM}: {counted(len(images), 'digit')} written to {args.out_dir} (digit-0000.png ...)")


def _check_params(args) -> None:
    from betavae.core import schedules
    from betavae.pipeline import overrides, yamlfile
    from betavae.pipeline.params import ParamsError, load_params

    path = _found(args.params, Path(PARAMS_FILE), "--params")
    params = load_params(path)  # the file itself first: a fault there is named as the file's
    if args.overrides:
        values = dict(overrides.assignment(text, f"-S {text}") for text in args.overrides)
        given = {key: overrides.scalar(text, key, f"-S {key}={text}") for key, text in values.items()}
        try:
            raw = yamlfile.read(path)
        except yamlfile.YamlError as error:
            raise ParamsError(str(error)) from None
        params = overrides.run_params(raw, given, f"{path} with {' '.join(f'-S {t}' for t in args.overrides)}")
    for warning in schedules.warnings(params):
        say(f"{PROGRAM}: warning: {warning}")
    changed = f" with {', '.join(args.overrides)}" if args.overrides else ""
    say(f"{PROGRAM}: {args.params}{changed} is valid")


def _explore(args) -> None:
    import webbrowser

    from betavae.uses import explorer

    running = explorer.server(_found(args.dir, DEFAULT_PAGE, "--dir"), args.port)
    say(f"{PROGRAM}: the explorer is at {explorer.url(running)} (Ctrl-C stops it)")
    if args.open:
        webbrowser.open(explorer.url(running))
    try:
        running.serve_forever()
    except KeyboardInterrupt:
        say(f"{PROGRAM}: explorer stopped")
    finally:
        running.server_close()


def _load(args):
    """The model of --model on --device; a device that cannot be used is refused as --device names it."""
    from betavae.speed import runtime
    from betavae.uses import api

    runtime.resolve_device(args.device, runtime.COMMAND_LINE_DEVICE)
    return api.load(_found(args.model, DEFAULT_MODEL, "--model"), args.device)


def _found(path: Path, default: Path, option: str) -> Path:
    """path; where it is the option's default (relative to the repository's root) and missing because
    the current directory is not the repository's root, a UsageError that says so and what to do."""
    if path == default and not path.exists() and not REPOSITORY_FILE.exists():
        raise UsageError(f"{path}: not in the current directory ({Path.cwd()}); the default {option} is relative "
                         f"to the repository's root: run {PROGRAM} there, or pass {option} PATH")
    return path


def _read_images(paths: list[Path]):
    from betavae.uses import api

    images = api.read_images(paths)
    if len(images) > MAX_GRID_IMAGES:
        raise UsageError(f"--images: {len(images)} images, but a grid holds at most {MAX_GRID_IMAGES}")
    return images


def _check_out(path: Path, kind: str) -> None:
    """Refuse, before any work, an output name whose format cannot be written (pictures.check_name),
    or whose directory is a file; a missing directory is created when the file is written."""
    pictures.check_name(path, kind)
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {path}: {parent} is not a directory")


def _write_grid(path: Path, images, columns: int | None = None) -> None:
    from betavae.core import grids
    from betavae.pipeline import atomic

    atomic.write_bytes(path, pictures.pixels_bytes(grids.mosaic(images, columns or grids.COLUMNS), path))
    say(f"{PROGRAM}: {counted(len(images), 'image')} written to {path}")


def _names(paths: list[Path], count: int) -> list[str]:
    """A name per image: the PNG file names, or `<IDX file>[i]`."""
    if len(paths) == count and all(path.suffix.lower() == ".png" for path in paths):
        return [path.name for path in paths]
    return [f"{paths[0].name}[{i}]" for i in range(count)]


def _latents_csv(names: list[str], mean, logvar) -> str:
    from betavae.pipeline import atomic

    columns = range(mean.shape[1])
    fields = ["image", *(f"mean_{j}" for j in columns), *(f"logvar_{j}" for j in columns)]
    rows = [dict(zip(fields, [name, *(f"{x:.6g}" for x in means), *(f"{x:.6g}" for x in logvars)]))
            for name, means, logvars in zip(names, mean.tolist(), logvar.tolist())]
    return atomic.csv_text(rows, fields)


if __name__ == "__main__":
    main(sys.argv[1:])
