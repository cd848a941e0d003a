"""The trained model as ONNX, the format deployers run and the in-browser explorer loads.

Two graphs, each with a free batch axis B, for a model with Z latent dimensions:
    encoder.onnx   image (B, 1, 28, 28) float32 in [0, 1] -> mean (B, Z), logvar (B, Z)
    decoder.onnx   latent (B, Z) float32 -> pixels (B, 1, 28, 28), the Bernoulli means in [0, 1]
and explorer.json, what the page shows beside them (the latent dimensions by KL, test digits).

Every export is checked before it is written: onnxruntime runs both graphs on the test images and
must agree with PyTorch within TOLERANCE, or nothing is written (`check`). The exporter is
torch.export's (`dynamo=True`, with onnxscript), the one PyTorch develops; the TorchScript one is
deprecated.
"""

from __future__ import annotations

import base64
import contextlib
import io
import warnings

import numpy as np
import torch
from torch import nn

from betavae.core.data import INFERENCE_BATCH, Split, to_float
from betavae.core.model import ARCHITECTURE, ConvVAE
from betavae.errors import BetaVAEError, one_line
from betavae.pipeline.modelfile import ModelFile
from betavae.uses.explorer import DECODER, ENCODER

EXPLORER_FORMAT = "betavae-explorer/1"
OPSET = 18  # read by every onnxruntime since 1.14, the browser's included
TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| on the posterior and on pixel probabilities
EXPLORER_DIGITS = 100  # test digits the page can start from


class ExportError(BetaVAEError, ValueError):
    """An export that onnxruntime does not run as PyTorch does, or that cannot be made."""


class _Encoder(nn.Module):
    def __init__(self, model: ConvVAE):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(image)


class _Decoder(nn.Module):
    def __init__(self, model: ConvVAE):
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model.pixel_probabilities(latent)


def to_onnx(model: ConvVAE) -> dict[str, bytes]:
    """{ENCODER: bytes, DECODER: bytes} of an eval-mode CPU fp32 model; the same model gives the
    same bytes."""
    model = model.to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()
    latent_dim = model.config.latent_dim
    return {
        ENCODER: _graph(_Encoder(model), torch.zeros(2, 1, 28, 28), ["image"], ["mean", "logvar"]),
        DECODER: _graph(_Decoder(model), torch.zeros(2, latent_dim), ["latent"], ["pixels"]),
    }


def _graph(module: nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str]) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    # The exporter reports progress on stdout and deprecations as warnings; neither concerns the user.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=OPSET,
                                        input_names=inputs, output_names=outputs, external_data=False,
                                        dynamic_shapes=({0: batch},), verbose=False)
        except Exception as error:  # torch.export's failures come as many types, all with a message
            raise ExportError(f"torch.onnx.export failed ({one_line(error)[:300]})") from None
    proto = program.model_proto
    # The exporter annotates each node with the Python stack that made it, file paths included;
    # without them the bytes depend on the model alone, not on where the checkout lives.
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return proto.SerializeToString()


def check(graphs: dict[str, bytes], model: ConvVAE, images: torch.Tensor) -> dict[str, float]:
    """Run both graphs in onnxruntime on images (N, 28, 28) uint8 and on their posterior means;
    {"encoder": max abs difference from PyTorch, "decoder": ...}, or ExportError if either is
    above TOLERANCE or a graph does not load."""
    encoder, decoder = (_session(graphs[name], name) for name in (ENCODER, DECODER))
    model = model.to("cpu", torch.float32).eval()
    differences = {"encoder": 0.0, "decoder": 0.0}
    with torch.no_grad():
        for batch in images.split(INFERENCE_BATCH):
            x = to_float(batch)
            mean, logvar = model.encode(x)
            onnx_mean, onnx_logvar = encoder.run(None, {"image": x.numpy()})
            pixels = decoder.run(None, {"latent": mean.numpy()})[0]
            differences["encoder"] = max(differences["encoder"], _largest(onnx_mean, mean),
                                         _largest(onnx_logvar, logvar))
            differences["decoder"] = max(differences["decoder"],
                                         _largest(pixels, model.pixel_probabilities(mean)))
    for part, difference in differences.items():
        if not difference <= TOLERANCE:  # `not <=` also refuses NaN
            raise ExportError(f"onnxruntime's {part} differs from PyTorch's by up to {difference:.3g} on "
                              f"{len(images)} test images, above the tolerance {TOLERANCE:g}")
    return differences


def _session(graph: bytes, name: str):
    import onnxruntime  # imported here: only export needs it, and it is slow to import

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about its own optimisations
    try:
        return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for a graph it cannot load
        raise ExportError(f"{name}: onnxruntime cannot load it ({one_line(error)[:300]})") from None


def _largest(onnx: np.ndarray, torch_value: torch.Tensor) -> float:
    return float(np.max(np.abs(onnx.astype(np.float64) - torch_value.double().numpy())))


def explorer_page(trained: ModelFile, digits: Split, checked_images: int) -> dict:
    """What the page needs beside the graphs: the latent dimensions ordered by their validation KL
    (the model file's), the first EXPLORER_DIGITS test digits (uint8, base64, row-major), where the
    model came from, and the check it passed: onnxruntime agreed with PyTorch within TOLERANCE on
    checked_images test images. The differences measured are printed, not written: their last digits
    depend on the CPU's vector width, and the page's bytes must be what the code writes anywhere."""
    kl = trained.latent_kl
    order = sorted(range(len(kl)), key=lambda dimension: (-kl[dimension], dimension))
    shown = digits.images[:EXPLORER_DIGITS].contiguous()
    return {
        "format": EXPLORER_FORMAT,  # explorer.js checks it
        "architecture": ARCHITECTURE,
        "latent_dim": len(kl),
        "dimensions": [{"index": dimension, "kl": round(kl[dimension], 4)} for dimension in order],
        "digits": {"count": len(shown), "side": int(shown.shape[-1]),
                   "pixels": base64.b64encode(shown.numpy().tobytes()).decode("ascii"),
                   "labels": digits.labels[:EXPLORER_DIGITS].tolist()},
        "model": {"epoch": trained.epoch, "beta": trained.params.beta, "binarize": trained.params.data.binarize},
        "check": {"tolerance": TOLERANCE, "images": checked_images},
    }
