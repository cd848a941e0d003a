from pathlib import Path

import pytest
import yaml

from betavae.params import Params, ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_yaml_matches_the_spec_defaults():
    params = load_params(REPO / "params.yaml")
    assert (params.epochs, params.beta, params.z_dim, params.batch_size) == (120, 0.8, 32, 256)
    assert (params.base_lr, params.max_lr, params.warmup_epochs) == (1e-4, 3e-4, 10)
    assert (params.kl_anneal_epochs, params.weight_decay, params.grad_clip) == (20, 1e-5, 1.0)


def test_committed_params_yaml_sets_every_key_explicitly():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Params.__dataclass_fields__)


def test_empty_file_gives_defaults():
    assert parse_params(None) == Params()


def test_params_are_frozen():
    with pytest.raises(AttributeError):
        Params().beta = 2.0


def test_int_accepted_for_float_because_dvc_exp_run_writes_beta_4_as_int():
    params = parse_params({"beta": 4})
    assert params.beta == 4.0 and isinstance(params.beta, float)


@pytest.mark.parametrize("raw, message", [
    ({"bta": 1.0}, "unknown key bta (did you mean beta?)"),
    ({"augment": {"rotate": 5}}, "unknown key augment.rotate (did you mean augment.rotation?)"),
    ({"zzz": 1}, "unknown key zzz (valid keys: seed, epochs"),
    ({"beta": "abc"}, "beta must be float, got 'abc'"),
    ({"epochs": 2.5}, "epochs must be int, got 2.5"),
    ({"epochs": True}, "epochs must be int, got True"),
    ({"channels_last": "yes"}, "channels_last must be bool"),
    ({"beta": float("nan")}, "beta must be a finite number"),
    ({"augment": 3}, "augment must be a mapping"),
    ({"beta": -1}, "beta must be >= 0 (got -1.0)"),
    ({"z_dim": 0}, "z_dim must be >= 1 (got 0)"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"batch_size": 55_001}, "batch_size must not exceed the training images"),
    ({"base_lr": 0}, "base_lr must be > 0"),
    ({"max_lr": -1e-3}, "max_lr must be > 0"),
    ({"base_lr": 1e-3, "max_lr": 1e-4}, "base_lr must be <= max_lr"),
    ({"warmup_epochs": 121}, "warmup_epochs must be in [0, epochs]"),
    ({"data": {"val_size": 60_000}}, "data.val_size must be >= 1 and smaller than the training images"),
    ({"data": {"limit": 1000, "val_size": 1000}}, "data.val_size must be >= 1 and smaller"),
    ({"augment": {"rotation": 181}}, "augment.rotation must be in [0, 180]"),
    ({"augment": {"rotation": -1}}, "augment.rotation must be in [0, 180]"),
    ({"augment": {"translate": 1.0}}, "augment.translate must be in [0, 1)"),
    ({"augment": {"interpolation": "bicubic"}}, "augment.interpolation must be one of nearest, bilinear"),
    ({"augment": {"interpolation": 1}}, "augment.interpolation must be str"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
    ({"eval": {"iw_samples": 0}}, "eval.iw_samples must be >= 1"),
])
def test_bad_values_are_rejected_naming_the_key(raw, message):
    with pytest.raises(ParamsError) as error:
        parse_params(raw, source="params.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("params.yaml: ")
    assert "\n" not in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
