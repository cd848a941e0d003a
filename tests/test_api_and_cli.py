"""The trained-model API (betavae/uses/api.py) and the `betavae` command (betavae/uses/cli.py), which runs
in-process here through cli.main."""

from __future__ import annotations

import argparse
import csv
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from betavae import errors
from betavae.core import grids, idx
from betavae.pipeline import pictures
from betavae.pipeline.params import PARAMS_FILE, load_params
from betavae.speed import runtime
from betavae.training.loop import train
from betavae.training.state import Outputs
from betavae.uses import api, cli

LATENT_DIM = 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, make_mnist, tiny_parsed):
    """A tiny model trained for one epoch."""
    root = tmp_path_factory.mktemp("model")
    make_mnist(root / "mnist")
    train(tiny_parsed(epochs=1, z_dim=LATENT_DIM), root / "mnist", Outputs(root / "model.pt", root / "state.pt",
                                                                           root / "live"), log=lambda _: None)
    return root / "model.pt"


@pytest.fixture(scope="module")
def vae(model_path):
    return api.load(model_path, device="cpu")


@pytest.fixture
def digits(make_mnist, tmp_path):
    make_mnist(tmp_path / "mnist")
    return torch.from_numpy(idx.read_images(tmp_path / "mnist" / idx.TEST_IMAGES)[:5].copy())


@pytest.mark.parametrize("form", [
    lambda d: d,  # uint8 (N, 28, 28)
    lambda d: d.unsqueeze(1),  # uint8 (N, 1, 28, 28)
    lambda d: d.float() / 255,  # float in [0, 1]
    lambda d: d.numpy(),  # a numpy array
])
def test_every_accepted_image_form_encodes_to_the_same_posterior(vae, digits, form):
    mean, logvar = vae.encode(form(digits))
    reference, _ = vae.encode(digits)
    assert mean.shape == logvar.shape == (5, LATENT_DIM)
    assert torch.allclose(mean, reference, atol=1e-6)


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 32, 32, dtype=torch.uint8),
     r"must have shape \(N, 28, 28\) or \(N, 1, 28, 28\).*got \(2, 32, 32\)"),
    (torch.zeros(28, 28), r"got \(28, 28\)"),
    (torch.zeros(0, 28, 28), "with N >= 1"),
    (torch.full((1, 28, 28), 255.0), r"float images must lie in \[0, 1\]; got values from 255 to 255 \(pass uint8"),
    (torch.zeros(1, 28, 28, dtype=torch.int64), "must be uint8 .* or float .*; got torch.int64"),
])
def test_images_of_the_wrong_shape_type_or_range_are_refused_saying_what_they_were(vae, images, message):
    with pytest.raises(api.ImageError, match=message):
        vae.encode(images)


def test_decode_sample_and_reconstruct_give_pixel_probabilities(vae, digits):
    pictures = vae.decode(torch.zeros(3, LATENT_DIM))
    assert pictures.shape == (3, 1, 28, 28) and pictures.min() >= 0 and pictures.max() <= 1
    assert torch.equal(vae.sample(6, seed=1), vae.sample(6, seed=1))
    assert not torch.equal(vae.sample(6, seed=1), vae.sample(6, seed=2))
    assert vae.reconstruct(digits).shape == (5, 1, 28, 28)
    with pytest.raises(api.LatentError, match=r"latents must have shape \(N, 4\) with N >= 1; got \(3, 5\)"):
        vae.decode(torch.zeros(3, 5))


@pytest.mark.parametrize("call, message", [
    (lambda vae: vae.traversal(base=torch.zeros(5)), r"base must have shape \(4,\) with N >= 1; got \(5,\)"),
    (lambda vae: vae.traversal(base=torch.zeros(1, 4)), r"base must have shape \(4,\)"),
    (lambda vae: vae.traversal(base=torch.full((4,), float("nan"))), "base must be finite"),
    (lambda vae: vae.traversal(dimensions=[4]), r"dimensions must be a non-empty list of integers in \[0, 4\)"),
    (lambda vae: vae.traversal(values=torch.zeros(2, 2)), r"values must have shape \(N,\)"),
    (lambda vae: vae.decode("abc"), "latents must be numbers"),
    (lambda vae: vae.sample(0), "the number of samples must be an integer >= 1; got 0"),
    (lambda vae: vae.sample(10**12), "1000000000000 samples needs about .* GiB of memory, more than"),
    (lambda vae: vae.traversal_figure(rows=5), r"rows \(of the 4 latent dimensions\) must be an integer in \[1, 4\]"),
])
def test_latent_codes_that_do_not_fit_the_model_are_refused_saying_what_they_were(vae, call, message):
    with pytest.raises(api.LatentError if "memory" not in message else api.runtime.DeviceError, match=message):
        call(vae)


def test_the_model_file_describes_its_latent_code(vae):
    assert vae.latent_dim == LATENT_DIM and len(vae.latent_kl) == LATENT_DIM
    order = vae.dimensions_by_kl()
    assert sorted(order) == list(range(LATENT_DIM))
    assert all(vae.latent_kl[a] >= vae.latent_kl[b] for a, b in zip(order, order[1:]))
    rows = vae.traversal(dimensions=order[:2])
    assert rows.shape == (2 * len(api.TRAVERSAL_VALUES), 1, 28, 28)


@pytest.fixture
def betavae(capsys):
    """betavae(*args) -> the `betavae` command's status, stdout and stderr, run in this process."""
    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            cli.main([str(arg) for arg in args])
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, out, err)
    return run


def _png(path, pixels) -> None:
    """pixels (C, H, W) uint8 -> a PNG file: grey for C = 1, RGB for C = 3."""
    array = pixels.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if pixels.shape[0] == 1 else array).save(path)


@pytest.fixture
def png_digits(tmp_path, digits):
    paths = [tmp_path / f"digit{i}.png" for i in range(3)]
    for path, digit in zip(paths, digits):
        _png(path, digit.unsqueeze(0))
    return paths


def test_sample_writes_a_grid_of_the_requested_size(model_path, tmp_path, betavae):
    out = tmp_path / "samples.png"
    result = betavae("sample", "--model", model_path, "-n", 10, "--seed", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.mode == "L" and image.size == (2 * (8 * 30 + 2), 2 * (2 * 30 + 2))  # 2 rows of 8, scale 2


def test_reconstruct_reads_png_files_and_idx_files(model_path, tmp_path, png_digits, make_mnist, betavae):
    result = betavae("reconstruct", "--model", model_path, "--images", *png_digits, "--out", tmp_path / "a.png")
    assert result.returncode == 0, result.stderr
    make_mnist(tmp_path / "mnist")
    result = betavae("reconstruct", "--model", model_path, "--images", tmp_path / "mnist" / idx.TEST_IMAGES,
                      "--out", tmp_path / "b.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b.png").stat().st_size > (tmp_path / "a.png").stat().st_size


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_encode_writes_the_posterior_of_each_image(model_path, tmp_path, png_digits, vae, suffix, betavae):
    out = tmp_path / f"latents{suffix}"
    assert betavae("encode", "--model", model_path, "--images", *png_digits, "--out", out).returncode == 0
    mean, logvar = vae.encode(api.read_images(png_digits))
    # The same kernels on the CPU; on a GPU, two processes may get different cuDNN algorithms (and TF32)
    tolerance = 1e-5 if vae.device.type == "cpu" else 1e-3
    if suffix == ".npy":
        saved = np.load(out)
        assert saved.shape == (3, 2, LATENT_DIM) and np.allclose(saved[:, 0], mean.numpy(), atol=tolerance)
    else:
        rows = list(csv.DictReader(out.open()))
        assert [row["image"] for row in rows] == ["digit0.png", "digit1.png", "digit2.png"]
        assert float(rows[1]["logvar_3"]) == pytest.approx(logvar[1, 3].item(), abs=tolerance)


def test_an_image_named_like_a_formula_is_written_to_the_table_as_text(model_path, tmp_path, png_digits, betavae):
    """A file named `=SUM(1,2).png` must not become a live formula when latents.csv is opened in a
    spreadsheet."""
    named = tmp_path / "=SUM(1,2).png"
    named.write_bytes(png_digits[0].read_bytes())
    out = tmp_path / "latents.csv"
    assert betavae("encode", "--model", model_path, "--images", named, "--out", out).returncode == 0
    row = next(csv.DictReader(out.open()))
    assert row["image"] == "'" + named.name
    assert np.isfinite(float(row["mean_0"]))  # the numbers beside it are written as numbers


def test_traverse_draws_around_the_prior_or_an_image(model_path, tmp_path, png_digits, betavae):
    assert betavae("traverse", "--model", model_path, "--out", tmp_path / "t.png").returncode == 0
    result = betavae("traverse", "--model", model_path, "--images", *png_digits, "--index", 2,
                      "--rows", 2, "--out", tmp_path / "u.png")
    assert result.returncode == 0, result.stderr
    assert "traversal written" in result.stdout and (tmp_path / "u.png").stat().st_size > 5_000


@pytest.mark.parametrize("command", ["sample", "reconstruct", "encode", "traverse", "digits", "check-params",
                                     "explore"])
def test_every_subcommand_has_help(command, betavae):
    result = betavae(command, "--help")
    assert result.returncode == 0 and "usage: betavae" in result.stdout


def test_digits_writes_test_images_as_pngs_that_the_commands_read_back(tmp_path, make_mnist, betavae):
    make_mnist(tmp_path / "mnist")
    source = tmp_path / "mnist" / idx.TEST_IMAGES
    (tmp_path / "digits").mkdir()
    result = betavae("digits", "--images", source, "--first", 3, "--out-dir", tmp_path / "digits")
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "digits").glob("*.png"))
    assert [path.name for path in written] == ["digit-0000.png", "digit-0001.png", "digit-0002.png"]
    assert torch.equal(api.read_images(written), api.read_images([source])[:3])


@pytest.mark.parametrize("make_args, message", [
    (lambda m, t, p: ["sample", "--model", t / "none.pt", "--out", t / "s.png"], "none.pt: no such file"),
    (lambda m, t, p: ["sample", "--model", _damaged(m, t), "--out", t / "s.png"],
     "damaged.pt: unreadable, truncated or not a torch checkpoint"),
    (lambda m, t, p: ["sample", "--model", m, "--out", _rgb(t) / "s.png"], "rgb.png is not a directory"),
    (lambda m, t, p: ["reconstruct", "--model", m, "--images", _rgb(t), "--out", t / "r.png"],
     "rgb.png: a 28x28 RGB PNG; expected a 28x28 8-bit greyscale PNG"),
    (lambda m, t, p: ["reconstruct", "--model", m, "--images", _big(t), "--out", t / "r.png"],
     "big.png: a 32x30 image; expected a 28x28 8-bit greyscale PNG"),
    (lambda m, t, p: ["encode", "--model", m, "--images", *p, "--out", t / "l.txt"],
     "latents are written as .csv or .npy"),
    (lambda m, t, p: ["encode", "--model", m, "--images", t / "nothing", "--out", t / "l.csv"],
     "nothing: no such file"),
    (lambda m, t, p: ["traverse", "--model", m, "--images", *p, "--index", 7, "--out", t / "t.png"],
     "--index 7: the images hold 3 images, numbered from 0"),
    (lambda m, t, p: ["traverse", "--model", m, "--rows", 5, "--out", t / "t.png"],
     "--rows 5: the model has 4 latent dimensions"),
    (lambda m, t, p: ["sample", "--model", m, "-n", 1_000_000_000, "--out", t / "s.png"],
     "argument -n/--count: must be >= 1 and <= 10000, got 1000000000"),
    (lambda m, t, p: ["sample", "--model", m, "--seed", -1, "--out", t / "s.png"],
     "argument --seed: must be >= 0 and <= 9223372036854775807, got -1"),
    (lambda m, t, p: ["reconstruct", "--model", m, "--images", _truncated(t), "--out", t / "r.png"],
     "cut.png: not a readable PNG image"),
    (lambda m, t, p: ["reconstruct", "--model", m, "--images", _text(t), "--out", t / "r.png"],
     "text.png: not a readable PNG image"),
    (lambda m, t, p: ["sample", "--model", _nan(m, t), "--out", t / "s.png"],
     "nan.pt: the weights hold NaN or infinity"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(model_path, tmp_path, png_digits, make_args, message, betavae):
    result = betavae(*make_args(model_path, tmp_path, png_digits))
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("betavae: error: ")
    assert message.format(t=tmp_path) in line


def _damaged(model, tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(model.read_bytes()[:5000])
    return damaged


def _truncated(tmp_path):
    noise = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    _png(tmp_path / "whole.png", noise)  # incompressible, so the cut falls inside the pixel data
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    return tmp_path / "cut.png"


def _text(tmp_path):
    (tmp_path / "text.png").write_text("not an image at all")
    return tmp_path / "text.png"


def _nan(model, tmp_path):
    record = torch.load(model, weights_only=True)
    record["model"]["decoder.2.weight"].fill_(float("inf"))
    torch.save(record, tmp_path / "nan.pt")
    return tmp_path / "nan.pt"


def _rgb(tmp_path):
    _png(tmp_path / "rgb.png", torch.zeros(3, 28, 28, dtype=torch.uint8))
    return tmp_path / "rgb.png"


def _big(tmp_path):
    _png(tmp_path / "big.png", torch.zeros(1, 30, 32, dtype=torch.uint8))
    return tmp_path / "big.png"


def test_check_params_validates_without_running_anything(tmp_path, repo_root, betavae):
    assert betavae("check-params", "--params", repo_root / PARAMS_FILE).stdout.strip().endswith("is valid")
    bad = tmp_path / PARAMS_FILE
    shutil.copy(repo_root / PARAMS_FILE, bad)
    bad.write_text(bad.read_text() + "bta: 1\n")
    result = betavae("check-params", "--params", bad)
    assert result.returncode == 1
    assert result.stderr.strip() == f"betavae: error: {bad}: unknown key bta (did you mean beta?)"


def test_the_console_script_is_installed_and_checks_params_without_torch_or_plotting(repo_root):
    found = shutil.which("betavae", path=str(Path(sys.executable).parent))
    assert found, "betavae is not installed beside this Python (make setup)"
    assert subprocess.run([found, "--help"], capture_output=True, text=True).returncode == 0
    probe = ("import sys; from betavae.uses import cli\n"
             "try: cli.main(['check-params', '--params', sys.argv[1]])\n"
             "finally: print(sorted(m for m in ('torch', 'matplotlib', 'pandas', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe, str(repo_root / PARAMS_FILE)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "[]", result


def test_the_committed_model_samples_exactly_the_committed_figure(repo_root, tmp_path, betavae):
    model = repo_root / "models" / "model.pt"
    if not model.exists():
        pytest.skip("no committed reference run")
    seed = load_params(repo_root / PARAMS_FILE).seed
    out = tmp_path / "samples.png"
    assert betavae("sample", "--model", model, "-n", grids.SAMPLES, "--seed", seed, "--device", "cpu",
                    "--out", out).returncode == 0
    assert out.read_bytes() == (repo_root / "reports" / "figures" / "samples.png").read_bytes()


@pytest.mark.parametrize("args, message, see", [
    (["sample", "--output", "x.png"], "--output (did you mean --out?)", "betavae sample"),
    (["sample", "--out", "x.png", "--sed", "3"], "--sed (did you mean --seed?)", "betavae sample"),
    (["encode", "--imgs", "a.png", "--out", "l.csv"], "--imgs (did you mean --images?)", "betavae encode"),
    (["traverse", "--out=t.png", "--imdex", "2"], "--imdex (did you mean --index?)", "betavae traverse"),
    (["digits", "--outdir", "d"], "--outdir (did you mean --out-dir?)", "betavae digits"),
    (["check-params", "--prams=p.yaml"], "--prams=p.yaml (did you mean --params?)", "betavae check-params"),
    (["explore", "--prot", "0"], "--prot (did you mean --port?)", "betavae explore"),
    (["--verbose", "sample", "--out", "x.png"], "--verbose", "betavae"),
    (["sample", "--out", "x.png", "extra.png"], "extra.png", "betavae sample"),
])
def test_an_unknown_option_is_named_first_with_the_closest_known_one(args, message, see, tmp_path, monkeypatch,
                                                                      betavae):
    """argparse would first say that a required option (the one the typo meant) is missing."""
    monkeypatch.chdir(tmp_path)
    result = betavae(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"betavae: error: unrecognized arguments: {message} (see `{see} --help`)\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["sample"], "the following arguments are required: --out (see `betavae sample --help`)"),
    ([], "the following arguments are required: COMMAND (see `betavae --help`)"),
    (["sample", "--output=x.png", "--seed", "-1"], "argument --seed: must be >= 0"),
])
def test_other_usage_errors_are_argparses_own_on_one_line(args, message, betavae):
    result = betavae(*args)
    assert result.returncode == 2 and result.stderr.startswith(f"betavae: error: {message}")
    assert result.stderr.count("\n") == 1


def test_help_is_printed_once(betavae):
    result = betavae("sample", "--help")
    assert result.returncode == 0 and result.stdout.count("usage: betavae sample") == 1


def test_each_commands_out_help_names_its_own_formats(betavae):
    def out_help(command: str) -> str:
        text = betavae(command, "--help").stdout
        return " ".join(text[text.index("\n  --out OUT"):text.index("\n  --device")].split())

    assert out_help("sample") == out_help("reconstruct") == (
        f"--out OUT output file, in the format its suffix names: {', '.join(pictures.PIXEL_FORMATS)}")
    assert out_help("traverse").endswith(f"names: {', '.join(pictures.FIGURE_FORMATS)}")
    assert out_help("encode").endswith("names: .csv, .npy")


@pytest.mark.parametrize("args, option, default", [
    (["sample", "--out", "x.png"], "--model", "models/model.pt"),
    (["traverse", "--out", "x.png", "--device", "cpu"], "--model", "models/model.pt"),
    (["digits", "--out-dir", "digits"], "--images", "data/mnist/t10k-images-idx3-ubyte"),
    (["explore", "--port", "0"], "--dir", "reports/explorer"),
    (["check-params"], "--params", "params.yaml"),
])
def test_a_default_path_missing_outside_the_repository_says_where_it_is_relative_to(args, option, default, tmp_path,
                                                                                    monkeypatch, betavae):
    monkeypatch.chdir(tmp_path)
    result = betavae(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == (f"betavae: error: {default}: not in the current directory ({tmp_path}); the default "
                             f"{option} is relative to the repository's root: run betavae there, or pass {option} "
                             "PATH\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # at a repository's root the file is simply missing
    assert betavae(*args).stderr.startswith(f"betavae: error: {default}: ")
    assert "relative" not in betavae(*args).stderr


def test_cuda_without_cuda_is_refused_in_the_command_lines_words(model_path, tmp_path, monkeypatch, betavae):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = betavae("sample", "--model", model_path, "--device", "cuda", "--out", tmp_path / "s.png")
    assert result.returncode == 1 and result.stderr == (
        "betavae: error: --device cuda was requested, but CUDA is not available on this machine (use --device auto "
        "or --device cpu)\n")
    with pytest.raises(runtime.DeviceError, match=r'^device="cuda" was requested, .* \(use device="auto" or'):
        api.load(model_path, device="cuda")
    assert not (tmp_path / "s.png").exists()


def test_check_params_on_the_smoke_run_says_what_to_set(tmp_path, repo_root, betavae):
    smoke = tmp_path / PARAMS_FILE
    smoke.write_text((repo_root / PARAMS_FILE).read_text().replace("limit: 0", "limit: 512").replace(
        "epochs: 120", "epochs: 1"))
    result = betavae("check-params", "--params", smoke)
    assert result.returncode == 1 and result.stderr == (
        f"betavae: error: {smoke}: data.val_size must be >= 1 and smaller than data.limit (512) (got 5000): set it "
        "between 1 and 511, e.g. -S data.val_size=64\n")


def test_check_params_checks_what_dvc_exp_run_would_run_with_its_overrides(tmp_path, repo_root, betavae):
    """`betavae check-params -S KEY=VALUE`: DVC's own refusal of a misspelt key names no alternative."""
    params = tmp_path / PARAMS_FILE
    shutil.copy(repo_root / PARAMS_FILE, params)
    before = params.read_bytes()
    typo = betavae("check-params", "--params", params, "-S", "bta=1.0")
    assert typo.returncode == 1
    assert typo.stderr == "betavae: error: -S bta=1.0: 'bta' is not a param of params.yaml (did you mean beta?)\n"
    smoke = betavae("check-params", "--params", params, "-S", "epochs=1", "--set", "data.limit=512")
    assert smoke.returncode == 1 and smoke.stderr.endswith("set it between 1 and 511, e.g. -S data.val_size=64\n")
    fixed = betavae("check-params", "--params", params, "-S", "epochs=1", "-S", "data.limit=512",
                    "-S", "data.val_size=64")
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.strip().endswith("with epochs=1, data.limit=512, data.val_size=64 is valid")
    negative = betavae("check-params", "--params", params, "-S", "beta=-1")
    assert negative.stderr.endswith("beta must be >= 0 (got -1.0)\n")
    assert params.read_bytes() == before


class _Parsed(BaseException):
    """Raised in place of parsing: carries the parser an entry point built."""


def _entry_point_parsers(repo_root, monkeypatch) -> dict[str, argparse.ArgumentParser]:
    """The parser of `betavae` and of every stage and script that reads its command line with the project's
    parser, as each builds it (main() stops where it would parse; one that does not use the project's parser,
    such as the set-up script, is not run)."""
    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    monkeypatch.setattr(errors.ArgumentParser, "parse_args", capture)
    parsers = {"betavae": cli._parser()}
    for folder in ("stages", "scripts"):
        for path in sorted((repo_root / folder).glob("[a-z]*.py")):
            module = importlib.import_module(f"{folder}.{path.stem}")
            if getattr(module, "ArgumentParser", None) is not errors.ArgumentParser:
                continue
            monkeypatch.setattr(sys, "argv", [path.name])
            with pytest.raises(_Parsed) as parsed:
                module.main()
            parsers[f"{folder}/{path.name}"] = parsed.value.args[0]
    return parsers


def _without_help(parser: argparse.ArgumentParser, name: str) -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [f"{name} {choice.dest}" for choice in action._choices_actions if not choice.help]
            for command, subparser in action.choices.items():
                found += _without_help(subparser, f"{name} {command}")
        elif not action.help:
            found.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return found


def test_every_option_of_every_command_line_has_help(repo_root, monkeypatch):
    parsers = _entry_point_parsers(repo_root, monkeypatch)
    assert len(parsers) > 10 and {"betavae", "stages/train.py", "scripts/likelihood_study.py"} <= set(parsers)
    assert [missing for name, parser in parsers.items() for missing in _without_help(parser, name)] == []


def test_every_help_keeps_its_descriptions_lines(repo_root, monkeypatch, capsys):
    """A docstring's examples stay one to a line (they were run together into one paragraph)."""
    for name, parser in _entry_point_parsers(repo_root, monkeypatch).items():
        lines = [line for line in (parser.description or "").splitlines() if line.strip()]
        assert all(f"\n{line}\n" in parser.format_help() for line in lines), name
    likelihood = _entry_point_parsers(repo_root, monkeypatch)["scripts/likelihood_study.py"].format_help()
    assert "\n    python scripts/likelihood_study.py --variants elbo --epochs 50\n" in likelihood
