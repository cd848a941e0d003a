import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import betavae.train as training
from betavae import checkpoint, runtime
from betavae.params import parse_params
from tests.conftest import TINY_PARAMS


def _outputs(root):
    return training.Outputs(root / "model.pt", root / "checkpoint.pt", root / "live", root / "live" / "snapshots")


def _params(**overrides):
    return parse_params({**TINY_PARAMS, **overrides})


def test_training_writes_every_output(tmp_path, mnist_dir):
    params = _params(epochs=3, snapshot_every=2)
    progress = training.train(params, mnist_dir, _outputs(tmp_path), log=lambda _: None)
    assert [r["epoch"] for r in progress.history] == [1, 2, 3]
    model, record = checkpoint.load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert record["epoch"] == progress.best_epoch
    assert record["val_loss"] == min(r["val/loss"] for r in progress.history)
    assert record["params"] == params.to_dict()
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    for key in ("loss", "recon", "kl"):
        assert math.isfinite(summary["train"][key]) and math.isfinite(summary["val"][key])
    assert {"lr", "kl_weight", "epoch_seconds", "best_epoch", "step"} <= set(summary)
    assert summary["kl_weight"] == pytest.approx(params.beta)
    assert sorted(p.name for p in (tmp_path / "live" / "snapshots").iterdir()) == [
        "recon_epoch_002.png", "recon_epoch_003.png", "samples_epoch_002.png", "samples_epoch_003.png"]
    lr_log = (tmp_path / "live" / "plots" / "metrics" / "lr.tsv").read_text().splitlines()
    assert lr_log[0] == "step\tlr" and len(lr_log) == 4


def test_loss_is_the_beta_weighted_sum_in_the_history(tmp_path, mnist_dir):
    progress = training.train(_params(beta=2.0), mnist_dir, _outputs(tmp_path), log=lambda _: None)
    for record in progress.history:
        for split in ("train", "val"):
            assert record[f"{split}/loss"] == pytest.approx(record[f"{split}/recon"] + 2.0 * record[f"{split}/kl"])


def test_interrupted_then_resumed_run_gives_the_same_bytes(tmp_path, mnist_dir, monkeypatch):
    params = _params(epochs=3)
    straight = tmp_path / "straight"
    training.train(params, mnist_dir, _outputs(straight), log=lambda _: None)

    resumed = tmp_path / "resumed"
    finish = training._finish_epoch

    def interrupt_after_epoch_2(session, progress, record, outputs, live):
        finish(session, progress, record, outputs, live)
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_finish_epoch", interrupt_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        training.train(params, mnist_dir, _outputs(resumed), log=lambda _: None)
    assert not (resumed / "model.pt").exists()
    monkeypatch.setattr(training, "_finish_epoch", finish)
    lines = []
    training.train(params, mnist_dir, _outputs(resumed), log=lines.append)
    assert any("resuming" in line and "after epoch 2 of 3" in line for line in lines)
    assert (resumed / "model.pt").read_bytes() == (straight / "model.pt").read_bytes()
    for tsv in ("train/loss.tsv", "val/kl.tsv", "lr.tsv"):
        path = f"live/plots/metrics/{tsv}"
        assert (resumed / path).read_text() == (straight / path).read_text()


def test_checkpoint_from_other_params_is_not_resumed(tmp_path, mnist_dir):
    outputs = _outputs(tmp_path)
    training.train(_params(), mnist_dir, outputs, log=lambda _: None)
    lines = []
    training.train(_params(beta=1.0), mnist_dir, outputs, log=lines.append)
    assert any("starting fresh" in line and "different params (beta)" in line for line in lines)
    with pytest.raises(training.ResumeRefused, match="different params"):
        training.train(_params(beta=2.0), mnist_dir, outputs, resume="require", log=lambda _: None)


def test_checkpoint_from_other_code_is_not_resumed(tmp_path, mnist_dir, monkeypatch):
    # DVC reruns train after a code change but keeps the persistent checkpoint of the finished run
    outputs = _outputs(tmp_path)
    training.train(_params(epochs=2), mnist_dir, outputs, log=lambda _: None)
    assert "betavae/augment.py" in torch.load(outputs.checkpoint, weights_only=True)["code"]
    edited = {**training.code_fingerprint(), "betavae/augment.py": "0" * 64}
    monkeypatch.setattr(training, "code_fingerprint", lambda: edited)
    trained_epochs, train_epoch = [], training._train_epoch
    monkeypatch.setattr(training, "_train_epoch",
                        lambda session, epoch, bar: trained_epochs.append(epoch) or train_epoch(session, epoch, bar))
    lines = []
    training.train(_params(epochs=2), mnist_dir, outputs, log=lines.append)
    assert any("starting fresh: checkpoint was written by other code (betavae/augment.py changed)" in line
               for line in lines)
    assert trained_epochs == [1, 2]  # trained again; a resumed finished run would train none
    monkeypatch.setattr(training, "code_fingerprint", lambda: {**edited, "betavae/loss.py": "1" * 64})
    with pytest.raises(training.ResumeRefused, match="other code"):
        training.train(_params(epochs=2), mnist_dir, outputs, resume="require", log=lambda _: None)


def test_code_fingerprint_hashes_the_loaded_package_modules():
    fingerprint = training.code_fingerprint()
    source = Path(training.__file__).read_bytes()
    assert fingerprint["betavae/train.py"] == hashlib.sha256(source).hexdigest()
    assert all(name.startswith("betavae/") and name.endswith(".py") for name in fingerprint)


def test_corrupt_checkpoint_is_not_resumed(tmp_path, mnist_dir):
    outputs = _outputs(tmp_path)
    outputs.checkpoint.write_bytes(b"garbage")
    lines = []
    training.train(_params(), mnist_dir, outputs, log=lines.append)
    assert any("starting fresh" in line and "unreadable" in line for line in lines)


def test_non_finite_loss_stops_naming_epoch_and_batch_and_keeps_last_checkpoint(tmp_path, mnist_dir, monkeypatch):
    calls = {"n": 0}
    real_loss = training.beta_vae_loss
    steps_per_epoch = (400 - 64) // 32

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real_loss(*args, **kwargs)
        if calls["n"] == steps_per_epoch + 3:  # epoch 2, batch 3
            return terms._replace(loss=terms.loss * float("nan"))
        return terms

    monkeypatch.setattr(training, "beta_vae_loss", poisoned)
    outputs = _outputs(tmp_path)
    with pytest.raises(training.TrainingDiverged, match=f"epoch 2, batch 3 of {steps_per_epoch}"):
        training.train(_params(epochs=3), mnist_dir, outputs, log=lambda _: None)
    state = checkpoint.read(outputs.checkpoint, checkpoint.TRAIN_STATE_FORMAT)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_cuda_requested_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(runtime.DeviceError, match="device: cuda was requested, but CUDA is not available"):
        runtime.resolve(parse_params({"device": "cuda"}))


def test_checkpoint_of_another_model_version_is_not_resumed(tmp_path, mnist_dir):
    outputs = _outputs(tmp_path)
    training.train(_params(), mnist_dir, outputs, log=lambda _: None)
    state = torch.load(outputs.checkpoint, weights_only=True)
    state["architecture"] = "conv-beta-vae/0"
    torch.save(state, outputs.checkpoint)
    lines = []
    training.train(_params(), mnist_dir, outputs, log=lines.append)
    assert any("starting fresh" in line and "written for model 'conv-beta-vae/0'" in line for line in lines)
