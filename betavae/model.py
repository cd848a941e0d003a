"""The convolutional VAE of the spec: a 32-64-128 conv encoder with batch norm and (spatial) dropout, a
Gaussian latent, and a 128-64-32-1 transposed-conv decoder with batch norm that outputs logits.

Shapes for a batch of B images with latent size Z:
    x (B, 1, 28, 28) -> encoder features (B, 128, 4, 4) -> mu, logvar (B, Z)
    z (B, Z) -> decoder (B, 128, 4, 4) -> (B, 64, 7, 7) -> (B, 32, 14, 14) -> logits (B, 1, 28, 28)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

# Bump when a change to this file would make old weights load into a different function;
# checkpoints record it so a stale one is never resumed or evaluated as if it were current.
ARCHITECTURE = "conv-beta-vae/1"
CHANNELS = (32, 64, 128)
FEATURE_SIDE = 4


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    latent_dim: int = 32
    dropout: float = 0.1

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


class OutputTransposedConv(nn.ConvTranspose2d):
    """The decoder's last layer: a transposed convolution to a few output channels (one, for MNIST).

    Same parameters and the same function as nn.ConvTranspose2d, which it is, and on CUDA or when
    exported the same kernel. On the CPU its forward pass is one matrix product and an overlap-add:
    oneDNN's transposed convolution to one output channel runs at under a tenth of the rate of the
    other layers (docs/performance.md), as its kernels vectorise over output channels. The
    backward pass is oneDNN's, which is fast for this shape.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (x.device.type != "cpu" or output_size is not None or self.groups != 1 or self.padding_mode != "zeros"
                or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            return super().forward(x, output_size)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _TransposedConvAsMatmul.apply(x.to(dtype), self.weight.to(dtype), bias, self)


class _TransposedConvAsMatmul(torch.autograd.Function):
    """y = conv_transpose2d(x, w, b): every input pixel's channels times w give its k*k patch of
    each output channel, and the patches are summed where they overlap (col2im, F.fold)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer: nn.ConvTranspose2d):
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.has_bias = layer, bias is not None
        batch, channels, height, width = x.shape
        out_channels, (kh, kw) = weight.shape[1], weight.shape[2:]
        pixels = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)  # (B*H*W, C), free if channels-last
        patches = pixels @ weight.reshape(channels, out_channels * kh * kw)      # (B*H*W, O*kh*kw)
        patches = patches.view(batch, height * width, -1).transpose(1, 2)        # (B, O*kh*kw, H*W)
        size = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, s, p, d, k, op in
                zip((height, width), layer.stride, layer.padding, layer.dilation, (kh, kw), layer.output_padding)]
        y = nn.functional.fold(patches, size, (kh, kw), layer.dilation, layer.padding, layer.stride)
        if bias is not None:
            y = y + bias.view(1, -1, 1, 1)
        # fold writes channels-first; the stock layer keeps a channels-last input's layout
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[1]] if ctx.has_bias else None, layer.stride, layer.padding,
            layer.dilation, True, layer.output_padding, 1, mask)
        return grad_x, grad_weight, grad_bias, None


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
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a sample that gradients flow through (Kingma & Welling)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Z) -> Bernoulli logits (B, 1, 28, 28)."""
        return self.decoder(self.from_latent(z))

    def pixel_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Z) -> the decoder's Bernoulli means, the image a latent code draws (B, 1, 28, 28)."""
        return torch.sigmoid(self.decode(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def training_memory_bytes(config: ModelConfig, batch_size: int) -> int:
    """An estimate of what one training step holds: weights, gradients and AdamW's two moments
    (4 copies of the parameters), plus every layer's output for the batch, kept for the backward
    pass and matched by a gradient of the same size (2 copies). Counted on the meta device, where
    building the model and running it allocate nothing."""
    with torch.device("meta"):
        model = ConvVAE(config)
        outputs = []
        hooks = [module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
                 for module in model.modules() if not list(module.children())]
        model(torch.empty(batch_size, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    parameters = sum(p.numel() for p in model.parameters())
    activations = sum(t.numel() for out in outputs for t in (out if isinstance(out, tuple) else (out,)))
    return 4 * (4 * parameters + 2 * activations)  # fp32 bytes
