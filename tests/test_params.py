import threading
from pathlib import Path

import pytest
import torch
import yaml

from betavae.params import (
    MAX_SEED,
    TRAINING_PARAMS,
    Params,
    ParamsError,
    Watch,
    check_file,
    load_params,
    parse_params,
    schedule_warnings,
)

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_yaml_matches_the_spec_defaults():
    params = load_params(REPO / "params.yaml")
    assert (params.epochs, params.beta, params.z_dim, params.batch_size) == (120, 0.8, 32, 256)
    assert (params.base_lr, params.max_lr, params.warmup_epochs) == (1e-4, 3e-4, 10)
    assert (params.kl_anneal_epochs, params.weight_decay, params.grad_clip) == (20, 1e-5, 1.0)


def test_committed_params_yaml_sets_every_key_explicitly():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Params.__dataclass_fields__)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_file_is_refused_rather_than_silently_using_every_default(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match="the file is empty"):
        load_params(path)


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
    ({"z_dim": 0}, "z_dim must be in [1, 65536] (got 0)"),
    ({"epochs": 0}, "epochs must be in [1, 100000]"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"batch_size": 55_001}, "batch_size must not exceed the training images"),
    ({"base_lr": 0}, "base_lr must be > 0"),
    ({"max_lr": -1e-3}, "max_lr must be > 0"),
    ({"base_lr": 1e-3, "max_lr": 1e-4}, "base_lr must be <= max_lr"),
    ({"warmup_epochs": -1}, "warmup_epochs must be in [0, 100000]"),
    ({"data": {"val_size": 60_000}}, "data.val_size must be >= 1 and smaller than the training images"),
    ({"data": {"limit": 1000, "val_size": 1000}}, "data.val_size must be >= 1 and smaller"),
    ({"augment": {"rotation": 181}}, "augment.rotation must be in [0, 180]"),
    ({"augment": {"rotation": -1}}, "augment.rotation must be in [0, 180]"),
    ({"augment": {"translate": 1.0}}, "augment.translate must be in [0, 1)"),
    ({"augment": {"interpolation": "bicubic"}}, "augment.interpolation must be one of nearest, bilinear"),
    ({"augment": {"interpolation": 1}}, "augment.interpolation must be str"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
    ({"eval": {"iw_samples": 0}}, "eval.iw_samples must be in [1, 100000]"),
    ({"eval": {"iw_samples": 10**6}}, "eval.iw_samples must be in [1, 100000]"),
    ({"seed": 2**64}, "seed must be in [0, 9223372036854775807] (a 64-bit seed)"),
    ({"seed": -1}, "seed must be in [0,"),
    ({"z_dim": 100_000}, "z_dim must be in [1, 65536]"),
    ({"epochs": 10**9}, "epochs must be in [1, 100000]"),
    ({"beta": 10**400}, "beta must be a finite number"),
    ({"launcher": "mpirun -n 2"}, "launcher must be `python`, or `[srun [options]] torchrun [options]`"),
    ({"launcher": "torchrun --nproc-per-node 0"}, "launcher must be"),
    ({"launcher": "torchrun --nproc-per-node 3"}, "batch_size must be divisible by the 3 processes"),
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


def test_the_largest_seed_is_usable_by_torch():
    params = parse_params({"seed": MAX_SEED})
    assert torch.Generator().manual_seed(params.seed).initial_seed() == MAX_SEED


def test_schedules_longer_than_training_run_as_given_with_one_warning_each():
    params = parse_params({"epochs": 3})  # the defaults warm up over 10 epochs and anneal over 20
    warnings = schedule_warnings(params)
    assert len(warnings) == 2
    assert warnings[0].startswith("warmup_epochs (10) is longer than training (3 epochs)")
    assert warnings[1].startswith("kl_anneal_epochs (20) is longer than training (3 epochs)")
    assert warnings[0].endswith("the learning rate only rises, to 0.00016 (max_lr 0.0003)")
    assert warnings[1].endswith("the KL weight ends at 0.12, not beta (0.8)")
    assert schedule_warnings(parse_params({})) == []


def test_training_params_are_everything_but_evaluation_settings():
    assert set(TRAINING_PARAMS) == set(Params.__dataclass_fields__) - {"eval"}
    selected = parse_params({"beta": 2.0}).select(TRAINING_PARAMS)
    assert selected["beta"] == 2.0 and selected["augment"]["rotation"] == 5.0 and "eval" not in selected
    assert parse_params({}).select(["data.limit", "seed"]) == {"data": {"limit": 0}, "seed": 42}


def test_check_file_validates_and_returns_the_warnings(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("epochs: 3\nwarmup_epochs: 1\nkl_anneal_epochs: 1\n")
    assert check_file(path) == []
    path.write_text("epochs: 3\nbta: 1\n")
    with pytest.raises(ParamsError, match="unknown key bta"):
        check_file(path)


def _watched(tmp_path, text: str = "seed: 7\n"):
    """A params file holding text, and a Watch on it."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path, Watch(path, load_params(path))


def _write_later(path, *writes: tuple[float, str]) -> None:
    """Another writer: each text lands in path after its delay in seconds."""
    for delay, text in writes:
        threading.Timer(delay, path.write_text, [text]).start()


def test_a_watch_describes_the_file_its_writer_leaves_not_a_torn_one(tmp_path):
    path, watch = _watched(tmp_path)
    path.write_text("")  # a writer that has truncated the file and not yet written it
    _write_later(path, (0.1, "seed: 8\n"))
    with pytest.raises(ParamsError, match=r"changed while this stage ran \(seed 7 -> 8\)"):
        watch.check()


def test_a_watch_reports_where_a_series_of_writes_ends_and_ignores_a_file_put_back(tmp_path):
    path, watch = _watched(tmp_path)
    path.write_text("seed: 42\n")  # as DVC's stash of the workspace does, for a moment
    _write_later(path, (0.3, "seed: 7\n"))
    watch.check()  # put back as it was: nothing to stop for
    path.write_text("seed: 42\n")
    _write_later(path, (0.3, "seed: 7\n"), (0.6, "seed: 8\n"))  # stash, unstash, apply the new -S
    with pytest.raises(ParamsError, match=r"changed while this stage ran \(seed 7 -> 8\)"):
        watch.check()


def test_a_watch_names_what_changed_under_a_running_stage(tmp_path):
    path, watch = _watched(tmp_path)
    watch.check()  # unchanged
    path.write_text("seed: 8\n")
    with pytest.raises(ParamsError, match=r"changed while this stage ran \(seed 7 -> 8\).*dvc exp run --queue"):
        watch.check()
