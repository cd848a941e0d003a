"""The training loop and its resume contract (betavae/training/resume.py), through betavae.training.loop.train."""

import json
import math
import shutil

import pytest
import torch

from betavae.pipeline import modelfile
from betavae.speed import runtime
from betavae.training import loop as training
from betavae.training import resume, step
from betavae.training.state import Outputs


def _outputs(root):
    return Outputs(root / "model.pt", root / "checkpoint.pt", root / "live")


class Epochs:
    """A between_epochs callback that counts the epochs a run trains, and can stop it after one."""

    def __init__(self, stop_after: int | None = None):
        self.trained, self.stop_after = 0, stop_after

    def __call__(self):
        self.trained += 1
        if self.trained == self.stop_after:
            raise KeyboardInterrupt


def _train(params, mnist_dir, root, epochs=None, **kwargs):
    return training.train(params, mnist_dir, _outputs(root), log=kwargs.pop("log", lambda _: None),
                          between_epochs=epochs or Epochs(), **kwargs)


def _interrupted(params, mnist_dir, root, after: int):
    with pytest.raises(KeyboardInterrupt):
        _train(params, mnist_dir, root, Epochs(stop_after=after))
    return torch.load(root / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory, make_mnist, tiny_parsed):
    """The tiny 3-epoch run the resume tests start from, made once: root/mnist; root/straight, run
    through; root/after-1 and root/after-2, the same run interrupted after 1 and after 2 epochs (a test
    works on a copy, _copy)."""
    root = tmp_path_factory.mktemp("three-epochs")
    make_mnist(root / "mnist")
    params = tiny_parsed(epochs=3)
    _train(params, root / "mnist", root / "straight")
    for after in (1, 2):
        _interrupted(params, root / "mnist", root / f"after-{after}", after)
    return root


def _copy(three_epochs, name: str, tmp_path):
    """A copy of one of three_epochs' runs in tmp_path, and its training state."""
    shutil.copytree(three_epochs / name, tmp_path / name)
    return tmp_path / name, torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)


def test_training_writes_every_output_and_then_drops_its_state(tmp_path, mnist_dir, tiny_parsed):
    params = tiny_parsed(epochs=3, snapshot_every=2)
    results = _train(params, mnist_dir, tmp_path)
    assert [r["epoch"] for r in results.history] == [1, 2, 3]
    _, saved = modelfile.load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert saved.epoch == results.best.epoch
    assert saved.selection == modelfile.Selection("loss", min(logged["val/loss"] for logged in results.history))
    assert saved.params.training() == params.training()
    assert saved.provenance.step == "eager" and saved.provenance.device == "cpu"
    assert "eval" not in torch.load(tmp_path / "model.pt", weights_only=True)["params"]
    assert len(saved.latent_kl) == params.z_dim
    assert sum(saved.latent_kl) == pytest.approx(results.history[saved.epoch - 1]["val/kl"])
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    for key in ("loss", "recon", "kl"):
        assert math.isfinite(summary["train"][key]) and math.isfinite(summary["val"][key])
    assert {"lr", "kl_weight", "epoch_seconds", "best_epoch", "step"} <= set(summary)
    assert summary["kl_weight"] == pytest.approx(params.beta)
    images = tmp_path / "live" / "plots" / "images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png")) == [
        "reconstructions/2.png", "reconstructions/3.png", "samples/2.png", "samples/3.png"]
    lr_log = (tmp_path / "live" / "plots" / "metrics" / "lr.tsv").read_text().splitlines()
    assert lr_log[0] == "step\tlr" and len(lr_log) == 4
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "checkpoint.live").exists()


def test_an_interrupted_run_leaves_the_finished_runs_logs_and_model_as_they_were(tmp_path, mnist_dir, tiny_parsed):
    _train(tiny_parsed(epochs=1), mnist_dir, tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    _interrupted(tiny_parsed(epochs=3), mnist_dir, tmp_path, after=2)
    after = {path: path.read_bytes() for path in tmp_path.rglob("*")
             if path.is_file() and not path.is_relative_to(tmp_path / "checkpoint.live")}
    assert after == {**before, tmp_path / "checkpoint.pt": (tmp_path / "checkpoint.pt").read_bytes()}
    assert (tmp_path / "checkpoint.live" / "plots" / "metrics" / "lr.tsv").read_text().count("\n") == 1 + 2


def test_loss_is_the_beta_weighted_sum_in_the_history(tmp_path, mnist_dir, tiny_parsed):
    results = _train(tiny_parsed(beta=2.0), mnist_dir, tmp_path)
    for record in results.history:
        for split in ("train", "val"):
            assert record[f"{split}/loss"] == pytest.approx(record[f"{split}/recon"] + 2.0 * record[f"{split}/kl"])


def test_interrupted_then_resumed_run_gives_the_same_bytes(tmp_path, three_epochs, tiny_parsed):
    root, state = _copy(three_epochs, "after-2", tmp_path)
    assert state["epoch"] == 2 and not (root / "model.pt").exists()
    lines, epochs = [], Epochs()
    _train(tiny_parsed(epochs=3), three_epochs / "mnist", root, epochs, log=lines.append)
    assert any("resuming" in line and "after epoch 2 of 3" in line for line in lines)
    assert epochs.trained == 1
    straight = three_epochs / "straight"
    assert (root / "model.pt").read_bytes() == (straight / "model.pt").read_bytes()
    for logged in ("plots/metrics/train/loss.tsv", "plots/metrics/val/kl.tsv", "plots/metrics/lr.tsv",
                   "plots/images/samples/1.png", "plots/images/reconstructions/3.png"):
        assert (root / "live" / logged).read_bytes() == (straight / "live" / logged).read_bytes()


def test_a_finished_run_leaves_nothing_to_resume_so_a_rerun_trains_again(tmp_path, mnist_dir, tiny_parsed):
    _train(tiny_parsed(), mnist_dir, tmp_path)
    first = (tmp_path / "model.pt").read_bytes()
    lines, epochs = [], Epochs()
    _train(tiny_parsed(), mnist_dir, tmp_path, epochs, log=lines.append)
    assert epochs.trained == 2 and not any("resuming" in line for line in lines)
    assert (tmp_path / "model.pt").read_bytes() == first  # and training is deterministic


@pytest.mark.parametrize("edit, message", [
    (lambda state: state["params"].update(beta=1.0),
     "starting fresh: checkpoint was written with different params (beta)"),
    (lambda state: state["code"].update({"betavae/core/augment.py": "0" * 64}),
     "starting fresh: checkpoint was written by other code (betavae/core/augment.py changed)"),
    (lambda state: state.update(world_size=2), "starting fresh: checkpoint was written by 2 processes, this run has 1"),
    (lambda state: state.update(architecture="conv-beta-vae/0"), "written for model 'conv-beta-vae/0'"),
])
def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path, three_epochs, tiny_parsed, edit, message):
    params, mnist = tiny_parsed(epochs=3), three_epochs / "mnist"
    root, state = _copy(three_epochs, "after-1", tmp_path)
    edit(state)
    torch.save(state, root / "checkpoint.pt")
    with pytest.raises(resume.ResumeRefused, match="cannot resume"):
        _train(params, mnist, root, resume_mode="require")
    lines, epochs = [], Epochs()
    _train(params, mnist, root, epochs, log=lines.append)
    assert any(message in line for line in lines), lines
    assert epochs.trained == 3  # trained from the start; a resumed run would train 2


@pytest.mark.parametrize("damage", [
    lambda state: state["rng"].update(generator=torch.zeros(3, dtype=torch.uint8)),  # the last piece applied
    lambda state: state["optimizer"]["state"].clear() or state["optimizer"]["param_groups"].pop(),
    lambda state: state["best"].update(weights={"nonsense": torch.zeros(1)}),
    lambda state: state.update(history=state["history"][:-1]),
])
def test_a_refused_resume_gives_the_same_bytes_as_no_checkpoint(tmp_path, three_epochs, tiny_parsed, damage):
    root, state = _copy(three_epochs, "after-2", tmp_path)
    damage(state)
    torch.save(state, root / "checkpoint.pt")
    lines = []
    _train(tiny_parsed(epochs=3), three_epochs / "mnist", root, log=lines.append)
    assert any("not resuming, starting fresh" in line for line in lines), lines
    assert (root / "model.pt").read_bytes() == (three_epochs / "straight" / "model.pt").read_bytes()


def test_a_corrupt_checkpoint_is_not_resumed(tmp_path, mnist_dir, tiny_parsed):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    lines = []
    _train(tiny_parsed(), mnist_dir, tmp_path, log=lines.append)
    assert any("starting fresh" in line and "unreadable" in line for line in lines)


def test_non_finite_loss_stops_naming_epoch_and_batch_and_keeps_the_last_checkpoint(
        tmp_path, mnist_dir, tiny_parsed, steps_per_epoch, monkeypatch):
    steps = steps_per_epoch(epochs=3)
    calls, real_loss = {"n": 0}, step.training_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real_loss(*args, **kwargs)
        return terms._replace(loss=terms.loss * float("nan")) if calls["n"] == steps + 3 else terms

    monkeypatch.setattr(step, "training_loss", poisoned)  # epoch 2, batch 3
    with pytest.raises(training.TrainingDiverged, match=f"epoch 2, batch 3 of {steps}"):
        _train(tiny_parsed(epochs=3), mnist_dir, tmp_path)
    state = modelfile.read_torch_file(tmp_path / "checkpoint.pt", (resume.FORMAT,))
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_cuda_requested_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(runtime.DeviceError, match="device: cuda was requested, but CUDA is not available"):
        runtime.resolve("cuda", "auto", channels_last=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_precision_trains_to_finite_losses_on_the_cpu(tmp_path, mnist_dir, tiny_parsed, precision):
    results = _train(tiny_parsed(epochs=1, precision=precision), mnist_dir, tmp_path)
    assert math.isfinite(results.history[0]["train/loss"]) and math.isfinite(results.best.value)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_precision_gives_the_same_model_bytes_on_a_rerun(tmp_path, mnist_dir, tiny_parsed, precision):
    params = tiny_parsed(epochs=1, precision=precision)
    _train(params, mnist_dir, tmp_path / "first")
    _train(params, mnist_dir, tmp_path / "second")
    assert (tmp_path / "first" / "model.pt").read_bytes() == (tmp_path / "second" / "model.pt").read_bytes()


def test_the_logged_names_are_the_objectives_terms_and_the_schedules(tmp_path, mnist_dir, tiny_parsed):
    """One home for the names the history figure and DVCLive's folders show (core/objective.py, core/schedules.py)."""
    from betavae.core.objective import LOGGED_TERMS
    from betavae.core.schedules import LOGGED

    results = _train(tiny_parsed(epochs=1), mnist_dir, tmp_path)
    expected = {f"{split}/{name}" for split in ("train", "val") for name in LOGGED_TERMS} | set(LOGGED)
    assert set(results.history[0]) == expected | {"epoch", "epoch_seconds"}
