"""The objective: the β-VAE loss (Higgins et al. 2017) on the Bernoulli-decoder ELBO of Kingma &
Welling (2014), and the importance-weighted bound of Burda et al. (2016). Training, validation and
evaluation all compute their losses and bounds here.

Per image x with posterior q(z|x) = N(mu, diag(exp(logvar))) and prior p(z) = N(0, I):
    recon = -log p(x|z)  = sum over pixels of BCE(logits, x)            (one z ~ q per image)
    kl    = KL(q || p)   = -1/2 * sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))   (Appendix B)
    loss  = recon + w * kl                                              (w: beta, or its annealed value)
With K samples z_k ~ q(z|x) per image, the importance weights and the bound they give:
    log w_k = -recon_k + w * (log p(z_k) - log q(z_k|x))
    bound   = log (1/K sum_k w_k)      <= log p(x) for w = 1, tighter as K grows; K = 1: the ELBO's
                                          sampled form (its KL is the closed form's estimate)
Training takes `train_samples` = K: K = 1 is the loss above, exactly; K > 1 minimises -bound, with
the KL weight w annealed as for the loss (IWAE training, Burda et al. 2016). Losses are averaged over
the batch, so they read as nats per image.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from betavae.core.model import Forward

LOG_2PI = math.log(2 * math.pi)


class LossTerms(NamedTuple):
    loss: torch.Tensor  # what the optimiser minimises
    recon: torch.Tensor  # mean -log p(x|z) over the batch (and the samples)
    kl: torch.Tensor  # mean closed-form KL(q(z|x) || p(z)) over the batch


# What training logs of the loss every epoch, as train/<name> and val/<name> (DVCLive's
# reports/train/plots/metrics/), with a title for each: the β-weighted loss recon + β·KL and its terms.
LOGGED_TERMS = {"loss": "β-weighted loss", "recon": "Reconstruction", "kl": "KL divergence"}


def beta_weighted(recon, kl, weight):
    """The β-VAE loss from its two terms, recon + weight * kl (tensors or numbers): the one place it is
    written. With weight = 1 it is the negative ELBO."""
    return recon + weight * kl


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
                  kl_weight) -> LossTerms:
    """One posterior sample per image: logits, x (B, 1, 28, 28), mu, logvar (B, Z)."""
    recon = reconstruction_per_image(logits.float(), x).mean()
    kl = kl_per_image(mu.float(), logvar.float()).mean()
    return LossTerms(beta_weighted(recon, kl, kl_weight), recon, kl)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension: (..., Z) -> (...)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_importance_weights(recon: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                           kl_weight=1.0) -> torch.Tensor:
    """log w = -recon + kl_weight * (log p(z) - log q(z|x)): recon (K, B), z (K, B, Z), mu, logvar (B, Z)
    -> (K, B). (Written as two products so that kl_weight = 1 gives the plain sum's exact bits.)"""
    log_prior = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))  # (K, B)
    log_posterior = gaussian_log_density(z, mu, logvar)  # (K, B)
    return -recon + kl_weight * log_prior - kl_weight * log_posterior


def importance_weighted_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log_weights (K, B) -> (B,): log (1/K sum_k w_k), computed stably."""
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])


def importance_weighted_loss(out: Forward, x: torch.Tensor, kl_weight) -> LossTerms:
    """K posterior samples per image (out.logits (K, B, 1, 28, 28), out.z (K, B, Z)): the negative
    importance-weighted bound, averaged over the batch."""
    samples, batch = out.z.shape[:2]
    targets = x.expand(samples, *x.shape).reshape(samples * batch, *x.shape[1:])
    recon = reconstruction_per_image(out.logits.float().flatten(0, 1), targets).view(samples, batch)  # (K, B)
    mu, logvar = out.mean.float(), out.logvar.float()
    bound = importance_weighted_bound(log_importance_weights(recon, out.z.float(), mu, logvar, kl_weight))
    return LossTerms(-bound.mean(), recon.mean(), kl_per_image(mu, logvar).mean())


def training_loss(out: Forward, x: torch.Tensor, kl_weight) -> LossTerms:
    """The loss of a training forward pass: the β-VAE loss for one sample per image, the negative
    importance-weighted bound for several."""
    if out.z.dim() == 2:
        return beta_vae_loss(out.logits, x, out.mean, out.logvar, kl_weight)
    return importance_weighted_loss(out, x, kl_weight)
