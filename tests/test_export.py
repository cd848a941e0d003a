"""The ONNX export: onnxruntime runs the graphs as PyTorch runs the model, the stage refuses what it
cannot vouch for, and the committed explorer files are what the committed model exports to."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request

import onnx
import pytest
import torch
from onnx import numpy_helper

from betavae.core.data import load_test
from betavae.core.model import ConvVAE, ModelConfig
from betavae.pipeline import modelfile
from betavae.pipeline.modelfile import load_model
from betavae.pipeline.params import Params
from betavae.uses import explorer, onnx_graphs
from scripts import screenshot_explorer, vendor_onnxruntime_web


@pytest.fixture(scope="module")
def small_model() -> ConvVAE:
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=4, dropout=0.1))
    with torch.no_grad():  # batch-norm statistics away from the identity, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def graphs(small_model) -> dict[str, bytes]:
    return onnx_graphs.to_onnx(small_model)


def test_onnxruntime_runs_both_graphs_as_pytorch_does(small_model, graphs, make_mnist, tmp_path_factory):
    data = tmp_path_factory.mktemp("mnist")
    make_mnist(data)
    images = load_test(data).images
    differences = onnx_graphs.check(graphs, small_model, images)
    assert set(differences) == {"encoder", "decoder"}
    assert all(0 <= value <= onnx_graphs.TOLERANCE for value in differences.values())
    for graph in graphs.values():
        onnx.checker.check_model(onnx.load_from_string(graph))


def test_the_same_model_exports_to_the_same_bytes_wherever_the_code_lives(small_model, graphs):
    assert onnx_graphs.to_onnx(small_model) == graphs
    assert not any(b".py" in graph for graph in graphs.values())  # no stack traces with file paths


def _tampered(graph: bytes) -> bytes:
    """The graph with its largest weight tensor scaled by 1.01: runs fine, computes something else."""
    proto = onnx.load_from_string(graph)
    largest = max(proto.graph.initializer, key=lambda tensor: numpy_helper.to_array(tensor).size)
    largest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(largest) * 1.01, largest.name))
    return proto.SerializeToString()


@pytest.mark.parametrize("part, name", [("encoder", explorer.ENCODER), ("decoder", explorer.DECODER)])
def test_a_graph_that_computes_something_else_is_refused_in_one_line(small_model, graphs, part, name):
    broken = {**graphs, name: _tampered(graphs[name])}
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    with pytest.raises(onnx_graphs.ExportError, match=f"onnxruntime's {part} differs from PyTorch's by up to") as error:
        onnx_graphs.check(broken, small_model, images)
    assert "\n" not in str(error.value)


def test_a_graph_onnxruntime_cannot_load_is_refused(small_model, graphs):
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    with pytest.raises(onnx_graphs.ExportError, match=r"decoder\.onnx: onnxruntime cannot load it"):
        onnx_graphs.check({**graphs, explorer.DECODER: b"not a graph"}, small_model, images)


def test_the_stage_writes_graphs_and_the_pages_digits(stage_dir, stage, yaml_text, tiny, tmp_path):
    stage_dir.params.write_text(yaml_text(tiny(epochs=1)))
    assert stage("train", stage_dir.train()).status == 0
    out = tmp_path / "page"
    ended = stage("export", ["--params", str(stage_dir.params), "--data", str(stage_dir.root / "mnist"),
                             "--model", str(stage_dir.root / "model.pt"), "--out", str(out)])
    assert ended.status == 0, ended.stderr
    assert "onnxruntime agrees with PyTorch" in ended.stdout
    page = json.loads((out / explorer.EXPLORER).read_text())
    model, saved = load_model(stage_dir.root / "model.pt", torch.device("cpu"))
    kl = [row["kl"] for row in page["dimensions"]]
    assert kl == sorted(kl, reverse=True) and len(kl) == page["latent_dim"] == model.config.latent_dim
    assert sorted(row["index"] for row in page["dimensions"]) == list(range(model.config.latent_dim))
    test = load_test(stage_dir.root / "mnist")
    pixels = torch.frombuffer(bytearray(base64.b64decode(page["digits"]["pixels"])), dtype=torch.uint8)
    assert torch.equal(pixels.view(-1, 28, 28), test.images[:onnx_graphs.EXPLORER_DIGITS])
    assert page["digits"]["labels"] == test.labels[:onnx_graphs.EXPLORER_DIGITS].tolist()
    assert page["model"]["epoch"] == saved.epoch
    assert page["check"] == {"tolerance": onnx_graphs.TOLERANCE, "images": len(test)}  # no CPU-dependent digits
    assert (out / explorer.ENCODER).read_bytes() == onnx_graphs.to_onnx(model)[explorer.ENCODER]


@pytest.mark.parametrize("damage, message", [
    (lambda path: torch.save({"weights": torch.zeros(3)}, path),
     "format None, expected 'betavae-model/4' or 'betavae-model/3' or 'betavae-model/2'"),
    (lambda path: path.write_bytes(b"hello"), "unreadable, truncated or not a torch checkpoint"),
])
def test_the_stage_refuses_a_model_file_that_is_not_this_projects(stage_dir, stage, tmp_path, damage, message):
    model, out = tmp_path / "other.pt", tmp_path / "page"
    damage(model)
    ended = stage("export", ["--params", str(stage_dir.params), "--data", str(stage_dir.root / "mnist"),
                             "--model", str(model), "--out", str(out)])
    assert message in ended.error_line and ended.error_line.startswith("export: error: ")
    assert not out.exists()


def test_the_stage_refuses_an_export_that_onnxruntime_runs_differently(small_model, graphs, stage_dir, stage,
                                                                         tmp_path, monkeypatch):
    model = tmp_path / "model.pt"
    modelfile.ModelFile(small_model.config, Params(), 1, modelfile.Selection("loss", 1.0),
                        (0.5,) * small_model.config.latent_dim, None, small_model.state_dict()).write(model)
    broken = {**graphs, explorer.DECODER: _tampered(graphs[explorer.DECODER])}
    monkeypatch.setattr(onnx_graphs, "to_onnx", lambda _model: broken)
    out = tmp_path / "page"
    ended = stage("export", ["--params", str(stage_dir.params), "--data", str(stage_dir.root / "mnist"),
                             "--model", str(model), "--out", str(out)])
    assert ended.error_line.startswith("export: error: onnxruntime's decoder differs from PyTorch's by up to")
    assert not out.exists()


def test_a_page_file_that_cannot_be_written_leaves_the_whole_page_as_it_was(small_model, stage_dir, stage, tmp_path):
    """The graphs and explorer.json belong to one model: all are replaced, or none."""
    model, out = tmp_path / "model.pt", tmp_path / "page"
    modelfile.ModelFile(small_model.config, Params(), 1, modelfile.Selection("loss", 1.0),
                        (0.5,) * small_model.config.latent_dim, None, small_model.state_dict()).write(model)
    out.mkdir()
    old = {name: f"old {name}".encode() for name in (explorer.ENCODER, explorer.DECODER)}
    for name, data in old.items():
        (out / name).write_bytes(data)
    (out / explorer.EXPLORER).mkdir()  # cannot be replaced by a file
    ended = stage("export", ["--params", str(stage_dir.params), "--data", str(stage_dir.root / "mnist"),
                             "--model", str(model), "--out", str(out)])
    assert ended.status == 1 and f"{explorer.EXPLORER}: it is a directory" in ended.error_line
    assert {name: (out / name).read_bytes() for name in old} == old
    assert sorted(path.name for path in out.iterdir()) == sorted([*old, explorer.EXPLORER])


def test_the_committed_explorer_files_are_the_committed_models_export(repo_root):
    """What `dvc repro export` would write, byte for byte (dvc.lock cannot tell: outputs are not
    compared with what the code makes of the inputs)."""
    model, saved = load_model(repo_root / "models" / "model.pt", torch.device("cpu"))
    page = repo_root / "reports" / "explorer"
    for name, graph in onnx_graphs.to_onnx(model).items():
        assert (page / name).read_bytes() == graph, name
    shown = json.loads((page / explorer.EXPLORER).read_text())
    assert shown["latent_dim"] == model.config.latent_dim and shown["model"]["epoch"] == saved.epoch


def test_the_page_stays_small(repo_root):
    """The WebAssembly runtime alone (docs/explorer.md); WebGL or WebGPU builds would add 50 MB."""
    page = repo_root / "reports" / "explorer"
    assert sum(path.stat().st_size for path in page.rglob("*") if path.is_file()) < 17 * 1024 * 1024


def test_the_vendored_runtime_is_the_pinned_release(repo_root):
    vendor = repo_root / "reports" / "explorer" / "vendor"
    assert sorted(path.name for path in vendor.iterdir()) == sorted(vendor_onnxruntime_web.FILES)
    for name, digest in vendor_onnxruntime_web.FILES.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name


def test_the_server_serves_the_page_with_the_types_browsers_require(repo_root):
    with screenshot_explorer.served(repo_root / "reports" / "explorer") as address:
        assert address.startswith("http://127.0.0.1:")
        for path, kind in [("", "text/html"), ("vendor/ort.wasm.bundle.min.mjs", "text/javascript"),
                           ("vendor/ort-wasm-simd-threaded.wasm", "application/wasm")]:
            with urllib.request.urlopen(address + path, timeout=30) as response:
                assert response.headers["Content-Type"].startswith(kind), path


def test_explore_refuses_a_directory_that_is_not_the_page(tmp_path, capsys):
    from betavae.uses import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["explore", "--dir", str(tmp_path), "--port", "0"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (f"betavae: error: {tmp_path}: not the explorer page (missing "
                                               "index.html, explorer.js, encoder.onnx, decoder.onnx, explorer.json); "
                                               "`dvc repro export` writes the model files")


def test_the_deployment_example_in_the_docs_runs(repo_root, monkeypatch):
    text = (repo_root / "docs" / "explorer.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(repo_root)
    scope: dict = {}
    exec(compile(example, "docs/explorer.md", "exec"), scope)
    assert scope["mean"].shape == (8, 32) and scope["pixels"].shape == (8, 1, 28, 28)
    assert scope["prior"].shape == (16, 1, 28, 28) and 0 <= scope["prior"].min() <= scope["prior"].max() <= 1
