"""Every reader of outside input, fuzzed (hypothesis; seeded, a bounded number of examples, so the
fast tier runs them): whatever the input, the answer is the project's one-line error or a success,
never another exception and never a hang. The page server's requests are fuzzed in
tests/test_explorer_server.py."""

from __future__ import annotations

import io
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from betavae.core import idx
from betavae.core.model import ARCHITECTURE, ConvVAE, ModelConfig
from betavae.errors import BetaVAEError, line
from betavae.experiments import studies
from betavae.pipeline import launch, modelfile, yamlfile
from betavae.pipeline.params import Params, parse_params
from betavae.uses import api, cli, figures

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KEYS = ["seed", "epochs", "beta", "z_dim", "batch_size", "augment", "rotation", "data", "limit", "val_size",
        "binarize", "select", "metric", "patience", "eval", "launcher", "device", "precision", "x"]
YAML_BITS = [": ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "!!python/object:os.system ", "<<: ",
             "'", '"', "#", "1e308", "-1", ".nan", ".inf", "0x10", "true", "null", "~", "2026-12-04", "? ", "|\n",
             "\t", "\x00", "é", "💥"]


def _one_line(error: BaseException) -> None:
    """The project's error, and what an entry point prints of it is one short line."""
    assert isinstance(error, BetaVAEError), f"{type(error).__name__}: {error}"
    text = line("program", error)
    assert str(error) and "\n" not in text and len(text) < 2000, text


yaml_text = st.lists(st.sampled_from(KEYS + YAML_BITS) | st.text(max_size=8), max_size=40).map("".join)


@FUZZ
@given(text=yaml_text)
def test_params_text_is_read_or_refused_in_one_line(text):
    try:
        parse_params(yamlfile.parse(text, "params.yaml"), "params.yaml")
    except BetaVAEError as error:
        _one_line(error)


@FUZZ
@given(raw=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(
                            max_size=5), inner, max_size=5), max_leaves=30))
def test_params_data_of_any_shape_is_read_or_refused_in_one_line(raw):
    try:
        parse_params({"data": raw} if isinstance(raw, dict) and "limit" in raw else raw, "params.yaml")
    except BetaVAEError as error:
        _one_line(error)


SPACE_KEYS = ["study", "objectives", "params", "fixed", "sampler", "metric", "direction", "low", "high", "log",
              "choices", "name", "seed", "beta", "z_dim", "augment", "rotation", "test.kl", "minimize"]


@FUZZ
@given(raw=st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-3, 3) | st.sampled_from(
    SPACE_KEYS), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(SPACE_KEYS), inner,
                                                                           max_size=5), max_leaves=25))
def test_search_space_data_is_read_or_refused_in_one_line(raw):
    try:
        studies.parse_space(raw, "space.yaml")
    except BetaVAEError as error:
        _one_line(error)


@FUZZ
@given(text=yaml_text)
def test_search_space_text_is_read_or_refused_in_one_line(text):
    try:
        studies.parse_space(yamlfile.parse(text, "space.yaml"), "space.yaml")
    except BetaVAEError as error:
        _one_line(error)


def test_yaml_that_expands_beyond_bounds_is_refused_quickly():
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    with pytest.raises(yamlfile.YamlError, match="expand to more than"):
        yamlfile.parse(laughs, "space.yaml")
    with pytest.raises(yamlfile.YamlError, match="nested more than"):
        yamlfile.parse("[" * 100_000 + "]" * 100_000, "params.yaml")
    with pytest.raises(yamlfile.YamlError, match="larger than"):
        yamlfile.parse("a: " + "x" * (yamlfile.MAX_BYTES + 1), "params.yaml")
    with pytest.raises(yamlfile.YamlError, match="an alias refers to a collection that contains it"):
        yamlfile.parse("&a [*a]", "params.yaml")


@FUZZ
@given(data=st.binary(max_size=64) | st.builds(
    lambda header, body: header + body,
    st.sampled_from([b"\x00\x00\x08\x03", b"\x00\x00\x08\x01", b"\x00\x00\x09\x03", b""]),
    st.binary(max_size=48)))
def test_idx_bytes_are_read_or_refused_in_one_line(data):
    try:
        idx.decode(data, "file")
    except BetaVAEError as error:
        _one_line(error)


def _png(width: int, height: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@FUZZ
@given(data=st.binary(max_size=200) | st.builds(
    lambda png, cut, flip: bytearray(png)[:cut] + bytes([flip]) + bytearray(png)[cut + 1:],
    st.sampled_from([_png(28, 28, "L"), _png(28, 28, "RGB"), _png(5, 7, "L"), _png(28, 28, "I;16")]),
    st.integers(0, 80), st.integers(0, 255)))
def test_png_bytes_are_read_or_refused_in_one_line(tmp_path, data):
    path = tmp_path / "digit.png"
    path.write_bytes(bytes(data))
    try:
        images = api.read_images([path])
        assert images.shape == (1, 28, 28) and images.dtype == torch.uint8
    except BetaVAEError as error:
        _one_line(error)


def _record() -> dict:
    model = ConvVAE(ModelConfig(latent_dim=2, dropout=0.0))
    return modelfile.ModelFile(model.config, Params(), 1, modelfile.Selection("loss", 1.0), (0.5, 0.5), None,
                               model.state_dict()).to_record()


RECORD = _record()
VALUES = st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=5) | st.just(
    torch.zeros(2)) | st.just({"latent_dim": 2}) | st.just([]) | st.just(ARCHITECTURE)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(RECORD)), VALUES, max_size=3))
def test_model_files_that_do_not_hold_together_are_refused_in_one_line(tmp_path, changes):
    torch.save({**RECORD, **changes}, tmp_path / "model.pt")
    try:
        modelfile.ModelFile.read(tmp_path / "model.pt")
    except BetaVAEError as error:
        _one_line(error)


@FUZZ
@given(cut=st.integers(0, 4000), flip=st.integers(0, 255), at=st.integers(0, 4000))
def test_damaged_model_file_bytes_are_refused_in_one_line(tmp_path, cut, flip, at):
    buffer = io.BytesIO()
    torch.save(RECORD, buffer)
    data = bytearray(buffer.getvalue())
    if at < len(data):
        data[at] = flip
    (tmp_path / "model.pt").write_bytes(bytes(data[:len(data) - cut]))
    try:
        modelfile.ModelFile.read(tmp_path / "model.pt")
    except BetaVAEError as error:
        _one_line(error)


LAUNCHER_WORDS = ["python", "torchrun", "srun", "--standalone", "--nproc-per-node", "--nnodes", "--rdzv-endpoint",
                  "--master-addr", "--master-port", "--node-rank", "--rdzv-conf", "-N", "--ntasks", "2", "-1", "0",
                  "1:4", "h:29500", "$X", "${Y}", "join_timeout=5", ";", "'", "\"", "=", "--no-python", "x.py"]


@FUZZ
@given(words=st.lists(st.sampled_from(LAUNCHER_WORDS) | st.text(string.printable, max_size=6), max_size=10))
def test_launcher_values_are_read_or_refused_in_one_line(words):
    value = " ".join(words)
    try:
        launcher = launch.parse(value)
        launcher.torchrun_arguments({"X": "2", "Y": "h"})
        launcher.srun_arguments({"X": "2", "Y": "h"})
    except BetaVAEError as error:
        _one_line(error)


CLI_WORDS = ["sample", "reconstruct", "encode", "traverse", "digits", "check-params", "explore", "--model", "--out",
             "--images", "--count", "-n", "--seed", "--device", "--index", "--rows", "--first", "--out-dir",
             "--params", "--port", "--dir", "-1", "0", "3", "99999999999999999999", "x.png", "x.jpg", "x.txt",
             "none.pt", "cuda", "gpu", "", "--help"]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(CLI_WORDS) | st.text(string.printable, max_size=6), max_size=6))
def test_command_lines_end_in_success_or_one_line_and_a_status(tmp_path, monkeypatch, capsys, words):
    monkeypatch.chdir(tmp_path)  # no model, no data here: every command that needs one says so
    with pytest.raises(SystemExit) as ended:
        cli.main(words)
        raise SystemExit(0)
    assert ended.value.code in (0, 1, 2, None)
    err = capsys.readouterr().err.strip()
    if ended.value.code not in (0, None):
        assert len(err.splitlines()) == 1 and err.startswith("betavae: error: "), err


@FUZZ
@given(value=st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.lists(
    st.floats(), max_size=4) | st.just(np.zeros((2, 28, 28), dtype=np.int64)) | st.just(torch.zeros(1, 2, 28, 28)))
def test_the_python_api_answers_anything_with_its_own_errors(trained_model, value):
    for call in (trained_model.encode, trained_model.decode, trained_model.reconstruct,
                 lambda v: trained_model.sample(v), lambda v: trained_model.sample(3, v),
                 lambda v: trained_model.traversal(dimensions=v), lambda v: trained_model.traversal(base=v),
                 lambda v: api.read_images(v), lambda v: api.load(v)):
        try:
            call(value)
        except BetaVAEError as error:
            _one_line(error)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(RECORD, path)
    return api.load(path, device="cpu")


HISTORY_BITS = ["step", "\t", "\n", "loss", "1", "2", "-1", "1.5", "nan", "inf", "1e400", " ", "x", "\r\n", "\x00", "é"]


@pytest.fixture(scope="module")
def training_log(tmp_path_factory):
    """A DVCLive folder holding every metric the history figure draws, each over epochs 1 and 2."""
    root = tmp_path_factory.mktemp("live")
    for name in figures.history_metrics():
        (root / f"{name}.tsv").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.tsv").write_text("step\tvalue\n1\t2.5\n2\t1.5\n")
    return root


@FUZZ
@given(data=st.binary(max_size=80) | st.lists(st.sampled_from(HISTORY_BITS), max_size=30).map(
    lambda bits: "".join(bits).encode("utf-8", "surrogatepass")))
def test_a_training_log_is_read_or_refused_in_one_line(training_log, data):
    log = training_log / "val" / "kl.tsv"
    kept = log.read_bytes()
    log.write_bytes(data)
    try:
        figures.read_history(training_log)
    except BetaVAEError as error:
        _one_line(error)
    finally:
        log.write_bytes(kept)
