"""The README's tables are the committed files' numbers (scripts/readme_results.py fills them)."""

import pytest

from scripts.readme_results import fill, results_table, seed_table, sweep_table, tables

METRICS = {"recon": 70.5, "kl": 28.25, "loss": 93.1, "neg_elbo": 98.75, "nll": 96.0, "active_units": 17,
           "kl_dims_90": 12}


def test_fill_replaces_only_the_marked_block():
    readme = "intro\n<!-- results:begin -->\nold table\n<!-- results:end -->\noutro\n"
    filled = fill(readme, "results", results_table(METRICS))
    assert filled.startswith("intro\n") and filled.endswith("<!-- results:end -->\noutro\n")
    assert "old table" not in filled
    assert "| Reconstruction −log p(x\\|z) | 71.16 | 70.50 | lower is better |" in filled
    assert all(line.count(" | ") == 3 for line in results_table(METRICS).splitlines()[2:])  # four cells a row
    assert "| Active units (of z_dim) | — | 17 |" in filled
    assert fill(filled, "results", results_table(METRICS)) == filled


def test_fill_refuses_a_readme_without_exactly_one_block():
    with pytest.raises(ValueError, match="exactly one"):
        fill("no markers", "results", "table")


def test_seed_and_sweep_tables_show_each_run_and_the_spread():
    runs = [{"seed": "42", "beta": "0.8", **{k: str(v) for k, v in METRICS.items()}},
            {"seed": "1", "beta": "0.8", **{k: str(v + 1) for k, v in METRICS.items()}}]
    seeds = seed_table(runs).splitlines()
    assert seeds[2].startswith("| 1 | 71.50 | 29.25 |") and seeds[3].startswith("| 42 | 70.50 |")
    assert seeds[4] == "| spread (max − min) | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | | |"
    assert sweep_table(runs).splitlines()[2].startswith("| 0.8 | 70.50 |")


def test_the_committed_readme_holds_the_committed_numbers(repo_root):
    readme = (repo_root / "README.md").read_text()
    found = tables(repo_root / "reports" / "metrics.json", repo_root / "reports" / "seeds.csv",
                   repo_root / "reports" / "rate_distortion.csv")
    assert set(found) == {"results", "seed", "sweep"}, "a committed result file is missing"
    for name, table in found.items():
        assert f"<!-- {name}:begin -->\n{table}\n<!-- {name}:end -->" in readme, f"README's {name} table is stale"
