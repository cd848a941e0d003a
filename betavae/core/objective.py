"""The β-VAE objective (Higgins et al. 2017) on the Bernoulli-decoder ELBO of Kingma & Welling (2014).

Per image x with posterior q(z|x) = N(mu, diag(exp(logvar))) and prior p(z) = N(0, I):
    recon = -log p(x|z)  = sum over pixels of BCE(logits, x)            (one z ~ q per image)
    kl    = KL(q || p)   = -1/2 * sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))   (Appendix B)
    loss  = recon + beta * kl
All three are averaged over the batch, so they read as nats per image.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


class LossTerms(NamedTuple):
    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def reconstruction_per_image(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """logits, x (B, 1, 28, 28) -> (B,): Bernoulli negative log-likelihood summed over pixels."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """mu, logvar (B, Z) -> (B, Z): KL(N(mu_j, exp(logvar_j)) || N(0, 1)) of each latent dimension."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def kl_per_image(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """mu, logvar (B, Z) -> (B,): KL(N(mu, exp(logvar)) || N(0, I)) in closed form."""
    return kl_per_dimension(mu, logvar).sum(1)


def beta_vae_loss(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  kl_weight: float) -> LossTerms:
    recon = reconstruction_per_image(logits.float(), x).mean()
    kl = kl_per_image(mu.float(), logvar.float()).mean()
    return LossTerms(recon + kl_weight * kl, recon, kl)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension: (..., Z) -> (...)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)
