"""Kernels the project writes itself where a library's runs far below the machine's rate.

One, for now: the decoder's output layer on the CPU (docs/performance.md has the measurement).
"""

from __future__ import annotations

import torch
from torch import nn


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
