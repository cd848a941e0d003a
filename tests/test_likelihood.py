"""What training for likelihood adds (issue 33): the importance-weighted objective of Burda et al.
(train_samples), model selection on the validation NLL (select.metric: nll), and early stopping
(select.patience), each off by default and resumable."""

from __future__ import annotations

import json
import math

import pytest
import torch

from betavae.core import objective
from betavae.core.model import ConvVAE, Forward, ModelConfig
from betavae.pipeline import modelfile
from betavae.pipeline.params import ParamsError
from betavae.training import loop as training
from betavae.training.state import Outputs


def _train(params, mnist_dir, root, stop_after=None, **kwargs):
    epochs = {"trained": 0}

    def between() -> None:
        epochs["trained"] += 1
        if epochs["trained"] == stop_after:
            raise KeyboardInterrupt

    lines = kwargs.pop("lines", [])
    progress = training.train(params, mnist_dir, Outputs(root / "model.pt", root / "checkpoint.pt", root / "live"),
                              log=lines.append, between_epochs=between, **kwargs)
    return progress, epochs["trained"]


# --- the objective ---------------------------------------------------------------------------------


def _forward(samples: int) -> tuple[Forward, torch.Tensor]:
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=3, dropout=0.0)).eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)).round()
    torch.manual_seed(2)
    return model(x, samples), x


def test_one_sample_is_the_beta_vae_loss_and_several_give_a_tighter_bound():
    single, x = _forward(1)
    assert single.logits.shape == (5, 1, 28, 28) and single.z.shape == (5, 3)
    terms = objective.training_loss(single, x, 1.0)
    assert torch.equal(terms.loss, objective.beta_vae_loss(single.logits, x, single.mean, single.logvar, 1.0).loss)
    many, _ = _forward(64)
    assert many.logits.shape == (64, 5, 1, 28, 28) and many.z.shape == (64, 5, 3)
    bound = objective.training_loss(many, x, 1.0)
    # the importance-weighted loss (-bound) lies below the ELBO's loss, which its recon and KL still report
    assert bound.loss < objective.beta_weighted(bound.recon, bound.kl, 1.0)
    assert bound.kl.item() == pytest.approx(terms.kl.item())


def test_the_bound_with_one_sample_is_the_sampled_elbo():
    """K = 1: log w = -recon + log p(z) - log q(z|x), whose mean over samples is the ELBO."""
    out, x = _forward(1)
    recon = objective.reconstruction_per_image(out.logits, x)[None]
    log_weights = objective.log_importance_weights(recon, out.z[None], out.mean, out.logvar)
    assert torch.equal(objective.importance_weighted_bound(log_weights), log_weights[0])


def test_the_kl_weight_scales_the_log_ratio_as_annealing_scales_the_kl():
    out, x = _forward(8)
    at_zero = objective.importance_weighted_loss(out, x, 0.0).loss  # -log mean_k p(x|z_k): best of k reconstructions
    recon = objective.reconstruction_per_image(out.logits.flatten(0, 1), x.expand(8, *x.shape).flatten(0, 1))
    expected = -(torch.logsumexp(-recon.view(8, 5), 0) - math.log(8)).mean()
    assert at_zero.item() == pytest.approx(expected.item(), rel=1e-6)


def test_train_samples_and_selection_are_validated_naming_the_key(tiny_parsed):
    for overrides, message in [({"train_samples": 0}, "train_samples must be in [1, 1024]"),
                               ({"select": {"metric": "elbo"}}, "select.metric must be one of loss, nll"),
                               ({"select": {"patience": -1}}, "select.patience must be in [0, 100000]"),
                               ({"select": {"samples": 0}}, "select.samples must be in [1, 100000]")]:
        with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
            tiny_parsed(**overrides)


# --- training with them ----------------------------------------------------------------------------


def test_importance_weighted_training_runs_and_records_what_it_trained_with(tmp_path, mnist_dir, tiny_parsed):
    params = tiny_parsed(epochs=2, train_samples=4, beta=1.0)
    progress, _ = _train(params, mnist_dir, tmp_path)
    assert all(math.isfinite(logged["train/loss"]) for logged in progress.history)
    assert modelfile.ModelFile.read(tmp_path / "model.pt").params.train_samples == 4


def test_selection_on_the_validation_nll_keeps_its_best_epoch(tmp_path, mnist_dir, tiny_parsed):
    params = tiny_parsed(epochs=3, select={"metric": "nll", "samples": 8, "patience": 0})
    progress, _ = _train(params, mnist_dir, tmp_path)
    nll = [logged["val/nll"] for logged in progress.history]
    best = min(range(3), key=lambda epoch: nll[epoch]) + 1
    saved = modelfile.ModelFile.read(tmp_path / "model.pt")
    assert saved.epoch == best and saved.selection == modelfile.Selection("nll", min(nll))
    assert all(logged["val/nll"] >= logged["val/loss"] - 50 for logged in progress.history)  # a bound, near the loss
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["best_epoch"] == best and summary["best_val_nll"] == pytest.approx(min(nll))


def test_the_validation_nll_leaves_the_runs_random_streams_alone(tmp_path, mnist_dir, tiny_parsed):
    """Selecting on the NLL changes which epoch is kept, not the training: the same weights each epoch."""
    by_loss, _ = _train(tiny_parsed(epochs=2), mnist_dir, tmp_path / "loss")
    by_nll, _ = _train(tiny_parsed(epochs=2, select={"metric": "nll", "samples": 4, "patience": 0}), mnist_dir,
                       tmp_path / "nll")
    for a, b in zip(by_loss.history, by_nll.history):
        assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]


def test_early_stopping_ends_the_run_after_patience_epochs_without_a_better_one(tmp_path, mnist_dir, tiny_parsed):
    # A learning rate this small changes nothing much; a patience of 1 then stops as soon as one epoch is no better.
    params = tiny_parsed(epochs=12, base_lr=1e-9, max_lr=1e-9, select={"metric": "loss", "samples": 4, "patience": 1})
    lines = []
    progress, trained = _train(params, mnist_dir, tmp_path, lines=lines)
    assert trained == progress.epochs_done < 12 and progress.epochs_done == progress.best.epoch + 1
    assert any(f"stopped early after epoch {progress.epochs_done}" in line for line in lines), lines
    assert modelfile.ModelFile.read(tmp_path / "model.pt").epoch == progress.best.epoch
    assert not (tmp_path / "checkpoint.pt").exists()  # a stopped run is finished


def test_an_interrupted_run_with_early_stopping_resumes_to_the_same_stop_and_bytes(tmp_path, mnist_dir, tiny_parsed):
    params = tiny_parsed(epochs=12, base_lr=1e-9, max_lr=1e-9, select={"metric": "nll", "samples": 4, "patience": 1})
    straight, _ = _train(params, mnist_dir, tmp_path / "straight")
    root = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _train(params, mnist_dir, root, stop_after=1)
    resumed, _ = _train(params, mnist_dir, root)
    assert resumed.epochs_done == straight.epochs_done < 12
    assert (root / "model.pt").read_bytes() == (tmp_path / "straight" / "model.pt").read_bytes()
