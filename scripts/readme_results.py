"""Fill the numbers of the README and of docs/*.md from the committed records (run by `make repro`):

    README.md
    results    reports/metrics.json          the reference run against the spec
    reference  reports/train/                how long the reference run trained, its best epoch
    seed-spread reports/seeds.csv            how much runs that differ only in the seed differ
    tests      reports/test_times.json       the two test tiers' measured times
    gpu        reports/bench/gpu_check.json  the default training on a GPU (scripts/gpu_check.py)
    docs/results.md
    literature reports/binarized_mnist.json  the binarized-MNIST reference run beside published numbers, and
               reports/likelihood.json       the likelihood recipe's run, where it has been made
    sweep      reports/rate_distortion.csv   the β sweep (scripts/compare.py)
    docs/performance.md
    bench-loops, bench-arithmetic, bench-evaluation   reports/bench/train_speed*.json (benchmarks/train_speed.py)
    profile-steps, profile-passes                     reports/bench/profile_step*.json (benchmarks/profile_step.py)
    bf16-quality   reports/bf16_amx.json beside reports/metrics.json and reports/seeds.csv
    gpu-check      reports/bench/gpu_check.json
    reference      reports/train/
    docs/method.md
    binarized-experiment  reports/binarized_mnist.json
    recipe                reports/likelihood.json, where it has been made
    docs/investigations.md
    train-gap      reports/train/metrics.json    the last epoch's training against validation reconstruction
    docs/search.md
    study          reports/search/*_trials.csv and *_front.csv
    docs/explorer.md
    page-size      reports/explorer/             what the committed page weighs
    docs/scaling.md
    two-hosts      reports/bench/two_hosts.json  one run on two hosts against one host (benchmarks/two_hosts.py)

Each block sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; everything else in a file is
left alone. The blocks about the reference run (README's results and reference, the docs' bf16-quality,
reference and train-gap) describe the default params: if the workspace holds anything else (an applied
experiment, a quick `dvc exp run -S epochs=2`), they are left as they are, and the script says why.
tests/test_readme.py and tests/test_docs.py check that the committed files hold exactly what the
committed records give.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
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
# Published test NLLs on binarized MNIST: (model, binarization, nats, source). A number this project has not
# checked against its paper says so in its source.
LITERATURE = (
    ("VAE, one stochastic layer, k = 1 training, K = 5000", "dynamic", 86.76,
     "Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016, Table 1"),
    ("the same", "static", 88.71, "attributed to the same paper; not re-checked here"),
    ("VAE, pythae's reproduction", "dynamic", 89.78,
     "Chadebec et al., Pythae, NeurIPS 2022 Datasets and Benchmarks"),
    ("VampPrior, K = 500 pseudo-inputs, pythae's reproduction", "dynamic", 85.57,
     "the same; the model: Tomczak & Welling, AISTATS 2018"),
    ("convolutional ladder VAE", "static", 78.30, "a published figure whose paper is not re-checked here"),
    ("MLP VAE, 500 hidden with batch norm, 100-d latent, K = 5000", "dynamic", 84.78,
     "casperkaae/parmesan, README and examples/iw_vae.py; not re-checked here"),
    ("gated-convolution VAE, 64-d latent, no flow", "static", 82.0,
     "van den Berg et al., Sylvester normalizing flows, UAI 2018 (≈ 82); not re-checked here"),
)
IWAE_VAE, PYTHAE_VAE = LITERATURE[0], LITERATURE[2]  # what the binarized reference experiment is held against


def results_table(metrics: dict) -> str:
    lines = ["| Test-set metric (nats per image) | Spec | This repo | Note |", "|---|---:|---:|---|"]
    for metric in TEST_METRICS:
        spec = SPEC.get(metric.name)
        note = SPEC_NOTES.get(metric.name, metric.meaning)
        lines.append(f"| {_escaped(metric.label)} | {MISSING if spec is None else f'{spec:.2f}'} | "
                     f"{_cell(metrics.get(metric.name))} | {note} |")
    return "\n".join(lines)


def reference_text(epoch_seconds: list[float], best_epoch: int) -> str:
    minutes, median = sum(epoch_seconds) / 60, statistics.median(epoch_seconds)
    return (f"The committed run trained {len(epoch_seconds)} epochs; its best validation epoch, the one in "
            f"`models/model.pt`, is {best_epoch}. Its log's epoch times (median {median:.1f} s, {minutes:.0f} "
            "minutes in all) include whatever else its machine ran: the benchmarks of `docs/performance.md` "
            "measure the speed.")


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
    return (f"`make test` (the fast tier, {fast['tests']} tests, none starting DVC or git) took "
            f"{_duration(fast['seconds'])} and `make test-all` (all {full['tests']}, with DVC, git and torchrun "
            f"runs) {_duration(full['seconds'])}, each with a pytest-xdist worker per core, "
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
    test, speed = check["test"], check.get("project_vs_conventional")
    step = "" if speed is None else f"its step ran {speed:.1f}× the conventional loop's; "
    return (f"On a GPU ({check['gpu']}, torch {check['torch']}), `make gpu-check` trained {check['epochs']} epochs "
            f"in {check['train_stage_seconds']:.0f} s through the train stage and ran train → evaluate → plot → "
            f"export in {check['repro_seconds']:.0f} s; {step}test NLL {test['nll']:.2f}, recon {test['recon']:.2f}, "
            f"KL {test['kl']:.2f} ([docs/performance.md](docs/performance.md)).")


# docs/*.md: every number that comes from a committed record, as the record gives it.


def _record_link(path: Path, reports: Path) -> str:
    """A committed record as a link from docs/ (where every doc lives) to reports/."""
    relative = path.relative_to(reports).as_posix()
    return f"[`{path.name}`](../reports/{relative})"


def _cpu(machine: dict | None) -> str:
    """The CPU a benchmark ran on, as its record names it: model, family and model numbers where recorded,
    the widest instruction set its kernels can use, and the vCPUs."""
    if not machine:
        return "not recorded"
    name = machine.get("cpu", "unknown").replace("(R)", "").replace(" Processor", "")
    if machine.get("cpu_family") is not None:
        name += f" (family {machine['cpu_family']} model {machine['cpu_model']})"
    isa = ("AMX" if machine.get("amx") else "AVX-512 BF16" if machine.get("avx512_bf16")
           else "AVX-512" if machine.get("avx512") else machine.get("cpu_capability", "?"))
    return f"{name}, {isa}, {machine.get('cpu_count', '?')} vCPUs"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(value) -> str:
    return MISSING if not isinstance(value, (int, float)) else f"{value:.2f}×"


def cpu_records(reports: Path, pattern: str) -> list[tuple[Path, dict]]:
    """The committed benchmark records of a CPU (a GPU's are the GPU check's), by file name."""
    records = [(path, json.loads(path.read_text())) for path in sorted((reports / "bench").glob(pattern))]
    return [(path, record) for path, record in records if "gpu" not in (record.get("machine") or {})]


def bench_loops_table(records: list[tuple[Path, dict]], reports: Path) -> str:
    lines = ["| Record | CPU | Trials | project | conventional | project / conventional | floor | floor / project "
             "| epoch, projected |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path, record in records:
        trials = f"{len(record['project']['trials'])}{' (--quick)' if record['settings'].get('quick') else ''}"
        lines.append(f"| {_record_link(path, reports)} | {_cpu(record.get('machine'))} | {trials} | "
                     f"{_rate(record['project']['images_per_s'])} | {_rate(record['conventional']['images_per_s'])} | "
                     f"{_ratio(record['project_vs_conventional'])} | {_rate(record['floor']['images_per_s'])} | "
                     f"{_ratio(record['floor_vs_project'])} | {record['project']['epoch_seconds']:.1f} s |")
    return "\n".join(lines)


TWO_HOSTS_WAYS = ("one process", "one host", "two hosts")  # benchmarks/two_hosts.py's runs, in its order


def two_hosts_table(record: dict) -> str:
    """docs/scaling.md: the time per epoch of one run on two hosts against one host and one process."""
    base = record["ways"]["one process"]["median_s"]
    lines = ["| Run | Processes | Hosts | Seconds per epoch | Against one process |", "|---|---:|---:|---:|---:|"]
    for way in TWO_HOSTS_WAYS:
        found = record["ways"][way]
        lines.append(f"| {way} | {found['processes']} | {found['hosts']} | {found['median_s']:.2f} | "
                     f"{found['median_s'] / base:.2f}× |")
    lines += ["", f"{record['limit']:,} MNIST training images, {record['epochs']} epochs, {record['rounds']} rounds "
                  f"interleaved; {_cpu(record.get('machine'))}."]
    return "\n".join(lines)


def bench_arithmetic_table(records: list[tuple[Path, dict]], reports: Path) -> str:
    lines = ["| Record | floor GFLOP/s | `torch.mm` GFLOP/s | oneDNN GFLOP/s | floor / `torch.mm` | bf16 floor / fp32 "
             "| floor / stock output layer |", "|---|---:|---:|---:|---:|---:|---:|"]
    for path, record in records:
        ceiling, bf16 = record["ceiling"], record.get("floor_bf16")
        bf16_cell = _ratio(bf16.get("vs_fp32_floor")) if isinstance(bf16, dict) else "no bf16 instructions"
        lines.append(f"| {_record_link(path, reports)} | {record['floor']['gflops']:.1f} | {ceiling['gflops']:.1f} | "
                     f"{ceiling['onednn_gflops']:.1f} | {record['floor_vs_ceiling']:.2f} | {bf16_cell} | "
                     f"{_ratio(record['floor_stock_output_layer']['floor_vs_stock'])} |")
    return "\n".join(lines)


def bench_evaluation_table(records: list[tuple[Path, dict]], reports: Path) -> str:
    lines = ["| Record | IW NLL, test images/s | the test set | binarized NLL, images/s | page faults a training "
             "step: glibc's default / freed memory retained |", "|---|---:|---:|---:|---:|"]
    for path, record in records:
        nll, faults = record["evaluate_nll"], record["page_faults_per_step"]
        lines.append(f"| {_record_link(path, reports)} | {nll['images_per_s']:.0f} (K = {nll['iw_samples']}) | "
                     f"{_duration(nll['test_set_seconds'])} | {nll['binarized']['images_per_s']:.0f} | "
                     f"{faults['default_allocator']:,} / {faults['retained_freed_memory']:,} |")
    return "\n".join(lines)


# oneDNN's kernels by what they compute; the implementation names carry the instruction set.
PASSES = {"forward_training": "forward", "backward_data": "backward data", "backward_weights": "backward weights"}
KERNEL_ISAS = (("amx", "AMX"), ("avx512", "AVX-512"), ("avx2", "AVX2"))


def _kernel_isa(kernels: list[dict]) -> str:
    names = " ".join(kernel["implementation"] for kernel in kernels)
    return next((label for key, label in KERNEL_ISAS if key in names), "?")


def profile_steps_table(records: list[tuple[Path, dict]], reports: Path) -> str:
    lines = ["| Record | CPU | Precision | Step | GFLOP/s | `torch.mm`, same run | step / `torch.mm` | in oneDNN "
             "| outside oneDNN |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for path, record in records:
        onednn = sum(kernel["ms_per_step"] for kernel in record["kernels"])
        machine = _cpu(record["machine"]) if record.get("machine") else \
            f"not recorded; {_kernel_isa(record['kernels'])} kernels"
        lines.append(f"| {_record_link(path, reports)} | {machine} | {record['precision']} | "
                     f"{record['step_ms']:.1f} ms | {record['step_gflops']:.0f} | {record['matmul_gflops']:.0f} | "
                     f"{record['step_gflops'] / record['matmul_gflops']:.2f} | {onednn:.1f} ms | "
                     f"{record['step_ms'] - onednn:.1f} ms |")
    return "\n".join(lines)


def profile_passes_table(records: list[tuple[Path, dict]], reports: Path) -> str:
    lines = ["| Record | " + " | ".join(PASSES.values()) + " | other oneDNN (reorders, products) |",
             "|---|" + "---:|" * (len(PASSES) + 1)]
    for path, record in records:
        by_pass = dict.fromkeys(PASSES.values(), 0.0)
        other = 0.0
        for kernel in record["kernels"]:
            if kernel["propagation"] in PASSES:
                by_pass[PASSES[kernel["propagation"]]] += kernel["ms_per_step"]
            else:
                other += kernel["ms_per_step"]
        cells = " | ".join(f"{value:.1f} ms" for value in by_pass.values())
        lines.append(f"| {_record_link(path, reports)} {record['precision']} | {cells} | {other:.1f} ms |")
    return "\n".join(lines)


def bf16_quality_text(bf16: dict, reference: dict, seeds: list[dict]) -> str:
    """The bf16 run's test metrics (scripts/record_experiment.py's record) against the reference run's
    (metrics.json) and the runs that differ from it only in the seed (seeds.csv)."""
    others = [row for row in seeds if int(float(row["seed"])) != Params().seed]
    defaults = dotted.flatten(Params().to_dict())
    changed = [f"{key}={value}" for key, value in bf16["params"].items() if defaults.get(key, value) != value]
    lines = [f"`{bf16['command']}` ({int(bf16['params']['epochs'])} epochs; params the defaults but "
             f"{', '.join(changed) or 'none'}), recorded in [`reports/bf16_amx.json`](../reports/bf16_amx.json):", "",
             "| Metric | bf16 | fp32 reference | " + " | ".join(f"fp32, seed {int(float(row['seed']))}"
                                                      for row in others) + " | bf16 − reference |",
             "|---|---:|---:|" + "---:|" * len(others) + "---:|"]
    differences = {}
    for metric in TEST_METRICS:
        ours, theirs = bf16["metrics"][f"test.{metric.name}"], reference["test"][metric.name]
        seeds_cells = " | ".join(_cell(row.get(metric.name)) for row in others)
        difference = ""
        if metric.nats:
            differences[metric.column] = float(ours) - float(theirs)
            difference = _signed(differences[metric.column])
        lines.append(f"| {_escaped(metric.label)} | {_cell(ours)} | {_cell(theirs)} | {seeds_cells} | {difference} |")
    ours, theirs = float(bf16["metrics"]["binarized.nll"]), float(reference["binarized"]["nll"])
    differences["binarized NLL"] = ours - theirs
    lines.append(f"| Binarized NLL (K = {int(bf16['metrics']['binarized.importance_samples'])}) | {ours:.2f} | "
                 f"{theirs:.2f} | {' | '.join(MISSING for _ in others)} | {_signed(ours - theirs)} |")
    largest = max(differences, key=lambda name: abs(differences[name]))
    _, spread = seed_spread(seed_runs(seeds, {"seed": str(Params().seed), **reference["test"]}))
    verdict = "within" if abs(differences[largest]) <= spread else "beyond"
    lines.append("")
    lines.append(f"The largest difference is {abs(differences[largest]):.2f} nats ({largest}); runs that differ "
                 f"only in the seed differ by up to {spread:.2f}: bf16 is {verdict} the seed spread.")
    return "\n".join(lines)


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


def gpu_check_text(check: dict | None) -> str:
    """docs/performance.md's account of the GPU check, or that there is none."""
    if check is None:
        return ("**Not measured.** No `reports/bench/gpu_check.json` is committed, so this repository states no "
                "GPU number. `make gpu-check` on a machine with a CUDA GPU writes it, and `python "
                "scripts/readme_results.py` then fills this paragraph and the README's GPU line from it.")
    test, rates = check["test"], check.get("images_per_s", {})
    lines = ["| `reports/bench/gpu_check.json` | |", "|---|---:|",
             f"| GPU, torch | {check['gpu']}, {check['torch']} |",
             f"| the train stage, {check['epochs']} epochs | {check['train_stage_seconds']:.0f} s |",
             f"| train → evaluate → plot → export | {check['repro_seconds']:.0f} s |"]
    if rates:
        lines.append(f"| images/s: graphed step / eager step / conventional loop | {_rate(rates['project'])} / "
                     f"{MISSING if rates.get('project_eager') is None else _rate(rates['project_eager'])} / "
                     f"{_rate(rates['conventional'])} |")
    if "bench_error" in check:
        lines.append(f"| the benchmark | failed: {' '.join(check['bench_error'])} |")
    lines.append(f"| test NLL / recon / KL | {test['nll']:.2f} / {test['recon']:.2f} / {test['kl']:.2f} |")
    if "cuda_tests" in check:
        lines.append(f"| tests marked cuda | {check['cuda_tests'].get('summary') or check['cuda_tests']['status']} |")
    return "\n".join(lines)


def binarized_experiment_text(record: dict) -> str:
    """docs/method.md's account of the binarized-MNIST reference experiment, held against the IWAE paper."""
    metrics, params = record["metrics"], record["params"]
    nll, samples = float(metrics["binarized.nll"]), int(metrics["binarized.importance_samples"])
    elbo, recon, kl = (float(metrics[f"test.{name}"]) for name in ("neg_elbo", "recon", "kl"))
    low_k = float(metrics["test.nll"])
    iwae_nll, pythae_nll = IWAE_VAE[2], PYTHAE_VAE[2]
    return "\n".join([
        f"`{record['command']}` ({int(params['epochs'])} epochs, a {int(params['z_dim'])}-d latent, the spec's "
        "architecture and schedule otherwise), recorded in "
        "[`reports/binarized_mnist.json`](../reports/binarized_mnist.json) by `scripts/record_experiment.py`:",
        "",
        "| Binarized test set (nats per image) | Value |",
        "|---|---:|",
        f"| NLL, K = {samples} importance samples | **{nll:.2f}** ({float(metrics['binarized.bits_per_dim']):.4f} "
        "bits/dim) |",
        f"| NLL, K = {Params().eval.iw_samples} (`test.nll`) | {low_k:.2f} |",
        f"| negative ELBO | {elbo:.2f} (reconstruction {recon:.2f} + KL {kl:.2f}) |",
        "",
        f"{nll:.2f} is {abs(nll - iwae_nll):.2f} nats {'above' if nll > iwae_nll else 'below'} the IWAE paper's "
        f"one-layer VAE ({iwae_nll:.2f}): the goal of ≤ {iwae_nll:.2f} is "
        f"{'not reached' if nll > iwae_nll else 'reached'}. It is {abs(nll - pythae_nll):.2f} nats "
        f"{'better' if nll < pythae_nll else 'worse'} than pythae's reproduction of the plain VAE ({pythae_nll:.2f}). "
        f"The bound tightens by {low_k - nll:.2f} nats from K = {Params().eval.iw_samples} to K = {samples}, and "
        f"the negative ELBO lies {elbo - low_k:.2f} nats above the K = {Params().eval.iw_samples} bound.",
    ])


def recipe_text(recipe: dict | None) -> str:
    """docs/method.md's account of the likelihood recipe's committed run, or that there is none."""
    if recipe is None:
        return ("**Not made yet.** The recipe's runs need a GPU (hundreds of epochs are minutes there and days on "
                "two CPU cores), so no `reports/likelihood.json` is committed and the literature table of "
                "[results.md](results.md) says so in the recipe's row. `python scripts/likelihood_study.py` prints "
                "each variant's `dvc exp run`; `scripts/record_experiment.py` records the chosen run in "
                "`reports/likelihood.json`, from which this paragraph and that row are generated.")
    metrics, params = recipe["metrics"], recipe["params"]
    return (f"The recipe's committed run (`{recipe['command']}`, [`reports/likelihood.json`](../reports/"
            f"likelihood.json)): a {int(params['z_dim'])}-d latent, k = {int(params.get('train_samples', 1))}, up to "
            f"{int(params['epochs'])} epochs; binarized test NLL **{float(metrics['binarized.nll']):.2f}** nats at "
            f"K = {int(metrics['binarized.importance_samples'])}.")


def train_gap_text(train: dict) -> str:
    """docs/investigations.md: the reference run's last epoch, training against validation reconstruction."""
    gap = train["train"]["recon"] - train["val"]["recon"]
    return (f"After the reference run's {train['step']} epochs its training reconstruction (augmented images, "
            f"dropout on) is {abs(gap):.1f} nats {'above' if gap > 0 else 'below'} the validation reconstruction "
            "([`reports/train/metrics.json`](../reports/train/metrics.json), the last epoch): "
            + ("the model does not fit its training images better than held-out ones." if gap > 0 else
               "the model fits its training images better than held-out ones."))


def study_text(reports: Path) -> str:
    """docs/search.md: the committed study's trials by β, and what its rate–distortion front says."""
    trials_files = sorted((reports / "search").glob("*_trials.csv"))
    if len(trials_files) != 1:
        raise ValueError(f"{reports / 'search'} must hold exactly one study's *_trials.csv")
    trials_file = trials_files[0]
    front_file = trials_file.with_name(trials_file.name.replace("_trials.csv", "_front.csv"))
    trials = [row for row in _rows(trials_file) if row["state"] == "COMPLETE"]
    front = sorted(_rows(front_file), key=lambda row: float(row["test.kl"]))
    lines = ["| trial | β | z_dim | rate: test KL | distortion: test recon |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {row['number']} | {float(row['beta']):.2f} | {row['z_dim']} | {float(row['test.kl']):.2f} | "
              f"{float(row['test.recon']):.2f} |" for row in sorted(trials, key=lambda row: float(row["beta"]))]
    costs = [(float(low["test.recon"]) - float(high["test.recon"])) / (float(high["test.kl"]) - float(low["test.kl"]))
             for low, high in zip(front, front[1:])]
    lines.append("")
    lines.append(f"{len(front)} of the {len(trials)} trials lie on the Pareto front "
                 f"({_record_link(front_file, reports)}). Between neighbours on the front each nat of rate given up "
                 f"costs {min(costs):.1f} to {max(costs):.1f} nats of reconstruction.")
    return "\n".join(lines)


def page_size_text(explorer: Path) -> str:
    """docs/explorer.md: what the committed page weighs, by part."""
    def size(paths) -> int:
        return sum(path.stat().st_size for path in paths)
    runtime = sorted((explorer / "vendor").iterdir())
    graphs, page = sorted(explorer.glob("*.onnx")), [explorer / "index.html", explorer / "explorer.js"]
    data = explorer / "explorer.json"
    digits = json.loads(data.read_text())["digits"]["count"]
    total = size(path for path in explorer.rglob("*") if path.is_file())
    parts = " and ".join(f"`{path.name}` {_size(path.stat().st_size)}" for path in runtime)
    return (f"Of the page's {_size(total)} committed, the runtime is {_size(size(runtime))} ({parts}), the graphs "
            f"{_size(size(graphs))}, `explorer.json` {_size(data.stat().st_size)} (the {digits} digits) and the "
            f"page's own code {_size(size(page))}.")


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} KB"


def results_blocks(reports: Path) -> dict[str, str]:
    """docs/results.md: the likelihood beside the literature, and the committed β sweep."""
    literature, recipe = reports / "binarized_mnist.json", reports / "likelihood.json"
    return {"literature": literature_table(json.loads(literature.read_text()) if literature.exists() else None,
                                           json.loads((reports / "metrics.json").read_text()),
                                           json.loads(recipe.read_text()) if recipe.exists() else None),
            "sweep": sweep_table(_rows(reports / "rate_distortion.csv"))}


def doc_blocks(reports: Path, reference_run: bool) -> dict[str, dict[str, str]]:
    """docs/<file> -> block name -> text, from the committed records; the blocks about the reference run
    only where the workspace holds it (`reference_run`)."""
    speed, profiles = cpu_records(reports, "train_speed*.json"), cpu_records(reports, "profile_step*.json")
    check = reports / "bench" / "gpu_check.json"
    recipe = reports / "likelihood.json"
    performance = {"bench-loops": bench_loops_table(speed, reports),
                   "bench-arithmetic": bench_arithmetic_table(speed, reports),
                   "bench-evaluation": bench_evaluation_table(speed, reports),
                   "profile-steps": profile_steps_table(profiles, reports),
                   "profile-passes": profile_passes_table(profiles, reports),
                   "gpu-check": gpu_check_text(json.loads(check.read_text()) if check.exists() else None)}
    found = {"performance.md": performance,
             "method.md": {"binarized-experiment": binarized_experiment_text(
                               json.loads((reports / "binarized_mnist.json").read_text())),
                           "recipe": recipe_text(json.loads(recipe.read_text()) if recipe.exists() else None)},
             "results.md": results_blocks(reports),
             "investigations.md": {},
             "search.md": {"study": study_text(reports)},
             "explorer.md": {"page-size": page_size_text(reports / "explorer")},
             "scaling.md": {"two-hosts": two_hosts_table(
                 json.loads((reports / "bench" / "two_hosts.json").read_text()))}}
    if reference_run:
        reference = json.loads((reports / "metrics.json").read_text())
        performance["bf16-quality"] = bf16_quality_text(json.loads((reports / "bf16_amx.json").read_text()),
                                                        reference, _rows(reports / "seeds.csv"))
        performance["reference"] = _reference_block(reports)
        found["investigations.md"]["train-gap"] = train_gap_text(
            json.loads((reports / "train" / "metrics.json").read_text()))
    return found


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def _escaped(label: str) -> str:
    return label.replace("|", "\\|")  # a bar inside a table cell


def _cell(value) -> str:
    if value is None or value == "":
        return MISSING
    number = float(value)
    return str(int(number)) if number.is_integer() and "." not in str(value) else f"{number:.2f}"


def fill(text: str, name: str, block: str) -> str:
    """`text` with its one block NAME holding `block`; everything outside the block as it was."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"it must hold exactly one {begin} ... {end} block")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{block}\n{end}{tail}"


BLOCK_NAMES = re.compile(r"<!-- ([a-z0-9-]+):begin -->")


def block_names(text: str) -> list[str]:
    """The names of the marked blocks a file holds, in order."""
    return BLOCK_NAMES.findall(text)


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
        found["reference"] = _reference_block(reports)
    if (reports / "seeds.csv").exists():
        low, high = seed_spread(seed_runs(_rows(reports / "seeds.csv"), reference))
        found["seed-spread"] = (f"Between them the test metrics move by {low:.2f} to {high:.2f} nats, so a difference "
                                "of that size between two single-seed experiments is noise.")
    if (reports / "test_times.json").exists():
        found["tests"] = tests_text(json.loads((reports / "test_times.json").read_text()))
    check = reports / "bench" / "gpu_check.json"
    found["gpu"] = gpu_text(json.loads(check.read_text()) if check.exists() else None)
    return found, skipped


def _reference_block(reports: Path) -> str:
    seconds = [float(row["epoch_seconds"]) for row in _rows(reports / "train/plots/metrics/epoch_seconds.tsv")]
    return reference_text(seconds, json.loads((reports / "train" / "metrics.json").read_text())["best_epoch"])


def _rows(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file, delimiter="\t" if path.suffix == ".tsv" else ","))


def main() -> None:
    errors.run(_main, "readme")


def _main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="the folder of the committed records (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"),
                        help="the reference run's model file (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="README to fill (default: %(default)s)")
    parser.add_argument("--docs", type=Path, default=Path("docs"),
                        help="the folder of the docs to fill (default: %(default)s)")
    args = parser.parse_args()
    try:
        found, skipped = blocks(args.reports, args.model, args.params)
        targets = {args.readme: found, **{args.docs / name: text for name, text in
                                          doc_blocks(args.reports, reference_run=skipped is None).items()}}
    except (OSError, ValueError, KeyError, TypeError) as error:  # a committed file missing or not what it should be
        raise BetaVAEError(f"a committed report cannot be read ({type(error).__name__}: {one_line(error)})") from None
    changed = {}
    for path, texts in targets.items():
        try:
            before = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise BetaVAEError(f"{path}: cannot be read ({one_line(error)})") from None
        after = before
        try:
            for name, text in texts.items():
                after = fill(after, name, text)
        except ValueError as error:
            raise BetaVAEError(f"{path}: {error}") from None
        if after != before:
            changed[path] = after
    with atomic.Together() as outputs:  # the README and the docs: of the same records
        for path, text in changed.items():
            outputs.text(path, text)
    if skipped:
        say(f"readme: the blocks about the reference run stay those of the reference run: {skipped}")
    filled = sum(len(texts) for texts in targets.values())
    say(f"readme: {filled} blocks in {len(targets)} files filled from the committed records; "
        + (f"changed: {', '.join(str(path) for path in changed)}" if changed else "none changed"))

if __name__ == "__main__":
    main()
