"""params.yaml: read as DVC reads it, validated into Params, every bad value named (betavae/pipeline/params.py)."""

import dataclasses

import pytest
import torch

from betavae.core import schedules
from betavae.pipeline import dotted, overrides, yamlfile
from betavae.pipeline.params import (
    MAX_SEED,
    PARAMS_FILE,
    TRAIN,
    Params,
    ParamsError,
    load_params,
    parse_params,
    stage_params,
)


def test_the_committed_params_yaml_is_the_defaults_and_the_spec(repo_root):
    params = load_params(repo_root / PARAMS_FILE)
    assert params == Params()  # so the defaults in code cannot drift from the reference run's file
    assert (params.epochs, params.beta, params.z_dim, params.batch_size) == (120, 0.8, 32, 256)
    assert (params.base_lr, params.max_lr, params.warmup_epochs) == (1e-4, 3e-4, 10)
    assert (params.kl_anneal_epochs, params.weight_decay, params.grad_clip) == (20, 1e-5, 1.0)


def test_the_committed_params_yaml_sets_every_key_explicitly(repo_root):
    """What makes params.py inert for DVC (betavae/compat/code_dependencies.py): no stage ever runs on a default."""
    raw = yamlfile.read(repo_root / PARAMS_FILE)
    assert set(dotted.flatten(raw)) == set(dotted.flatten(Params().to_dict()))


# (text in params.yaml, what DVC's YAML 1.2 reads, what PyYAML's YAML 1.1 would have read)
DIALECT_SCALARS = [
    ("weight_decay: 1e-6", 1e-6, "1e-6"),  # what `dvc exp run -S weight_decay=1e-6` writes
    ("weight_decay: 1e-06", 1e-6, "1e-06"),
    ("beta: 1e3", 1000.0, "1e3"),
    ("seed: 017", 17, 15),
    ("seed: 08", 8, "08"),
    ("seed: 0o17", 15, "0o17"),
]


@pytest.mark.parametrize("text, dvc_reads, pyyaml_read", DIALECT_SCALARS)
def test_scalars_read_as_dvc_reads_them(tmp_path, text, dvc_reads, pyyaml_read):
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    yaml_1_1 = pytest.importorskip("yaml")  # PyYAML, which DVC's own dependencies bring
    path = tmp_path / PARAMS_FILE
    path.write_text(text + "\n")
    key = text.split(":")[0]
    assert yaml_1_1.safe_load(path.read_text())[key] == pyyaml_read != dvc_reads  # a case where they differ
    assert dvc_parse_yaml(path.read_text(), str(path))[key] == dvc_reads
    assert load_params(path).get(key) == dvc_reads


@pytest.mark.parametrize("text, message", [
    ("channels_last: yes", "channels_last must be bool, got 'yes'"),  # YAML 1.1 read yes as true
    ("compile: off", "compile must be bool, got 'off'"),
    ("seed: 1:30", "seed must be int, got '1:30'"),  # YAML 1.1 read a base-60 number, 90
])
def test_scalars_yaml_1_1_read_otherwise_are_refused_as_dvc_sees_them(tmp_path, text, message):
    path = tmp_path / PARAMS_FILE
    path.write_text(text + "\n")
    with pytest.raises(ParamsError, match=f"^{path}: {message}"):
        load_params(path)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_file_is_refused_rather_than_silently_using_every_default(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match="the file is empty"):
        load_params(path)


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
    ({"batch_size": 55_001}, "batch_size must not exceed the 55000 training images"),
    ({"base_lr": 0}, "base_lr must be > 0"),
    ({"max_lr": -1e-3}, "max_lr must be > 0"),
    ({"base_lr": 1e-3, "max_lr": 1e-4}, "base_lr must be <= max_lr (0.0001)"),
    ({"warmup_epochs": -1}, "warmup_epochs must be in [0, 100000]"),
    ({"data": {"val_size": 60_000}}, "data.val_size must be >= 1 and smaller than MNIST's 60000 training images"),
    ({"data": {"val_size": 0}}, "data.val_size must be >= 1 and smaller"),
    ({"data": {"limit": 1000, "val_size": 1000}}, "data.val_size must be >= 1 and smaller than data.limit (1000)"),
    ({"data": {"limit": 1}}, "data.limit must be 0 (all) or in [2, 60000]"),
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
    ({"launcher": "mpirun -n 2"}, "launcher is not usable: must be `python`, or `[srun OPTIONS] torchrun OPTIONS`"),
    ({"launcher": "python; touch PWNED"}, "launcher is not usable: must be `python`"),
    ({"launcher": "torchrun --nproc-per-node 0"},
     "launcher is not usable: torchrun option --nproc-per-node '0': must be"),
    ({"launcher": "torchrun --nproc-per-node 3"}, "batch_size must be divisible by the 3 processes"),
])
def test_bad_values_are_rejected_naming_the_key(raw, message):
    with pytest.raises(ParamsError) as error:
        parse_params(raw, source="params.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("params.yaml: ")
    assert "\n" not in str(error.value)


SMOKE = {"epochs": 1, "data": {"limit": 512}}  # the obvious smoke run: -S epochs=1 -S data.limit=512


@pytest.mark.parametrize("raw, message", [
    (SMOKE, "data.val_size must be >= 1 and smaller than data.limit (512) (got 5000): set it between 1 and 511, "
            "e.g. -S data.val_size=64"),
    ({"data": {"val_size": 0}}, "data.val_size must be >= 1 and smaller than MNIST's 60000 training images (got 0): "
                                "set it between 1 and 59999, e.g. -S data.val_size=7500"),
    ({"data": {"limit": 2, "val_size": 2}, "batch_size": 1},
     "data.val_size must be >= 1 and smaller than data.limit (2) (got 2): set it between 1 and 1, "
     "e.g. -S data.val_size=1"),
    ({"data": {"limit": 512, "val_size": 300}}, "batch_size must not exceed the 212 training images, data.limit (512) "
     "less data.val_size (300) (got 256): set it to at most 212, e.g. -S batch_size=128, or data.val_size to at most "
     "256"),
    ({"data": {"limit": 200, "val_size": 64}}, "batch_size must not exceed the 136 training images, data.limit (200) "
     "less data.val_size (64) (got 256): set it to at most 136, e.g. -S batch_size=128"),
    ({"batch_size": 55_001}, "batch_size must not exceed the 55000 training images, MNIST's 60000 training images less "
     "data.val_size (5000) (got 55001): set it to at most 55000, e.g. -S batch_size=32768, or data.val_size to at "
     "most 4999"),
    ({"base_lr": 1e-3, "max_lr": 1e-4}, "base_lr must be <= max_lr (0.0001) (got 0.001): set it to at most 0.0001 "
     "(-S base_lr=0.0001), or max_lr to at least 0.001"),
    ({"launcher": "torchrun --nproc-per-node 3"}, "batch_size must be divisible by the 3 processes the launcher "
     "starts (got 256): set it to a multiple of 3, e.g. -S batch_size=255"),
    ({"launcher": "torchrun --nproc-per-node 4", "batch_size": 2}, "batch_size must be divisible by the 4 "
     "processes the launcher starts (got 2): set it to a multiple of 4, e.g. -S batch_size=4"),
])
def test_a_refusal_between_keys_says_which_value_to_set_to_what_and_its_example_is_accepted(raw, message):
    with pytest.raises(ParamsError) as error:
        parse_params(raw, source="params.yaml")
    assert str(error.value) == f"params.yaml: {message}"
    key, value = overrides.assignment(message.rsplit("-S ", 1)[1].split()[0].rstrip("),"), "-S")
    overrides.run_params(raw, {key: overrides.scalar(value, key, "-S")}, "-S")  # following the advice is enough


def test_the_smoke_run_passes_with_the_validation_size_the_refusal_suggests():
    params = parse_params({**SMOKE, "data": {"limit": 512, "val_size": 64}})
    assert (params.train_images, schedules.steps_per_epoch(params)) == (448, 1)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="no such file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.parametrize("text, where, what", [
    ("beta: 1\nseed: 2\nbeta: 3\n", "line 3, column 1", 'found duplicate key "beta"'),
    ("beta: [1, 2\n", "line 2, column 1", "expected ',' or ']'"),
    ("beta: *nowhere\n", "line 1, column 7", "found undefined alias 'nowhere'"),
    ("beta: 1\n seed: 2\n", "line 2, column 6", "mapping values are not allowed here"),
    ("beta: !code 1\n", "line 1, column 7", "could not determine a constructor for the tag '!code'"),
    ("beta: 1\n---\nbeta: 2\n", "line 2, column 1", "expected a single document in the stream but found another"),
    ('beta: "1\n', "line 2, column 1", "found unexpected end of stream"),
])
def test_malformed_yaml_is_named_by_line_and_column_in_the_parsers_words(tmp_path, text, where, what):
    """The parser's quotation of the text around the fault (several lines, a caret) is left out."""
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    with pytest.raises(ParamsError) as error:
        load_params(bad)
    message = str(error.value)
    assert message.startswith(f"{bad}: not valid YAML at {where}: ") and what in message
    assert "^" not in message and "<unicode string>" not in message and "\n" not in message


def test_the_largest_seed_is_usable_by_torch():
    params = parse_params({"seed": MAX_SEED})
    assert torch.Generator().manual_seed(params.seed).initial_seed() == MAX_SEED


def test_schedules_longer_than_training_run_as_given_with_one_warning_each():
    params = parse_params({"epochs": 3})  # the defaults warm up over 10 epochs and anneal over 20
    warnings = schedules.warnings(params)
    assert len(warnings) == 2
    assert warnings[0].startswith("warmup_epochs (10) is longer than training (3 epochs)")
    assert warnings[1].startswith("kl_anneal_epochs (20) is longer than training (3 epochs)")
    # 214 steps an epoch: the last step is at t = 3 - 1/214 epochs
    assert warnings[0].endswith("the learning rate only rises, to 0.00016 at the last step (max_lr 0.0003)")
    assert warnings[1].endswith("the KL weight ends at 0.12 at the last step, not beta (0.8)")
    assert schedules.warnings(parse_params({})) == []


def test_training_params_are_everything_but_evaluation_settings():
    assert set(stage_params(TRAIN)) == {field.name for field in dataclasses.fields(Params)} - {"eval"}
    selected = parse_params({"beta": 2.0}).training()
    assert selected["beta"] == 2.0 and selected["augment"]["rotation"] == 5.0 and "eval" not in selected
    assert parse_params({}).select_keys(["data.limit", "seed"]) == {"data": {"limit": 0}, "seed": 42}


def test_dotted_keys_name_leaves_and_groups_and_find_differences():
    first, second = {"a": 1, "g": {"x": 1, "y": 2}}, {"a": 1, "g": {"x": 3}, "b": 0}
    assert dotted.differing(first, second) == ["b", "g.x", "g.y"]
    assert dotted.get(first, "g.y") == 2 and dotted.get(first, "g.z", None) is None
    assert dotted.select(first, ["g", "a"]) == {"g": {"x": 1, "y": 2}, "a": 1}
