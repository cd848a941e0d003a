"""The training step on a CUDA device (betavae/training/step.py): the captured graph computes what
the eager step computes, a run gives the same bytes run after run and after a resume, and the API and
CLI agree there. Marked cuda: skipped, saying so, without a GPU; `make gpu-check` runs them."""

from __future__ import annotations

import pytest
import torch

from betavae.training import distributed
from betavae.training import loop as training
from betavae.training.state import Outputs
from betavae.training.step import Step

pytestmark = pytest.mark.cuda


def _trainer(tiny_parsed, mnist_dir, **overrides):
    params = tiny_parsed(device="cuda", **overrides)
    return training.prepare(params, mnist_dir, distributed.World())


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_a_replayed_graph_computes_what_the_eager_step_computes(tiny_parsed, mnist_dir, binarize):
    data = {"limit": 400, "val_size": 64, "binarize": binarize}
    graphed, eager = (_trainer(tiny_parsed, mnist_dir, data=data) for _ in range(2))
    graph_step, eager_step = Step(graphed, capture=True), Step(eager, capture=False)
    assert graph_step.captured and not eager_step.captured
    for step in (graph_step, eager_step):
        step.start_epoch(1)
        for _ in range(3):
            step()
    torch.cuda.synchronize()
    for (name, a), (_, b) in zip(graphed.model.state_dict().items(), eager.model.state_dict().items()):
        if a.is_floating_point():
            assert torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-3), name  # bf16 autocast's tolerance
    sums = [step.epoch_sums()[0] for step in (graph_step, eager_step)]
    assert torch.allclose(sums[0], sums[1], rtol=2e-2)
    assert graph_step.epoch_sums()[1].item() == graph_step.steps  # no non-finite step


def _train(params, mnist_dir, root, stop_after=None):
    count = {"epochs": 0}

    def between() -> None:
        count["epochs"] += 1
        if count["epochs"] == stop_after:
            raise KeyboardInterrupt

    return training.train(params, mnist_dir, Outputs(root / "model.pt", root / "checkpoint.pt", root / "live"),
                          log=lambda _: None, between_epochs=between)


def test_the_same_params_give_the_same_model_bytes_run_after_run(tmp_path, mnist_dir, tiny_parsed):
    params = tiny_parsed(device="cuda", epochs=2)
    _train(params, mnist_dir, tmp_path / "first")
    _train(params, mnist_dir, tmp_path / "second")
    assert (tmp_path / "first" / "model.pt").read_bytes() == (tmp_path / "second" / "model.pt").read_bytes()


def test_a_run_killed_and_resumed_ends_with_the_bytes_of_an_unbroken_one(tmp_path, mnist_dir, tiny_parsed):
    params = tiny_parsed(device="cuda", epochs=3)
    _train(params, mnist_dir, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _train(params, mnist_dir, tmp_path / "resumed", stop_after=2)
    _train(params, mnist_dir, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "model.pt").read_bytes() == (tmp_path / "straight" / "model.pt").read_bytes()


def test_the_model_file_says_the_step_was_a_cuda_graph(tmp_path, mnist_dir, tiny_parsed):
    from betavae.pipeline import modelfile

    _train(tiny_parsed(device="cuda", epochs=1), mnist_dir, tmp_path)
    provenance = modelfile.ModelFile.read(tmp_path / "model.pt").provenance
    assert (provenance.device, provenance.step, provenance.precision) == ("cuda", "cuda-graph", "bf16")
