"""The convolutional VAE of the spec: a 32-64-128 conv encoder with batch norm and (spatial) dropout, a
Gaussian latent, and a 128-64-32-1 transposed-conv decoder with batch norm that outputs logits.

Shapes for a batch of B images with latent size Z:
    x (B, 1, 28, 28) -> encoder features (B, 128, 4, 4) -> mu, logvar (B, Z)
    z (B, Z) -> decoder (B, 128, 4, 4) -> (B, 64, 7, 7) -> (B, 32, 14, 14) -> logits (B, 1, 28, 28)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from betavae.speed.kernels import OutputTransposedConv

# Bump when a change to this file would make old weights load into a different function;
# checkpoints record it so a stale one is never resumed or evaluated as if it were current.
ARCHITECTURE = "conv-beta-vae/1"
CHANNELS = (32, 64, 128)
FEATURE_SIDE = 4


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    latent_dim: int  # the size of z; params.yaml's z_dim
    dropout: float  # probability of dropping a feature map after each encoder block

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _conv_block(in_channels: int, out_channels: int, kernel: int, dropout: float) -> nn.Sequential:
    # bias=False: batch norm's shift makes a conv bias redundant. Dropout2d drops whole feature
    # maps (Tompson et al. 2015): neighbouring conv activations are correlated, so dropping single
    # pixels regularises little, and it needs B*C random draws instead of B*C*H*W, a measurable
    # part of the CPU step (docs/performance.md).
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
    )


def _deconv_block(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Forward(NamedTuple):
    """What a training forward pass gives: K decoded posterior samples per image (K = 1: the ELBO's one)."""

    logits: torch.Tensor  # (B, 1, 28, 28) for K = 1, else (K, B, 1, 28, 28)
    mean: torch.Tensor  # (B, Z) posterior mean
    logvar: torch.Tensor  # (B, Z) posterior log-variance
    z: torch.Tensor  # (B, Z) for K = 1, else (K, B, Z): the latents the logits decode


class ConvVAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c1, c2, c3 = CHANNELS
        features = c3 * FEATURE_SIDE * FEATURE_SIDE
        # 28 -> 14 -> 7 -> 4 (kernel 3 on the last step keeps 7 -> 4 with padding 1)
        self.encoder = nn.Sequential(
            _conv_block(1, c1, 4, config.dropout),
            _conv_block(c1, c2, 4, config.dropout),
            _conv_block(c2, c3, 3, config.dropout),
            nn.Flatten(),
        )
        self.to_posterior = nn.Linear(features, 2 * config.latent_dim)
        self.from_latent = nn.Sequential(
            nn.Linear(config.latent_dim, features, bias=False),
            nn.BatchNorm1d(features),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (c3, FEATURE_SIDE, FEATURE_SIDE)),
        )
        # 4 -> 7 -> 14 -> 28, mirroring the encoder
        self.decoder = nn.Sequential(
            _deconv_block(c3, c2, 3),
            _deconv_block(c2, c1, 4),
            OutputTransposedConv(c1, 1, 4, stride=2, padding=1),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, 28, 28) in [0, 1] -> posterior mean and log-variance, each (B, Z)."""
        mu, logvar = self.to_posterior(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): samples that gradients flow through (Kingma & Welling);
        mu, logvar (B, Z) -> z (B, Z), or (samples, B, Z) for samples > 1."""
        noise = torch.randn_like(mu) if samples == 1 else torch.randn((samples, *mu.shape), device=mu.device,
                                                                       dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Z) -> Bernoulli logits (B, 1, 28, 28)."""
        return self.decoder(self.from_latent(z))

    def pixel_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Z) -> the decoder's Bernoulli means, the image a latent code draws (B, 1, 28, 28)."""
        return torch.sigmoid(self.decode(z))

    def forward(self, x: torch.Tensor, samples: int = 1) -> Forward:
        """x (B, 1, 28, 28) -> the posterior and `samples` latents drawn from it per image, decoded."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, samples)
        logits = self.decode(z.reshape(-1, z.shape[-1]))
        return Forward(logits if samples == 1 else logits.view(samples, *x.shape), mu, logvar, z)
