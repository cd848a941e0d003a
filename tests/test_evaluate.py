import math

import pytest
import torch

from betavae.core import metrics
from betavae.core.data import Split
from betavae.core.model import ConvVAE, ModelConfig
from betavae.core.objective import gaussian_log_density, kl_per_image, reconstruction_per_image
from betavae.speed import runtime

CPU = runtime.Compute(device=torch.device("cpu"), autocast_dtype=None, channels_last=False)


def _split(count=6):
    torch.manual_seed(1)
    return Split((torch.rand(count, 28, 28) * 255).to(torch.uint8), torch.arange(count) % 3)


def test_importance_weighted_bound_matches_a_hand_computed_estimate():
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=3, dropout=0.1)).eval()
    split = _split()
    samples = 5
    results = metrics.per_image(model, split, samples, CPU, torch.Generator().manual_seed(7))

    x = split.images.unsqueeze(1).float() / 255
    with torch.no_grad():
        mu, logvar = model.encode(x)
        eps = torch.randn(samples, *mu.shape, generator=torch.Generator().manual_seed(7))
        z = mu + torch.exp(0.5 * logvar) * eps  # (K, B, Z)
        log_px = torch.stack([-reconstruction_per_image(model.decode(z[k]), x) for k in range(samples)])
        log_w = log_px + gaussian_log_density(z, 0 * z, 0 * z) - gaussian_log_density(z, mu, logvar)
    expected_ll = torch.logsumexp(log_w.double(), 0) - math.log(samples)
    assert torch.allclose(results.log_likelihood, expected_ll, atol=1e-3)
    assert torch.allclose(results.recon, -log_px.mean(0).double(), atol=1e-3)
    assert torch.allclose(results.kl, kl_per_image(mu, logvar).double(), atol=1e-5)


def test_more_importance_samples_tighten_the_bound_below_the_elbo():
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=3, dropout=0.1)).eval()
    results = metrics.per_image(model, _split(), 64, CPU, torch.Generator().manual_seed(0))
    summary = metrics.summarize(results, beta=0.5)
    assert summary["nll"] <= summary["neg_elbo"]
    assert summary["neg_elbo"] == pytest.approx(summary["recon"] + summary["kl"])
    assert summary["loss"] == pytest.approx(summary["recon"] + 0.5 * summary["kl"])
    assert list(summary) == list(metrics.METRICS)


def test_active_units_counts_dimensions_whose_mean_varies():
    means = torch.zeros(1000, 4)
    means[:, 0] = torch.linspace(-1, 1, 1000)  # variance ~0.33: active
    means[:, 1] = torch.linspace(-0.1, 0.1, 1000)  # variance ~0.0033: inactive
    means[:, 2] = 5.0  # constant: inactive however large
    assert metrics.active_units(means) == 1


def test_per_digit_groups_by_label():
    results = metrics.PerImage(recon=torch.tensor([1.0, 2.0, 3.0, 5.0]), kl=torch.tensor([1.0, 1.0, 2.0, 4.0]),
                                log_likelihood=torch.tensor([-1.0, -2.0, -3.0, -5.0]),
                                posterior_mean=torch.zeros(4, 2), latent_kl=torch.tensor([1.0, 1.0]))
    rows = metrics.per_digit(results, torch.tensor([0, 1, 1, 0]))
    assert rows == [{"digit": 0, "count": 2, "recon": 3.0, "kl": 2.5, "nll": 3.0},
                    {"digit": 1, "count": 2, "recon": 2.5, "kl": 1.5, "nll": 2.5}]


def test_decoding_in_chunks_gives_the_same_numbers(monkeypatch):
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=3, dropout=0.1)).eval()

    def run(latents_per_decode):
        chunks = {**metrics.LATENTS_PER_DECODE, "cpu": latents_per_decode}
        monkeypatch.setattr(metrics, "LATENTS_PER_DECODE", chunks)
        return metrics.per_image(model, _split(), 7, CPU, torch.Generator().manual_seed(3))

    whole, chunked = run(8192), run(12)  # 7 samples of 6 images: one call, or 2 + 2 + 2 + 1
    for name in ("recon", "kl", "log_likelihood", "posterior_mean", "latent_kl"):
        assert torch.allclose(getattr(whole, name), getattr(chunked, name), atol=1e-5), name


def test_the_kl_of_each_dimension_adds_up_to_the_kl_and_ranks_the_code():
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=3, dropout=0.1)).eval()
    results = metrics.per_image(model, _split(), 4, CPU, torch.Generator().manual_seed(0))
    assert results.latent_kl.sum().item() == pytest.approx(results.kl.mean().item())
    rows = metrics.latent_rows(results)
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert [row["kl"] for row in rows] == sorted((row["kl"] for row in rows), reverse=True)
    assert sum(row["kl_share"] for row in rows) == pytest.approx(1.0)


@pytest.mark.parametrize("latent_kl, count", [([5.0, 3.0, 1.0, 1.0], 3), ([9.0, 0.5, 0.5], 1), ([1.0] * 10, 9)])
def test_kl_dims_90_counts_the_fewest_dimensions_holding_90_percent(latent_kl, count):
    assert metrics.dimensions_holding(torch.tensor(latent_kl), 0.9) == count
