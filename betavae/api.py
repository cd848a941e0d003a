"""Use a trained model from Python: encode, decode, sample, reconstruct and traverse.

    from betavae import api
    vae = api.load("models/model.pt")              # on CUDA if present, else the CPU
    digits = api.read_images(["a.png", "b.png"])   # 28x28 grey PNGs or one IDX file -> uint8 (N, 28, 28)
    mean, logvar = vae.encode(digits)              # the posterior, (N, Z) each
    pictures = vae.sample(16, seed=0)              # (16, 1, 28, 28) pixel probabilities in [0, 1]
    same = vae.reconstruct(digits)                 # (N, 1, 28, 28)

Images may be uint8 (0-255) or float (0-1), shaped (N, 28, 28) or (N, 1, 28, 28), as torch
tensors or numpy arrays; anything else is refused with an ImageError that says what it got.
The `betavae` command (betavae/cli.py) does the same from a shell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from betavae import grids, idx, runtime
from betavae.checkpoint import load_model
from betavae.errors import BetaVAEError
from betavae.figures import traversal_figure

SIDE = idx.IMAGE_SIDE
BATCH = 1000  # images per forward pass, to bound memory
TRAVERSAL_VALUES = torch.linspace(-3, 3, 11)  # -3 to +3 prior standard deviations
TRAVERSAL_ROWS = 10  # dimensions shown in a traversal, most KL first


class ImageError(BetaVAEError, ValueError):
    """Images of the wrong shape, type or range, or an image file that is not a 28x28 grey digit."""


class TrainedModel:
    """A trained β-VAE in eval mode, with what its model file says about it."""

    def __init__(self, model: torch.nn.Module, record: dict):
        self.model, self.record = model, record
        self.device = next(model.parameters()).device

    @property
    def latent_dim(self) -> int:
        return self.model.config.latent_dim

    @property
    def latent_kl(self) -> torch.Tensor:
        """(Z,) validation KL of each latent dimension at the saved epoch: how much it encodes."""
        return torch.tensor(self.record["latent_kl"], dtype=torch.float64)

    def dimensions_by_kl(self) -> list[int]:
        """Latent dimensions, the most informative (highest KL) first."""
        return self.latent_kl.argsort(descending=True, stable=True).tolist()

    @torch.no_grad()
    def encode(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> posterior mean and log-variance, each (N, Z), on the CPU."""
        parts = [self.model.encode(x.to(self.device)) for x in as_batch(images).split(BATCH)]
        return (torch.cat([mean for mean, _ in parts]).cpu(), torch.cat([logvar for _, logvar in parts]).cpu())

    @torch.no_grad()
    def decode(self, latents) -> torch.Tensor:
        """latents (N, Z) -> pixel probabilities (N, 1, 28, 28), on the CPU."""
        latents = torch.as_tensor(latents, dtype=torch.float32)
        if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
            raise ImageError(f"latents must have shape (N, {self.latent_dim}); got {tuple(latents.shape)}")
        return torch.cat([grids.samples(self.model, z.to(self.device)).cpu() for z in latents.split(BATCH)])

    def sample(self, count: int, seed: int = 0) -> torch.Tensor:
        """count images decoded from prior draws that depend on the seed alone."""
        if count < 1:
            raise ImageError(f"the number of samples must be >= 1; got {count}")
        return self.decode(grids.prior_latents(seed, self.latent_dim, count))

    def reconstruct(self, images) -> torch.Tensor:
        """images -> their reconstructions from the posterior mean, (N, 1, 28, 28)."""
        mean, _ = self.encode(images)
        return self.decode(mean)

    def traversal(self, base: torch.Tensor | None = None, dimensions: list[int] | None = None,
                  values: torch.Tensor = TRAVERSAL_VALUES) -> torch.Tensor:
        """Rows of decodings, one per dimension (default: the TRAVERSAL_ROWS with most KL), moving it
        through `values` with the other dimensions at `base` (default: the prior mean, 0)."""
        base = torch.zeros(self.latent_dim) if base is None else torch.as_tensor(base, dtype=torch.float32)
        dimensions = self.dimensions_by_kl()[:TRAVERSAL_ROWS] if dimensions is None else dimensions
        return grids.traversal(self.model, base.to(self.device), dimensions, values).cpu()

    def traversal_figure(self, base: torch.Tensor | None = None, what: str = "the prior mean",
                         rows: int = TRAVERSAL_ROWS):
        """The labelled traversal figure of the `rows` dimensions with most KL around `base`."""
        order, kl = self.dimensions_by_kl(), self.latent_kl
        shown = order[:rows]
        labels = [f"z{dim}  KL {kl[dim].item():.2f}" for dim in shown]
        title = f"Latent traversals around {what}: the {len(shown)} of {self.latent_dim} dimensions with most KL"
        if len(order) > len(shown):
            rest = kl[order[len(shown):]].sum().item() / kl.sum().item() if kl.sum() > 0 else 0.0
            title += f"\n(the other {len(order) - len(shown)} hold {rest:.1%} of the KL)"
        pixels = grids.mosaic(self.traversal(base, shown), columns=len(TRAVERSAL_VALUES))
        return traversal_figure(pixels, labels, TRAVERSAL_VALUES, title)


def load(path: str | Path, device: str = "auto") -> TrainedModel:
    """The model saved at path (models/model.pt), on `device`: auto (CUDA if present), cpu or cuda."""
    model, record = load_model(path, runtime.resolve_device(device))
    return TrainedModel(model, record)


def as_batch(images) -> torch.Tensor:
    """uint8 or float images, (N, 28, 28) or (N, 1, 28, 28) -> float (N, 1, 28, 28) in [0, 1]."""
    given = torch.as_tensor(images)
    images = given.unsqueeze(1) if given.ndim == 3 else given
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, SIDE, SIDE) or len(images) == 0:
        raise ImageError(f"images must have shape (N, {SIDE}, {SIDE}) or (N, 1, {SIDE}, {SIDE}) with N >= 1; "
                         f"got {tuple(given.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise ImageError(f"images must be uint8 (0-255) or float (0-1); got {images.dtype}")
    low, high = images.min().item(), images.max().item()
    if not (low >= 0 and high <= 1):
        raise ImageError(f"float images must lie in [0, 1]; got values from {low:g} to {high:g} "
                         "(pass uint8 for 0-255)")
    return images.float()


def read_images(paths: list[str | Path]) -> torch.Tensor:
    """One IDX image file, or any number of 28x28 greyscale PNG files -> uint8 (N, 28, 28)."""
    paths = [Path(path) for path in paths]
    if len(paths) == 1 and paths[0].suffix.lower() != ".png":
        return torch.from_numpy(idx.read_images(paths[0]).copy())
    return torch.stack([_read_png(path) for path in paths])


def _read_png(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            image.load()
    except OSError as error:  # missing, unreadable, or not an image Pillow knows
        reason = error.strerror or "not a PNG image"
        raise ImageError(f"{path}: {reason}") from None
    if image.format != "PNG" or image.mode != "L" or image.size != (SIDE, SIDE):
        kind = {"L": "8-bit grey", "I;16": "16-bit grey", "LA": "grey with alpha", "RGB": "RGB", "RGBA": "RGBA",
                "P": "palette", "1": "1-bit"}.get(image.mode, image.mode)
        raise ImageError(f"{path}: a {image.size[0]}x{image.size[1]} {kind} {image.format or 'image'}; "
                         f"expected a {SIDE}x{SIDE} 8-bit greyscale PNG")
    return torch.from_numpy(np.array(image, dtype=np.uint8))
