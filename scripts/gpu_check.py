"""Everything that needs a GPU, checked in one go on a machine with one (`make gpu-check`, ≤ 8 minutes
on an H200): the default training through the real train stage, then evaluate, plot and export as
dvc.yaml runs them (through `dvc repro` where DVC is installed, else the stages' own commands from
dvc.yaml), the training benchmark measured as a GPU is measured, the tests marked cuda and the API's
and CLI's tests on the GPU.

    python scripts/gpu_check.py                          # writes reports/bench/gpu_check.json
    python scripts/gpu_check.py --epochs 3 --out /tmp/x.json   # a quick look (the report says how many epochs)

The report holds the GPU's name, the epochs, `train_stage_seconds`, `repro_seconds` (train, evaluate,
plot and export, each timed), the benchmark's `project_vs_conventional` and graphed/eager step
rates, the evaluate stage's test metrics, and the cuda tests' outcome. README's GPU line is generated
from it (scripts/readme_results.py). The stages write the pipeline's usual outputs (models/model.pt,
reports/...): run it in a copy of the repository whose outputs may change, as the GPU machine's is.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from betavae.errors import ArgumentParser, BetaVAEError, integer_in, output_file, run, say
from betavae.pipeline import atomic, yamlfile
from betavae.pipeline.params import MAX_EPOCHS, PARAMS_FILE

STAGES = ("train", "evaluate", "plot", "export")  # what one training run changes, in dvc.yaml's order
REPORT = Path("reports/bench/gpu_check.json")


def main() -> None:
    run(_main, "gpu_check")


def _main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=integer_in(1, MAX_EPOCHS), default=None,
                        help="train this many epochs instead of params.yaml's (a quick look)")
    parser.add_argument("--out", type=output_file(".json"), default=REPORT, help="the report (default: %(default)s)")
    parser.add_argument("--bench-out", type=output_file(".json"), default=Path("reports/bench/train_speed-gpu.json"),
                        help="the training benchmark's result (default: %(default)s)")
    parser.add_argument("--skip-bench", action="store_true", help="do not run the training benchmark")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the cuda, API and CLI tests")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise BetaVAEError("no CUDA device here: the GPU check needs one (CI and the CPU tiers cover the rest)")
    root = Path.cwd()
    epochs = _set_epochs(root, args.epochs)
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "epochs": epochs, "through": "dvc repro" if _with_dvc(root) else "the stages' commands (no dvc)"}
    seconds = {stage: _run_stage(root, stage) for stage in STAGES}
    report["stage_seconds"] = seconds
    report["train_stage_seconds"] = seconds["train"]
    report["repro_seconds"] = sum(seconds.values())
    report["test"] = json.loads((root / "reports" / "metrics.json").read_text())["test"]
    report["binarized"] = json.loads((root / "reports" / "metrics.json").read_text())["binarized"]
    report["model"] = _provenance(root)
    if not args.skip_bench:
        report.update(_bench(root, args.bench_out))
    if not args.skip_tests:
        report["cuda_tests"] = _cuda_tests(root)
    atomic.write_json(args.out, report)
    say(f"gpu_check: {epochs} epochs in {report['train_stage_seconds']:.0f} s on {report['gpu']}; "
        f"train → export {report['repro_seconds']:.0f} s; written to {args.out}")


def _set_epochs(root: Path, epochs: int | None) -> int:
    """params.yaml's epochs, or `epochs` written into it (the copy's params.yaml, which DVC reads too)."""
    params = yamlfile.read(root / PARAMS_FILE)
    if epochs is not None:
        text = (root / PARAMS_FILE).read_text()
        text = re.sub(r"(?m)^epochs: *\d+", f"epochs: {epochs}", text, count=1)
        atomic.write_text(root / PARAMS_FILE, text)
        return epochs
    return int(params["epochs"])


def _run_stage(root: Path, stage: str) -> float:
    """Run one stage as DVC would, timed; a failure is the stage's own error line."""
    if _with_dvc(root):
        command = ["dvc", "repro", "--force", "--single-item", stage]
    else:
        command = shlex.split(str(yamlfile.read(root / "dvc.yaml")["stages"][stage]["cmd"]))
        command[0] = sys.executable if command[0] == "python" else command[0]
    environ = {**os.environ, "BETAVAE_RESUME": "never"} if stage == "train" else dict(os.environ)
    say(f"gpu_check: {stage}: {' '.join(command)}")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=root, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seconds = time.perf_counter() - started
    sys.stdout.write(result.stdout[-4000:])
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() if "error" in line.lower()] or ["no error line"]
        raise BetaVAEError(f"stage {stage} failed after {seconds:.0f} s: {lines[-1]}")
    return round(seconds, 2)


def _with_dvc(root: Path) -> bool:
    """DVC runs the stages where it is installed and the copy is a git repository (DVC needs one)."""
    return shutil.which("dvc") is not None and (root / ".git").exists()


def _provenance(root: Path) -> dict:
    from betavae.pipeline.modelfile import ModelFile

    found = ModelFile.read(root / "models" / "model.pt")
    return {"best_epoch": found.epoch, "selection": found.selection.__dict__,
            "provenance": None if found.provenance is None else found.provenance.__dict__}


def _bench(root: Path, out: Path) -> dict:
    command = [sys.executable, "benchmarks/train_speed.py", "--quick", "--out", str(out)]
    say(f"gpu_check: benchmark: {' '.join(command)}")
    result = subprocess.run(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(result.stdout[-4000:])
    if result.returncode != 0:
        return {"bench_error": result.stdout.strip().splitlines()[-1:] or ["no output"]}
    bench = json.loads(out.read_text())
    return {"project_vs_conventional": bench["project_vs_conventional"],
            "graph_vs_eager": bench.get("graph_vs_eager"),
            "images_per_s": {"project": bench["project"]["images_per_s"],
                             "project_eager": bench.get("project_eager", {}).get("images_per_s"),
                             "conventional": bench["conventional"]["images_per_s"]},
            "kernels_per_step": {name: profile["kernels_per_step"]
                                 for name, profile in (bench.get("cuda_profile") or {}).items()},
            "bench": str(out)}


def _cuda_tests(root: Path) -> dict:
    # The tests marked cuda, and the API and CLI on the GPU (their agreement is what the issue saw fail there).
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
               "tests/test_api_and_cli.py"]
    say(f"gpu_check: tests: {' '.join(command)}")
    result = subprocess.run(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(result.stdout[-6000:])
    summary = next((line for line in reversed(result.stdout.splitlines()) if " in " in line and "=" in line), "")
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    return {"status": result.returncode, "summary": summary.strip("= "), **counts}


if __name__ == "__main__":
    main()
