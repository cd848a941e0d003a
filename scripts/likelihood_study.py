"""The study behind the likelihood recipe (likelihood.yaml; docs/method.md): train each variant of the
recipe, keep its validation bound after every epoch, and score the epoch it chose on the binarized
test set once, at the K the literature uses. Meant for a GPU (800 epochs are minutes there, days on
two CPU cores); `--epochs` shortens every variant for a look.

    python scripts/likelihood_study.py                         # every variant of likelihood.yaml
    python scripts/likelihood_study.py --variants elbo --epochs 50

Writes, in --out, study.csv (a row per variant: the epoch it chose, its validation NLL there, its
test NLL at K = test_samples, its training time), curves.csv (validation NLL by epoch and variant)
and curves.png; the model of each variant stays in <out>/<variant>/. The recipe's reference run
itself goes through the pipeline: `dvc exp run` with the chosen variant's `-S` values (the study
prints them).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from betavae.core import metrics
from betavae.core.data import load_test
from betavae.errors import ArgumentParser, BetaVAEError, integer_in, one_line, run, say
from betavae.experiments import tools
from betavae.pipeline import atomic, overrides, pictures, yamlfile
from betavae.pipeline.modelfile import load_model
from betavae.pipeline.params import MAX_EPOCHS, PARAMS_FILE, Params, ParamsError, load_params
from betavae.speed import runtime
from betavae.training import loop as training
from betavae.training.state import Outputs
from betavae.uses import figures

STUDY_FILE = Path("likelihood.yaml")
OUT = tools.OUT_DIR / "likelihood"
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def study_params(study: dict, base: Params, variant: str, epochs: int | None) -> Params:
    """params.yaml with the recipe and the variant's changes (and --epochs) set, validated."""
    values = {**study["recipe"], **study["variants"][variant]}
    if epochs is not None:
        values["epochs"] = epochs
    try:
        return overrides.run_params(base.to_dict(), overrides.fixed_values(values, f"{STUDY_FILE}: {variant}"),
                                    f"{STUDY_FILE}: {variant}")
    except ParamsError as error:
        raise BetaVAEError(str(error)) from None


def read_study(path: Path) -> dict:
    study = yamlfile.read(path)
    if not isinstance(study, dict) or set(study) != {"recipe", "variants", "test_samples"}:
        raise BetaVAEError(f"{path}: must hold recipe, variants and test_samples")
    if not isinstance(study["variants"], dict) or not study["variants"] or not all(
            isinstance(changes, dict) for changes in study["variants"].values()):
        raise BetaVAEError(f"{path}: variants must map names to the params each changes")
    named = [name for name in study["variants"] if not (isinstance(name, str) and VARIANT_NAME.fullmatch(name))]
    if named:
        raise BetaVAEError(f"{path}: variant {one_line(repr(named[0]))[:80]} is not a usable name: each names the "
                           "folder its run is kept in (letters, digits, '.', '_' and '-', at most 64)")
    if not isinstance(study["test_samples"], int) or not 1 <= study["test_samples"] <= 100_000:
        raise BetaVAEError(f"{path}: test_samples must be an integer in [1, 100000]")
    return study


def run_variant(params: Params, data: Path, root: Path, test_samples: int) -> dict:
    """Train one variant (resuming its own checkpoint), then score its chosen epoch on the binarized test set."""
    started = time.perf_counter()
    progress = training.train(params, data, Outputs(root / "model.pt", root / "checkpoint.pt", root / "live"),
                              log=lambda line: say(f"likelihood_study: {line}"))
    seconds = time.perf_counter() - started
    compute = runtime.resolve(params.device, params.precision, params.channels_last)
    model, _ = load_model(root / "model.pt", compute.device)
    binary = load_test(data, params.data.limit, "dynamic").to(compute.device)
    generator = torch.Generator(compute.device).manual_seed(params.seed)
    found = metrics.binarized_summary(metrics.per_image(model, binary, test_samples, compute, generator),
                                      test_samples)
    curve = [logged.get("val/nll") for logged in progress.history]
    return {"chosen_epoch": progress.best.epoch, "epochs_trained": progress.epochs_done,
            "val_nll": progress.best.value, "test_nll": found["nll"], "test_samples": test_samples,
            "train_seconds": round(seconds, 1), "curve": curve}


def curves_figure(results: dict[str, dict]):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    axis = figure.subplots()
    for name, result in results.items():
        points = [(epoch + 1, value) for epoch, value in enumerate(result["curve"]) if value is not None]
        axis.plot([epoch for epoch, _ in points], [value for _, value in points], label=figures.literal(name))
        axis.axvline(result["chosen_epoch"], linestyle=":", linewidth=0.8)
    axis.set(title="Validation NLL (importance-weighted) by epoch", xlabel="epoch", ylabel="nats per image")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


def main() -> None:
    run(_main, "likelihood_study")


def _main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--study", type=Path, default=STUDY_FILE, help="the study's file (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", help="which variants (default: all)")
    parser.add_argument("--epochs", type=integer_in(1, MAX_EPOCHS), help="train each variant this long instead")
    parser.add_argument("--data", type=Path, default=Path("data/mnist"),
                        help="directory of the MNIST IDX files (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE),
                        help="the params the recipe changes (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the results and of each variant's run "
                        "(default: %(default)s)")
    args = parser.parse_args()
    study = read_study(args.study)
    names = args.variants or list(study["variants"])
    unknown = [name for name in names if name not in study["variants"]]
    if unknown:
        raise BetaVAEError(f"--variants: {unknown[0]} is not a variant of {args.study} "
                           f"({', '.join(study['variants'])})")
    base = load_params(args.params)
    planned = {name: study_params(study, base, name, args.epochs) for name in names}  # all checked first
    tools.require_writable_directory(args.out)
    results = {name: run_variant(params, args.data, args.out / name, study["test_samples"])
               for name, params in planned.items()}
    rows = [{"variant": name, **{key: value for key, value in result.items() if key != "curve"}}
            for name, result in results.items()]
    longest = max(len(result["curve"]) for result in results.values())
    curves = [{"epoch": epoch + 1, **{name: (result["curve"][epoch] if epoch < len(result["curve"]) else "")
                                       for name, result in results.items()}} for epoch in range(longest)]
    with atomic.Together() as outputs:
        outputs.text(args.out / "study.csv", atomic.csv_text(rows))
        outputs.text(args.out / "curves.csv", atomic.csv_text(curves))
        outputs.bytes(args.out / "curves.png", pictures.figure_bytes(curves_figure(results)))
    best = min(rows, key=lambda row: row["val_nll"])
    values = {**study["recipe"], **study["variants"][best["variant"]]}
    say(f"likelihood_study: best on validation: {best['variant']} (test NLL {best['test_nll']:.2f} at "
        f"K = {study['test_samples']}); its run: dvc exp run -n likelihood " +
        " ".join(f"-S {key}={value}" for key, value in values.items()) +
        f" -S eval.binarized_samples={study['test_samples']}")


if __name__ == "__main__":
    main()
