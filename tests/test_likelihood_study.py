"""The likelihood study (scripts/likelihood_study.py, likelihood.yaml), on tiny data: each variant is
trained with the recipe, its validation bound kept per epoch, its chosen epoch scored once."""

import csv
import sys

import pytest

from scripts import likelihood_study


def test_the_committed_study_is_valid_params(repo_root):
    study = likelihood_study.read_study(repo_root / "likelihood.yaml")
    base = likelihood_study.load_params(repo_root / "params.yaml")
    for name in study["variants"]:
        params = likelihood_study.study_params(study, base, name, None)
        assert (params.beta, params.data.binarize, params.dropout, params.select.metric) == (1.0, "dynamic", 0.0, "nll")


def test_a_tiny_study_writes_its_table_and_curves(tmp_path, mnist_dir, yaml_text, tiny, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text(yaml_text(tiny()))
    (tmp_path / "study.yaml").write_text(yaml_text({
        "recipe": {"beta": 1.0, "data.binarize": "dynamic", "dropout": 0.0, "select.metric": "nll",
                   "select.samples": 4, "epochs": 2},
        "test_samples": 6, "variants": {"elbo": {}, "iwae-2": {"train_samples": 2}}}))
    monkeypatch.setattr(sys, "argv", ["likelihood_study", "--study", str(tmp_path / "study.yaml"), "--params",
                                      str(tmp_path / "params.yaml"), "--data", str(mnist_dir), "--out",
                                      str(tmp_path / "out")])
    likelihood_study.main()
    rows = list(csv.DictReader((tmp_path / "out" / "study.csv").open()))
    assert [row["variant"] for row in rows] == ["elbo", "iwae-2"] and all(row["test_samples"] == "6" for row in rows)
    curves = list(csv.DictReader((tmp_path / "out" / "curves.csv").open()))
    assert len(curves) == 2 and all(float(row["elbo"]) > 0 for row in curves)
    assert (tmp_path / "out" / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "dvc exp run -n likelihood" in capsys.readouterr().out


def test_a_variant_the_study_does_not_hold_is_named(tmp_path, repo_root, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["likelihood_study", "--study", str(repo_root / "likelihood.yaml"),
                                      "--variants", "vamp"])
    with pytest.raises(SystemExit):
        likelihood_study.main()
    assert "--variants: vamp is not a variant" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "", ".hidden", 7, "a" * 65, "a b", "x$\\frac{$"])
def test_a_variant_is_a_name_its_folder_can_take(tmp_path, name):
    """A variant names the folder its run is kept in: nothing that leaves --out or the file system's rules."""
    study = tmp_path / "study.yaml"
    study.write_text(f"recipe: {{}}\ntest_samples: 10\nvariants:\n  {name!r}: {{}}\n".replace("'", '"')
                     if isinstance(name, str) else f"recipe: {{}}\ntest_samples: 10\nvariants:\n  {name}: {{}}\n")
    with pytest.raises(likelihood_study.BetaVAEError, match="is not a usable name"):
        likelihood_study.read_study(study)
