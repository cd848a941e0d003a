"""What a run will hold in memory, estimated before anything is allocated, so that a run too large
for the machine is refused with one line instead of failing, or swapping, partway through
(speed/runtime.py's check_memory compares these with what is free)."""

from __future__ import annotations

import dataclasses

import torch

from betavae.core.model import ConvVAE, ModelConfig


def training_memory_bytes(config: ModelConfig, batch_size: int, samples: int = 1) -> int:
    """An estimate of what one training step holds: weights, gradients and AdamW's two moments
    (4 copies of the parameters), plus every layer's output for the batch (the decoder's for
    `samples` latents per image), kept for the backward pass and matched by a gradient of the same
    size (2 copies).

    Nothing of the run's size is allocated. The parameters are counted on the meta device. The
    layers' outputs grow with the batch and, in the layers that give the latent's mean and
    log-variance, with the latent size, so they are counted for one image through networks of
    latent size 1 and 2 and scaled, which is exact (a forward pass on the meta device would do it
    in one go, but makes torch import its compiler: 2.5 s of a 2-core CPU's start-up)."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in ConvVAE(config).parameters())
    size_one, size_two = (_outputs_per_image(dataclasses.replace(config, latent_dim=size), samples) for size in (1, 2))
    activations = batch_size * (size_one + (size_two - size_one) * (config.latent_dim - 1))
    return 4 * (4 * parameters + 2 * activations)  # fp32 bytes


def _outputs_per_image(config: ModelConfig, samples: int) -> int:
    """Values that the network's layers output for one image (its decoder's for `samples` latents),
    counted on the CPU, aside from the global random state so that counting changes no result."""
    outputs = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model = ConvVAE(config).eval()
        for module in model.modules():
            if not list(module.children()):
                module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
        model(torch.zeros(1, 1, 28, 28), samples)
    return sum(tensor.numel() for output in outputs for tensor in (output if isinstance(output, tuple) else (output,)))
