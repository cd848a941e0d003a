"""The README's numbers are the committed files' (scripts/readme_results.py fills them), it only ever
shows the reference run, and its prose numbers are the code's."""

import csv
import json
import re
import shutil

import pytest
import torch

from betavae.core import grids
from betavae.core.idx import MNIST_TEST_IMAGES
from betavae.core.metrics import METRICS
from betavae.pipeline.params import PARAMS_FILE, Params
from scripts.readme_results import (
    blocks,
    fill,
    literature_table,
    not_the_reference_run,
    results_table,
    seed_runs,
    seed_spread,
    sweep_table,
)
from scripts.record_experiment import record

VALUES = {"recon": 70.5, "kl": 28.25, "loss": 93.1, "neg_elbo": 98.75, "nll": 96.0, "active_units": 17,
          "kl_dims_90": 12}


def test_fill_replaces_only_the_marked_block():
    readme = "intro\n<!-- results:begin -->\nold table\n<!-- results:end -->\noutro\n"
    filled = fill(readme, "results", results_table(VALUES))
    assert filled.startswith("intro\n") and filled.endswith("<!-- results:end -->\noutro\n")
    assert "old table" not in filled
    assert "| Reconstruction −log p(x\\|z) | 71.16 | 70.50 | lower is better |" in filled
    assert all(line.count(" | ") == 3 for line in results_table(VALUES).splitlines()[2:])  # four cells a row
    assert "| Active units (of z_dim) | — | 17 |" in filled
    assert fill(filled, "results", results_table(VALUES)) == filled


def test_fill_refuses_a_readme_without_exactly_one_block():
    with pytest.raises(ValueError, match="exactly one"):
        fill("no markers", "results", "table")


def test_the_seed_spread_and_the_sweep_table_come_from_each_run():
    assert set(VALUES) == set(METRICS)
    runs = [{"seed": "42", "beta": "0.8", **{k: str(v) for k, v in VALUES.items()}},
            {"seed": "1", "beta": "0.8", **{k: str(v + (0.5 if k == "kl" else 1)) for k, v in VALUES.items()}}]
    assert seed_spread(runs) == (0.5, 1.0)
    assert sweep_table(runs).splitlines()[2].startswith("| 0.8 | 70.50 |")


def test_the_reference_run_enters_the_seed_spread_with_its_own_metrics():
    stale = {"seed": "42", "nll": "96.0", "kl": "31.0"}
    other = {"seed": "1", "nll": "96.5", "kl": "30.5"}
    reference = {"seed": "42", "nll": 96.25, "kl": 31.25}
    assert seed_runs([stale, other], reference) == [other, reference]  # metrics.json, not an older row
    assert seed_runs([stale, other], None) == [stale, other]  # the workspace holds another run: the file as is


def test_the_committed_readme_holds_the_committed_numbers(repo_root):
    readme = (repo_root / "README.md").read_text()
    found, skipped = blocks(repo_root / "reports", repo_root / "models" / "model.pt", repo_root / PARAMS_FILE)
    assert skipped is None, skipped
    expected = {"results", "reference", "seed-spread", "tests"}
    assert expected <= set(found), "a committed file is missing"
    for name, text in found.items():
        assert f"<!-- {name}:begin -->\n{text}\n<!-- {name}:end -->" in readme, f"README's {name} block is stale"


def test_an_experiment_in_the_workspace_never_reaches_the_readme(repo_root, tmp_path):
    params, model = tmp_path / PARAMS_FILE, tmp_path / "model.pt"
    params.write_text((repo_root / PARAMS_FILE).read_text().replace("epochs: 120 ", "epochs: 2   "))
    assert not_the_reference_run(repo_root / "models" / "model.pt", params) == \
        f"{params} sets other values than the reference run (epochs)"
    record = torch.load(repo_root / "models" / "model.pt", weights_only=True)
    record["params"]["epochs"] = 2
    torch.save(record, model)
    assert not_the_reference_run(model, repo_root / PARAMS_FILE) == \
        f"{model} was trained with other params than the reference run (epochs)"
    shutil.copytree(repo_root / "reports", tmp_path / "reports")
    found, skipped = blocks(tmp_path / "reports", model, repo_root / PARAMS_FILE)
    assert skipped and "results" not in found and "reference" not in found


def test_the_readme_is_short_and_its_prose_numbers_are_the_codes(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert len(readme.splitlines()) <= 200  # what it is, two commands, results, experiments, errors: no more
    defaults = Params()
    assert f"(β = {defaults.beta:g}, {defaults.z_dim} latent dimensions)" in readme
    assert f"Test set ({MNIST_TEST_IMAGES:,} images)" in readme
    assert f"betavae sample      -n {grids.SAMPLES} --seed {defaults.seed} " in readme
    with (repo_root / "reports" / "rate_distortion.csv").open() as sweep:
        epochs = {row["epochs"] for row in csv.DictReader(sweep)}
    results = (repo_root / "docs" / "results.md").read_text()
    assert re.search(rf"β sweep \({epochs.pop()} epochs each", results) and not epochs


def test_the_github_workflow_passes_actionlint(repo_root, run):
    linter = shutil.which("actionlint") or str(repo_root / ".venv" / "bin" / "actionlint")
    assert run([linter, ".github/workflows/ci.yml"], repo_root).returncode == 0
    workflow = (repo_root / ".github" / "workflows" / "ci.yml").read_text()
    assert "run: bash .ci/run" in workflow and "run: make test" in workflow


def test_a_recorded_experiment_keeps_its_params_and_test_metrics_and_fills_the_literature_row(repo_root):
    """scripts/record_experiment.py reads the experiment's committed params.yaml and metrics file."""
    params = "beta: 1.0\nz_dim: 32\nepochs: 120\nchannels_last: true\ndata:\n  binarize: dynamic\nnot_a_param: 3\n"
    metrics = json.dumps({"test": {"recon": 60.0}, "binarized": {"nll": 85.5, "importance_samples": 5000}})
    recorded = record("binarized-beta1", "abc1234", params, metrics, "dvc exp run ...")
    assert recorded["params"] == {"beta": 1.0, "z_dim": 32, "epochs": 120, "channels_last": True,
                                  "data.binarize": "dynamic"}
    assert recorded["metrics"] == {"test.recon": 60.0, "binarized.nll": 85.5, "binarized.importance_samples": 5000}
    reference = json.loads((repo_root / "reports" / "metrics.json").read_text())
    ours = literature_table(recorded, reference).splitlines()[2]
    assert ours == ("| This repo: conv VAE, β = 1, 32-d latent, 120 epochs, K = 5000 | dynamic | **85.50** | "
                    "`dvc exp run ...` |")
