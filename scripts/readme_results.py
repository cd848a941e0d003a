"""Fill the README's numbers from the committed files (run by `make repro`):

    results    reports/metrics.json          the reference run against the spec
    reference  reports/train/                how long the reference run trained, its best epoch
    seed-spread reports/seeds.csv            how much runs that differ only in the seed differ
    sweep      reports/rate_distortion.csv   the β sweep (scripts/compare.py)
    tests      reports/test_times.json       the two test tiers' measured times
    gpu        reports/bench/gpu_check.json  the default training on a GPU (scripts/gpu_check.py)
    literature reports/binarized_mnist.json  the binarized-MNIST reference run beside published numbers, and
               reports/likelihood.json       the likelihood recipe's run, where it has been made

Each block sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; everything else in the README
is left alone. The results and reference blocks describe the reference run, the default params: if
the workspace holds anything else (an applied experiment, a quick `dvc exp run -S epochs=2`), they
are left as they are, and the script says why. tests/test_readme.py checks that the committed
README holds exactly what the committed files give.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from betavae import errors
from betavae.core.metrics import TEST_METRICS
from betavae.errors import ArgumentParser, BetaVAEError, one_line, say
from betavae.pipeline import atomic, dotted
from betavae.pipeline.modelfile import ModelFile
from betavae.pipeline.params import PARAMS_FILE, Params, load_params

# The write-up's values, and what the README says beside a row where the write-up's meaning differs
# from the metric's own (the metrics, their labels and meanings: betavae/core/metrics.py).
SPEC = {"recon": 71.16, "kl": 29.79, "loss": 95.00, "neg_elbo": 100.95}
SPEC_NOTES = {"neg_elbo": "the spec's is implied: 71.16 + 29.79"}
MISSING = "—"  # a metric a committed file predates
# Published test NLLs on binarized MNIST, as issue 21 quotes them: (model, binarization, nats, source).
LITERATURE = (
    ("VAE, one stochastic layer, k = 1 training, K = 5000", "dynamic", 86.76,
     "Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016, Table 1"),
    ("the same", "static", 88.71, "the same paper, as quoted in issue 21"),
    ("VAE, pythae's reproduction", "dynamic", 89.78,
     "Chadebec et al., Pythae, NeurIPS 2022 Datasets and Benchmarks"),
    ("VampPrior, K = 500 pseudo-inputs, pythae's reproduction", "dynamic", 85.57,
     "the same; the model: Tomczak & Welling, AISTATS 2018"),
    ("convolutional ladder VAE", "static", 78.30, "as quoted in issue 21; not re-checked here"),
    ("MLP VAE, 500 hidden with batch norm, 100-d latent, K = 5000", "dynamic", 84.78,
     "casperkaae/parmesan, README and examples/iw_vae.py, as quoted in issue 33; not re-checked here"),
    ("gated-convolution VAE, 64-d latent, no flow", "static", 82.0,
     "van den Berg et al., Sylvester normalizing flows, UAI 2018, as recalled in issue 33 (≈ 82); not re-checked"),
)


def results_table(metrics: dict) -> str:
    lines = ["| Test-set metric (nats per image) | Spec | This repo | Note |", "|---|---:|---:|---|"]
    for metric in TEST_METRICS:
        spec = SPEC.get(metric.name)
        note = SPEC_NOTES.get(metric.name, metric.meaning)
        lines.append(f"| {_escaped(metric.label)} | {MISSING if spec is None else f'{spec:.2f}'} | "
                     f"{_cell(metrics.get(metric.name))} | {note} |")
    return "\n".join(lines)


def reference_text(epoch_seconds: list[float], best_epoch: int) -> str:
    minutes = sum(epoch_seconds) / 60
    return (f"The committed run trained {len(epoch_seconds)} epochs in {minutes:.1f} minutes (median epoch "
            f"{statistics.median(epoch_seconds):.1f} s); its best validation epoch, the one in `models/model.pt`, "
            f"is {best_epoch}.")


def seed_spread(runs: list[dict]) -> tuple[float, float]:
    """The smallest and largest spread across seeds of the metrics in nats that every run has."""
    names = [metric.name for metric in TEST_METRICS if metric.nats and all(run.get(metric.name) for run in runs)]
    spread = [max(float(run[key]) for run in runs) - min(float(run[key]) for run in runs) for key in names]
    return min(spread), max(spread)


def seed_runs(rows: list[dict], reference: dict | None) -> list[dict]:
    """The runs that differ only in the seed: seeds.csv's rows, with the reference run's own test metrics
    (metrics.json, where the workspace holds the reference run) in place of any row of its seed, which an
    older run of the reference may have left there."""
    if reference is None:
        return rows
    return [row for row in rows if int(float(row["seed"])) != int(reference["seed"])] + [reference]


def sweep_table(runs: list[dict]) -> str:
    """A row per β; a metric a run's file predates shows as a dash."""
    columns = [("loss (own β)" if metric.name == "loss" else metric.column) for metric in TEST_METRICS]
    lines = ["| β | " + " | ".join(columns) + " |", "|---:|" + "---:|" * len(TEST_METRICS)]
    for run in sorted(runs, key=lambda run: float(run["beta"])):
        cells = [_cell(run.get(metric.name)) for metric in TEST_METRICS]
        lines.append(f"| {float(run['beta']):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tests_text(times: dict) -> str:
    fast, full = times["fast"], times["full"]
    return (f"`make test` (the fast tier, {fast['tests']} tests in this process) took {_duration(fast['seconds'])} "
            f"and `make test-all` (all {full['tests']}, with DVC, git and torchrun runs, a worker per core) "
            f"{_duration(full['seconds'])} "
            f"on {times['machine']}.")


LITERATURE_COMMAND = "dvc exp run -S beta=1.0 -S data.binarize=dynamic -S eval.binarized_samples=5000"


def _recipe_row(recipe: dict | None) -> str:
    """The likelihood recipe's run (likelihood.yaml, docs/method.md), with what it changed from the spec."""
    if recipe is None:
        return ("| This repo: the likelihood recipe (β = 1, no dropout or augmentation, chosen on the validation "
                "IW bound), K = 5000 | dynamic | not run yet: needs a GPU | `python scripts/likelihood_study.py` "
                "(likelihood.yaml) |")
    metrics, params = recipe["metrics"], recipe["params"]
    return (f"| This repo: the likelihood recipe, {int(params['z_dim'])}-d latent, k = "
            f"{int(params.get('train_samples', 1))}, up to {int(params['epochs'])} epochs, chosen on validation NLL, "
            f"K = {int(metrics['binarized.importance_samples'])} | {params['data.binarize']} | "
            f"**{float(metrics['binarized.nll']):.2f}** | `{recipe['command']}` |")


def literature_table(record: dict | None, reference: dict, recipe: dict | None = None) -> str:
    """The committed binarized-MNIST runs (scripts/record_experiment.py) beside the published numbers:
    the spec's network at β = 1 (`record`) and the likelihood recipe (`recipe`, likelihood.yaml); a run
    not made yet says so. `reference` is the reference run's metrics.json: its grey-pixel model scored
    on the binarized test set, for contrast."""
    if record is None:
        ours = f"| This repo: conv VAE, β = 1, K = 5000 | dynamic | not run yet | `{LITERATURE_COMMAND}` |"
    else:
        metrics, params = record["metrics"], record["params"]
        ours = (f"| This repo: conv VAE, β = {float(params['beta']):g}, {int(params['z_dim'])}-d latent, "
                f"{int(params['epochs'])} epochs, K = {int(metrics['binarized.importance_samples'])} | "
                f"{params['data.binarize']} | "
                f"**{float(metrics['binarized.nll']):.2f}** | `{record['command']}` |")
    grey = reference["binarized"]
    contrast = (f"| This repo's reference run, trained on grey pixels (β = {Params().beta:g}), K = "
                f"{grey['importance_samples']} | none | {grey['nll']:.2f} | `reports/metrics.json`; not comparable |")
    lines = ["| Model | Binarization | Test NLL (nats) | Source |", "|---|---|---:|---|", ours,
             _recipe_row(recipe), contrast]
    lines += [f"| {model} | {kind} | {nll:.2f} | {source} |" for model, kind, nll, source in LITERATURE]
    return "\n".join(lines)


def gpu_text(check: dict | None) -> str:
    """The GPU check's numbers, or how to make them."""
    if check is None:
        return ("On a GPU: not measured in this repository yet; `make gpu-check` on a machine with one writes "
                "`reports/bench/gpu_check.json` and this line.")
    test = check["test"]
    return (f"On a GPU ({check['gpu']}, torch {check['torch']}), `make gpu-check` trained {check['epochs']} epochs "
            f"in {check['train_stage_seconds']:.0f} s through the train stage and ran train → evaluate → plot → "
            f"export in {check['repro_seconds']:.0f} s; its step ran {check['project_vs_conventional']:.1f}× the "
            f"conventional loop's; test NLL {test['nll']:.2f}, recon {test['recon']:.2f}, KL {test['kl']:.2f} "
            "([docs/performance.md](docs/performance.md)).")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def _escaped(label: str) -> str:
    return label.replace("|", "\\|")  # a bar inside a table cell


def _cell(value) -> str:
    if value is None or value == "":
        return MISSING
    number = float(value)
    return str(int(number)) if number.is_integer() and "." not in str(value) else f"{number:.2f}"


def fill(readme: str, name: str, table: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if readme.count(begin) != 1 or readme.count(end) != 1:
        raise ValueError(f"README must hold exactly one {begin} ... {end} block")
    head, rest = readme.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def not_the_reference_run(model: Path, params: Path) -> str | None:
    """Why the workspace's model and params are not the reference run's (the defaults), or None."""
    reference = Params()
    differing = dotted.differing(reference.to_dict(), load_params(params).to_dict())
    if differing:
        return f"{params} sets other values than the reference run ({', '.join(differing)})"
    trained = ModelFile.read(model).params.training()  # a param the file predates reads as its default
    differing = dotted.differing(reference.training(), trained)
    if differing:
        return f"{model} was trained with other params than the reference run ({', '.join(differing)})"
    return None


def blocks(reports: Path, model: Path, params: Path) -> tuple[dict[str, str], str | None]:
    """Block name -> text for each committed file that exists, and why the reference blocks were
    left out (None if they were not)."""
    found, skipped = {}, not_the_reference_run(model, params)
    reference = None
    if skipped is None:
        reference = {"seed": str(Params().seed), **json.loads((reports / "metrics.json").read_text())["test"]}
        found["results"] = results_table(reference)
        seconds = [float(row["epoch_seconds"]) for row in _rows(reports / "train/plots/metrics/epoch_seconds.tsv")]
        best = json.loads((reports / "train" / "metrics.json").read_text())["best_epoch"]
        found["reference"] = reference_text(seconds, best)
    if (reports / "seeds.csv").exists():
        low, high = seed_spread(seed_runs(_rows(reports / "seeds.csv"), reference))
        found["seed-spread"] = (f"Between them the test metrics move by {low:.2f} to {high:.2f} nats, so a difference "
                                "of that size between two single-seed experiments is noise.")
    if (reports / "rate_distortion.csv").exists():
        found["sweep"] = sweep_table(_rows(reports / "rate_distortion.csv"))
    if (reports / "test_times.json").exists():
        found["tests"] = tests_text(json.loads((reports / "test_times.json").read_text()))
    check = reports / "bench" / "gpu_check.json"
    found["gpu"] = gpu_text(json.loads(check.read_text()) if check.exists() else None)
    literature = reports / "binarized_mnist.json"
    recipe = reports / "likelihood.json"
    found["literature"] = literature_table(json.loads(literature.read_text()) if literature.exists() else None,
                                           json.loads((reports / "metrics.json").read_text()),
                                           json.loads(recipe.read_text()) if recipe.exists() else None)
    return found, skipped


def _rows(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file, delimiter="\t" if path.suffix == ".tsv" else ","))


def main() -> None:
    errors.run(_main, "readme")


def _main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args()
    try:
        readme = args.readme.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise BetaVAEError(f"{args.readme}: cannot be read ({one_line(error)})") from None
    try:
        found, skipped = blocks(args.reports, args.model, args.params)
    except (OSError, ValueError, KeyError, TypeError) as error:  # a committed file missing or not what it should be
        raise BetaVAEError(f"a committed report cannot be read ({type(error).__name__}: {one_line(error)})") from None
    try:
        for name, text in found.items():
            readme = fill(readme, name, text)
    except ValueError as error:
        raise BetaVAEError(f"{args.readme}: {error}") from None
    atomic.write_text(args.readme, readme)
    if skipped:
        say(f"readme: the results stay those of the reference run: {skipped}")
    say(f"readme: {', '.join(found)} in {args.readme} filled from the committed files")


if __name__ == "__main__":
    main()
