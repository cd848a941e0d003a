import math

import pytest
import torch

from betavae.core import schedules
from betavae.core.objective import beta_vae_loss, gaussian_log_density, kl_per_image, reconstruction_per_image
from betavae.training import loop as training
from betavae.training.state import Outputs

LOG2 = math.log(2)


def test_reconstruction_of_zero_logits_is_log2_per_pixel_whatever_the_target():
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(reconstruction_per_image(torch.zeros_like(x), x), torch.full((3,), 784 * LOG2))


def test_reconstruction_matches_hand_computed_bernoulli_nll():
    logits = torch.zeros(1, 1, 28, 28)
    logits[0, 0, 0, 0] = 2.0
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 0, 0] = 1.0
    expected = math.log(1 + math.exp(-2)) + 783 * LOG2
    assert reconstruction_per_image(logits, x).item() == pytest.approx(expected, rel=1e-6)


def test_kl_closed_form_against_hand_computation():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, LOG2]])
    # -1/2 [(1 + 0 - 1 - 1) + (1 + log2 - 0 - 2)] = 1 - log(2)/2
    assert kl_per_image(mu, logvar).item() == pytest.approx(1 - LOG2 / 2, rel=1e-6)
    assert kl_per_image(torch.zeros(2, 5), torch.zeros(2, 5)).tolist() == [0.0, 0.0]


def test_beta_loss_weights_the_kl_and_averages_over_the_batch():
    x = torch.rand(2, 1, 28, 28)
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, LOG2], [0.0, 0.0]])
    terms = beta_vae_loss(torch.zeros_like(x), x, mu, logvar, kl_weight=0.8)
    kl = (1 - LOG2 / 2) / 2
    assert terms.recon.item() == pytest.approx(784 * LOG2, rel=1e-6)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-6)
    assert terms.loss.item() == pytest.approx(784 * LOG2 + 0.8 * kl, rel=1e-6)


def test_gaussian_log_density_of_standard_normal_at_zero():
    z = torch.zeros(4, 2)
    assert torch.allclose(gaussian_log_density(z, z, z), torch.full((4,), -math.log(2 * math.pi)))


@pytest.mark.parametrize("t, expected", [
    (0.0, 1e-4), (5.0, 2e-4), (10.0, 3e-4), (65.0, 2e-4), (120.0, 1e-4), (130.0, 1e-4)])
def test_learning_rate_boundaries(t, expected):
    assert schedules.learning_rate(t, 1e-4, 3e-4, 10, 120) == pytest.approx(expected, rel=1e-9)


def test_learning_rate_rises_then_falls_monotonically():
    values = [schedules.learning_rate(t / 10, 1e-4, 3e-4, 10, 120) for t in range(0, 1201)]
    peak = values.index(max(values))
    assert peak == 100
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))


def test_learning_rate_without_warmup_or_decay():
    assert schedules.learning_rate(0, 1e-4, 3e-4, 0, 10) == pytest.approx(3e-4)
    assert schedules.learning_rate(4, 1e-4, 3e-4, 10, 10) == pytest.approx(1.8e-4)
    assert schedules.learning_rate(10, 1e-4, 3e-4, 10, 10) == pytest.approx(3e-4)


@pytest.mark.parametrize("t, expected", [(0.0, 0.0), (10.0, 0.4), (20.0, 0.8), (100.0, 0.8)])
def test_kl_weight_rises_linearly_to_beta(t, expected):
    assert schedules.kl_weight(t, 0.8, 20) == pytest.approx(expected)


def test_kl_weight_without_annealing_is_beta_from_the_start():
    assert schedules.kl_weight(0.0, 0.8, 0) == 0.8


@pytest.mark.parametrize("epoch, steps, expected", [(1, 1, 0.0), (1, 4, 0.75), (3, 214, 3 - 1 / 214)])
def test_an_epochs_last_step_is_one_step_short_of_its_end(epoch, steps, expected):
    assert schedules.last_step(epoch, steps) == pytest.approx(expected)


def test_steps_per_epoch_are_the_full_batches_of_the_training_images(tiny_parsed):
    assert schedules.steps_per_epoch(tiny_parsed(batch_size=32)) == 336 // 32
    assert schedules.steps_per_epoch(tiny_parsed(batch_size=336)) == 1


@pytest.mark.parametrize("epochs, batch_size", [(1, 336), (2, 168), (1, 32)])
def test_the_warnings_name_the_values_training_logs_at_its_last_step(epochs, batch_size, tiny_parsed, mnist_dir,
                                                                     tmp_path):
    """A one-step epoch logs the KL weight at t = 0: the warning said it "ends at 0.05" while the log said 0."""
    params = tiny_parsed(epochs=epochs, batch_size=batch_size, warmup_epochs=3, kl_anneal_epochs=4, beta=1.0)
    rate, weight = schedules.warnings(params)
    logged = training.train(params, mnist_dir, Outputs(tmp_path / "m.pt", tmp_path / "c.pt", tmp_path / "live"),
                            log=lambda _: None).history[-1]
    assert f"the learning rate only rises, to {logged['lr']:.3g} at the last step" in rate
    assert f"the KL weight ends at {logged['kl_weight']:.3g} at the last step, not beta (1)" in weight
    if epochs * 336 // batch_size == 1:
        assert logged["kl_weight"] == 0 and "ends at 0 at the last step" in weight
