"""What a run will hold in memory, estimated before anything is allocated, so that a run too large
for the machine is refused with one line instead of failing, or swapping, partway through
(speed/runtime.py's check_memory compares these with what is free)."""

from __future__ import annotations

import torch

from betavae.core.model import ConvVAE, ModelConfig


def training_memory_bytes(config: ModelConfig, batch_size: int, samples: int = 1) -> int:
    """An estimate of what one training step holds: weights, gradients and AdamW's two moments
    (4 copies of the parameters), plus every layer's output for the batch (the decoder's for
    `samples` latents per image), kept for the backward pass and matched by a gradient of the same
    size (2 copies). Counted on the meta device, where building the model and running it allocate
    nothing."""
    with torch.device("meta"):
        model = ConvVAE(config)
        outputs = []
        hooks = [module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
                 for module in model.modules() if not list(module.children())]
        model(torch.empty(batch_size, 1, 28, 28), samples)
    for hook in hooks:
        hook.remove()
    parameters = sum(p.numel() for p in model.parameters())
    activations = sum(t.numel() for out in outputs for t in (out if isinstance(out, tuple) else (out,)))
    return 4 * (4 * parameters + 2 * activations)  # fp32 bytes
