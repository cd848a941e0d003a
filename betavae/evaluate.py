"""Test-set metrics of a trained model: the β-weighted loss, the ELBO, an importance-weighted NLL,
and active units.

For each image, K posterior samples z_k ~ q(z|x) give
    recon    = mean_k [-log p(x|z_k)]                       (the ELBO's reconstruction term)
    kl       = KL(q(z|x) || p(z)), closed form
    loss     = recon + beta * kl                           (the spec's "total"; depends on beta)
    neg_elbo = recon + kl                                  (an upper bound on -log p(x))
    nll      = -log (1/K sum_k p(x|z_k) p(z_k) / q(z_k|x)) (Burda et al. 2016; tighter as K grows)
and active units counts latent dimensions whose posterior mean varies across the test set:
Var_x(E_q[z_j]) > 0.01 (Burda et al. 2016, section 5.2).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from betavae import runtime
from betavae.data import Split, to_float
from betavae.loss import gaussian_log_density, kl_per_image, reconstruction_per_image
from betavae.model import ConvVAE

ACTIVE_UNIT_THRESHOLD = 0.01
IMAGES_PER_BATCH = 128
# Latent samples per decoder call. On a CPU, small calls keep the (N, 32, 14, 14) activations in
# cache: 256 decoded 1.8x faster than 8192 (one thread, 256 test images), with identical results.
# A GPU, or any other device, wants large calls.
LATENTS_PER_DECODE = {"cpu": 256, "cuda": 8192}


@dataclasses.dataclass(frozen=True)
class PerImage:
    recon: torch.Tensor  # (N,)
    kl: torch.Tensor  # (N,)
    log_likelihood: torch.Tensor  # (N,) importance-weighted log p(x)
    posterior_mean: torch.Tensor  # (N, Z)


@torch.no_grad()
def per_image(model: ConvVAE, split: Split, samples: int, run: runtime.Runtime,
              generator: torch.Generator) -> PerImage:
    model.eval()
    parts = []
    for start in range(0, len(split), IMAGES_PER_BATCH):
        x = run.prepare(to_float(split.images[start:start + IMAGES_PER_BATCH]))
        parts.append(_batch(model, x, samples, run, generator))
    recon, kl, log_likelihood, mean = (torch.cat(column).cpu() for column in zip(*parts))
    return PerImage(recon.double(), kl.double(), log_likelihood.double(), mean.double())


def _batch(model: ConvVAE, x: torch.Tensor, samples: int, run: runtime.Runtime,
           generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    with run.autocast():
        mu, logvar = model.encode(x)
    mu, logvar = mu.float(), logvar.float()  # (B, Z)
    batch = x.shape[0]
    chunk = max(1, LATENTS_PER_DECODE.get(x.device.type, LATENTS_PER_DECODE["cuda"]) // batch)
    # Drawn at once, so the chunking (a speed choice) cannot change which samples are used.
    noise = torch.randn(samples, *mu.shape, generator=generator, device=mu.device)  # (K, B, Z)
    log_weights, recons = [], []
    for done in range(0, samples, chunk):
        k = min(chunk, samples - done)
        z = mu + torch.exp(0.5 * logvar) * noise[done:done + k]  # (k, B, Z)
        with run.autocast():
            logits = model.decode(z.reshape(k * batch, -1)).float()  # (k*B, 1, 28, 28)
        targets = x.float().expand(k, *x.shape).reshape(k * batch, *x.shape[1:])
        recon = reconstruction_per_image(logits, targets).view(k, batch)  # -log p(x|z), (k, B)
        log_prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))  # (k, B)
        log_posterior = gaussian_log_density(z, mu, logvar)  # (k, B)
        log_weights.append(-recon + log_prior - log_posterior)
        recons.append(recon)
    log_weights = torch.cat(log_weights)  # (K, B)
    log_likelihood = torch.logsumexp(log_weights.double(), 0) - math.log(samples)
    return torch.cat(recons).mean(0), kl_per_image(mu, logvar), log_likelihood, mu


def summarize(results: PerImage, beta: float) -> dict:
    recon, kl = results.recon.mean().item(), results.kl.mean().item()
    return {
        "recon": recon,
        "kl": kl,
        "loss": recon + beta * kl,
        "neg_elbo": recon + kl,
        "nll": -results.log_likelihood.mean().item(),
        "active_units": active_units(results.posterior_mean),
    }


def active_units(posterior_mean: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """posterior_mean (N, Z) -> number of dimensions whose variance across images exceeds threshold."""
    return int((posterior_mean.var(0, unbiased=False) > threshold).sum())


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
