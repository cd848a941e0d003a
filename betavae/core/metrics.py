"""Test-set metrics of a trained model: the β-weighted loss, the ELBO, an importance-weighted NLL,
active units and how the KL spreads over the latent dimensions.

For each image, K posterior samples z_k ~ q(z|x) give
    recon    = mean_k [-log p(x|z_k)]                       (the ELBO's reconstruction term)
    kl       = KL(q(z|x) || p(z)), closed form
    loss     = recon + beta * kl                           (the spec's "total"; depends on beta)
    neg_elbo = recon + kl                                  (an upper bound on -log p(x))
    nll      = -log (1/K sum_k p(x|z_k) p(z_k) / q(z_k|x)) (Burda et al. 2016; tighter as K grows)
Over the test set:
    active_units = dimensions whose posterior mean varies across images, Var_x(E_q[z_j]) > 0.01
                   (Burda et al. 2016, section 5.2)
    kl_dims_90   = the fewest dimensions that together hold 90% of the KL (the code's effective size)

The literature's protocol (docs/method.md): the same importance-weighted bound on the test set
binarized once from a fixed seed (data.TEST_BINARIZATION_SEED), with K = eval.binarized_samples
(papers use 5000), in nats and in bits per dimension, nll / (784 ln 2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from betavae.core import idx
from betavae.core.data import TEST_BINARIZATION_SEED, Split, ordered_batches
from betavae.core.footprint import training_memory_bytes
from betavae.core.model import ConvVAE, ModelConfig
from betavae.core.objective import (
    beta_weighted,
    kl_per_dimension,
    log_importance_weights,
    reconstruction_per_image,
)
from betavae.speed import runtime

PIXELS = idx.IMAGE_SIDE * idx.IMAGE_SIDE
ACTIVE_UNIT_THRESHOLD = 0.01
KL_SHARE = 0.9  # kl_dims_90 counts the dimensions that hold this share of the KL
IMAGES_PER_BATCH = {"cpu": 128, "cuda": 1024}  # images whose samples are drawn at once; a GPU takes large batches
# Latent samples per decoder call. On a CPU, small calls keep the (N, 32, 14, 14) activations in
# cache (docs/performance.md), with identical results; other devices get large calls.
LATENTS_PER_DECODE = {"cpu": 256, "cuda": 8192}


@dataclasses.dataclass(frozen=True)
class Metric:
    """One number reports/metrics.json holds: its key, how tables name it and what it means, whether it
    is in nats per image, and how it is computed from the per-image results and β."""

    name: str
    label: str  # a table row's name
    column: str  # a table column's (short) name
    meaning: str
    nats: bool
    compute: Callable[[PerImage, float], float]


def _mean(values: torch.Tensor) -> float:
    return values.mean().item()


# reports/metrics.json's "test", in this order: what the evaluate stage writes, the README's results
# and sweep tables show (scripts/readme_results.py), a search may optimise and compare.py plots.
TEST_METRICS = (
    Metric("recon", "Reconstruction −log p(x|z)", "recon", "lower is better", True, lambda r, b: _mean(r.recon)),
    Metric("kl", "KL(q(z|x) ‖ p(z))", "KL", "the rate, in nats", True, lambda r, b: _mean(r.kl)),
    Metric("loss", "Loss recon + β·KL (the spec's \"total\")", "loss", "depends on β", True,
           lambda r, b: beta_weighted(_mean(r.recon), _mean(r.kl), b)),
    Metric("neg_elbo", "Negative ELBO recon + KL", "neg_elbo", "an upper bound on −log p(x)", True,
           lambda r, b: beta_weighted(_mean(r.recon), _mean(r.kl), 1)),
    Metric("nll", "NLL, importance-weighted", "NLL", "comparable across β", True,
           lambda r, b: -_mean(r.log_likelihood)),
    Metric("active_units", "Active units (of z_dim)", "active units", "Var(E[z]) > 0.01", False,
           lambda r, b: active_units(r.posterior_mean)),
    Metric("kl_dims_90", "Dimensions holding 90% of the KL", "dims for 90% of KL", "the code's effective size", False,
           lambda r, b: dimensions_holding(r.latent_kl, KL_SHARE)),
)
# reports/metrics.json's "binarized": the literature's protocol (beside them, the K and the seed it used).
BINARIZED_METRICS = (
    Metric("nll", "NLL on binarized MNIST", "NLL", "the literature's number", True,
           lambda r, b: -_mean(r.log_likelihood)),
    Metric("bits_per_dim", "bits per dimension", "bits/dim", "nll / (784 ln 2)", False,
           lambda r, b: -_mean(r.log_likelihood) / (PIXELS * math.log(2))),
)
METRICS = tuple(metric.name for metric in TEST_METRICS)


@dataclasses.dataclass(frozen=True)
class PerImage:
    recon: torch.Tensor  # (N,)
    kl: torch.Tensor  # (N,)
    log_likelihood: torch.Tensor  # (N,) importance-weighted log p(x)
    posterior_mean: torch.Tensor  # (N, Z)
    latent_kl: torch.Tensor  # (Z,) mean KL of each latent dimension over the images


def memory_bytes(latent_dim: int, samples: int, images: int, device: torch.device) -> int:
    """An estimate of what per_image holds at once: one batch's noise and log-weights for all
    samples, every image's posterior mean, and one decoder call."""
    noise = samples * _images_per_batch(device) * (latent_dim * 4 + 8)
    means = images * latent_dim * 8 * 2
    decode = training_memory_bytes(ModelConfig(latent_dim, dropout=0.0), _latents_per_decode(device)) // 2
    return noise + means + decode


@torch.no_grad()
def per_image(model: ConvVAE, split: Split, samples: int, compute: runtime.Compute,
              generator: torch.Generator) -> PerImage:
    model.eval()
    parts = [_batch(model, compute.to_layout(x), samples, compute, generator)
             for x, _ in ordered_batches(split, _images_per_batch(compute.device))]
    recon, kl_dims, log_likelihood, mean = (torch.cat(column).cpu().double() for column in zip(*parts))
    return PerImage(recon, kl_dims.sum(1), log_likelihood, mean, kl_dims.mean(0))


def _batch(model: ConvVAE, x: torch.Tensor, samples: int, compute: runtime.Compute,
           generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    with compute.autocast():
        mu, logvar = model.encode(x)
    mu, logvar = mu.float(), logvar.float()  # (B, Z)
    batch = x.shape[0]
    chunk = max(1, _latents_per_decode(x.device) // batch)
    # Drawn at once, so the chunking (a speed choice) cannot change which samples are used.
    noise = torch.randn(samples, *mu.shape, generator=generator, device=mu.device)  # (K, B, Z)
    log_weights, recons = [], []
    for done in range(0, samples, chunk):
        k = min(chunk, samples - done)
        z = mu + torch.exp(0.5 * logvar) * noise[done:done + k]  # (k, B, Z)
        with compute.autocast():
            logits = model.decode(z.reshape(k * batch, -1)).float()  # (k*B, 1, 28, 28)
        targets = x.float().expand(k, *x.shape).reshape(k * batch, *x.shape[1:])
        recon = reconstruction_per_image(logits, targets).view(k, batch)  # -log p(x|z), (k, B)
        log_weights.append(log_importance_weights(recon, z, mu, logvar))
        recons.append(recon)
    log_weights = torch.cat(log_weights)  # (K, B)
    log_likelihood = torch.logsumexp(log_weights.double(), 0) - math.log(samples)
    return torch.cat(recons).mean(0), kl_per_dimension(mu, logvar), log_likelihood, mu


def _images_per_batch(device: torch.device) -> int:
    return IMAGES_PER_BATCH.get(device.type, IMAGES_PER_BATCH["cuda"])


def _latents_per_decode(device: torch.device) -> int:
    return LATENTS_PER_DECODE.get(device.type, LATENTS_PER_DECODE["cuda"])


def summarize(results: PerImage, beta: float) -> dict:
    """The test metrics of TEST_METRICS, in its order."""
    return {metric.name: metric.compute(results, beta) for metric in TEST_METRICS}


def binarized_summary(results: PerImage, samples: int) -> dict:
    """The literature's numbers from per_image on the binarized test set with `samples` samples, and
    the samples and binarization seed that make them comparable."""
    found = {metric.name: metric.compute(results, 1.0) for metric in BINARIZED_METRICS}
    return {**found, "importance_samples": samples, "binarization_seed": TEST_BINARIZATION_SEED}


def active_units(posterior_mean: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """posterior_mean (N, Z) -> number of dimensions whose variance across images exceeds threshold."""
    return int((posterior_mean.var(0, unbiased=False) > threshold).sum())


def dimensions_holding(latent_kl: torch.Tensor, share: float) -> int:
    """latent_kl (Z,) -> the fewest dimensions whose KL adds up to `share` of the total."""
    ordered = latent_kl.sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum()
    return int((cumulative < share - 1e-12).sum()) + 1


def latent_rows(results: PerImage) -> list[dict]:
    """One row per latent dimension, most KL first: its KL, its share of the total, the variance of
    its posterior mean across images, and whether that makes it active."""
    variance = results.posterior_mean.var(0, unbiased=False)
    total = results.latent_kl.sum().item()
    order = results.latent_kl.argsort(descending=True, stable=True).tolist()
    return [{"rank": rank + 1, "dimension": dim, "kl": results.latent_kl[dim].item(),
             "kl_share": results.latent_kl[dim].item() / total if total else 0.0,
             "mean_variance": variance[dim].item(), "active": int(variance[dim] > ACTIVE_UNIT_THRESHOLD)}
            for rank, dim in enumerate(order)]


def per_digit(results: PerImage, labels: torch.Tensor) -> list[dict]:
    rows = []
    for digit in range(10):
        chosen = labels.cpu() == digit
        count = int(chosen.sum())
        if count:
            rows.append({"digit": digit, "count": count,
                         "recon": results.recon[chosen].mean().item(),
                         "kl": results.kl[chosen].mean().item(),
                         "nll": -results.log_likelihood[chosen].mean().item()})
    return rows
