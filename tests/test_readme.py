import json
from pathlib import Path

import pytest

from scripts.readme_results import BEGIN, END, fill, table

REPO = Path(__file__).resolve().parents[1]
METRICS = {"recon": 70.5, "kl": 28.25, "loss": 93.1, "neg_elbo": 98.75, "nll": 96.0, "active_units": 17}


def test_fill_replaces_only_the_marked_block():
    readme = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    filled = fill(readme, METRICS)
    assert filled.startswith("intro\n") and filled.endswith(f"{END}\noutro\n")
    assert "old table" not in filled
    assert "| Reconstruction −log p(x\\|z) | 71.16 | 70.50 | lower is better |" in filled
    assert all(line.count(" | ") == 3 for line in table(METRICS).splitlines()[2:])  # four cells a row
    assert "| Active units (of z_dim) | — | 17 |" in filled
    assert fill(filled, METRICS) == filled


def test_fill_refuses_a_readme_without_exactly_one_block():
    with pytest.raises(ValueError, match="exactly one"):
        fill("no markers", METRICS)


def test_committed_readme_table_is_the_committed_metrics_file():
    metrics_file = REPO / "reports" / "metrics.json"
    if not metrics_file.exists():
        pytest.skip("no committed reference run yet")
    metrics = json.loads(metrics_file.read_text())["test"]
    assert table(metrics) in (REPO / "README.md").read_text()
