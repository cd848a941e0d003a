"""Use a trained model from Python: encode, decode, sample, reconstruct and traverse.

    from betavae.uses import api
    vae = api.load("models/model.pt")              # on CUDA if present, else the CPU
    digits = api.read_images(["a.png", "b.png"])   # 28x28 grey PNGs or one IDX file -> uint8 (N, 28, 28)
    mean, logvar = vae.encode(digits)              # the posterior, (N, Z) each
    pictures = vae.sample(16, seed=0)              # (16, 1, 28, 28) pixel probabilities in [0, 1]
    same = vae.reconstruct(digits)                 # (N, 1, 28, 28)

Images may be uint8 (0-255) or float (0-1), shaped (N, 28, 28) or (N, 1, 28, 28), as torch
tensors or numpy arrays; anything else is refused with an ImageError that says what it got, and a
latent code of the wrong shape with a LatentError. Requests too large for the memory free here are
refused before anything is allocated. The `betavae` command (betavae/uses/cli.py) does the same from a
shell.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from betavae.core import files, grids, idx
from betavae.core.data import INFERENCE_BATCH
from betavae.errors import BetaVAEError, counted, one_line
from betavae.pipeline.modelfile import ModelFile, load_model
from betavae.pipeline.params import DEVICES, MAX_SEED
from betavae.speed import runtime

SIDE = idx.IMAGE_SIDE
MAX_PNG_BYTES = 2**24  # a 28x28 grey PNG is under 2 KB; the rest is room for its text and metadata chunks
TRAVERSAL_VALUES = torch.linspace(-3, 3, 11)  # -3 to +3 prior standard deviations
TRAVERSAL_ROWS = 10  # dimensions shown in a traversal, most KL first


class ImageError(BetaVAEError, ValueError):
    """Images of the wrong shape, type or range, or an image file that is not a 28x28 grey digit."""


class LatentError(BetaVAEError, ValueError):
    """A latent code, dimension or count that does not fit the model."""


class ArgumentError(BetaVAEError, ValueError):
    """Any other argument of the API that is of the wrong kind or out of range (a path, a device, a seed)."""


def _integer(value: object, name: str, low: int, high: int | None = None, error: type = ArgumentError) -> int:
    """value as an int in [low, high] (bool is not an int here), else `error` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise error(f"{name} must be an integer {bounds}; got {_shown(value)}")
    return int(value)


def _shown(value: object) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else f"{text[:57]}..."


class TrainedModel:
    """A trained β-VAE in eval mode, with what its model file says about it."""

    def __init__(self, model: torch.nn.Module, model_file: ModelFile):
        self.model, self.model_file = model, model_file
        self.device = next(model.parameters()).device

    @property
    def latent_dim(self) -> int:
        return self.model.config.latent_dim

    @property
    def latent_kl(self) -> torch.Tensor:
        """(Z,) validation KL of each latent dimension at the saved epoch: how much it encodes."""
        return torch.tensor(self.model_file.latent_kl, dtype=torch.float64)

    def dimensions_by_kl(self) -> list[int]:
        """Latent dimensions, the most informative (highest KL) first."""
        return self.latent_kl.argsort(descending=True, stable=True).tolist()

    @torch.no_grad()
    def encode(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> posterior mean and log-variance, each (N, Z), on the CPU."""
        batch = as_batch(images)
        check_images_fit(len(batch), f"encoding {counted(len(batch), 'image')}")
        parts = [self.model.encode(x.to(self.device)) for x in batch.split(INFERENCE_BATCH)]
        return (torch.cat([mean for mean, _ in parts]).cpu(), torch.cat([logvar for _, logvar in parts]).cpu())

    @torch.no_grad()
    def decode(self, latents) -> torch.Tensor:
        """latents (N, Z) -> pixel probabilities (N, 1, 28, 28), on the CPU."""
        latents = self._latents(latents, "latents", (-1, self.latent_dim))
        check_images_fit(len(latents), f"decoding {counted(len(latents), 'latent')}")
        return torch.cat([self.model.pixel_probabilities(z.to(self.device)).cpu()
                          for z in latents.split(INFERENCE_BATCH)])

    def sample(self, count: int, seed: int = 0) -> torch.Tensor:
        """count images decoded from prior draws that depend on the seed alone."""
        count = _integer(count, "the number of samples", 1, error=LatentError)
        seed = _integer(seed, "seed", 0, MAX_SEED)
        check_images_fit(count, f"{count} samples")
        return self.decode(grids.prior_latents(seed, self.latent_dim, count))

    def reconstruct(self, images) -> torch.Tensor:
        """images -> their reconstructions from the posterior mean, (N, 1, 28, 28)."""
        mean, _ = self.encode(images)
        return self.decode(mean)

    def traversal(self, base: torch.Tensor | None = None, dimensions: list[int] | None = None,
                  values: torch.Tensor = TRAVERSAL_VALUES) -> torch.Tensor:
        """Rows of decodings, one per dimension (default: the TRAVERSAL_ROWS with most KL), moving it
        through `values` with the other dimensions at `base` (default: the prior mean, 0)."""
        base = torch.zeros(self.latent_dim) if base is None else self._latents(base, "base", (self.latent_dim,))
        if dimensions is not None and not isinstance(dimensions, (list, tuple)):
            raise LatentError(f"dimensions must be a list of integers; got {_shown(dimensions)}")
        dimensions = self.dimensions_by_kl()[:TRAVERSAL_ROWS] if dimensions is None else list(dimensions)
        bad = [d for d in dimensions if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < self.latent_dim]
        if bad or not dimensions:
            raise LatentError(f"dimensions must be a non-empty list of integers in [0, {self.latent_dim}); got "
                              f"{dimensions!r}")
        values = self._latents(values, "values", (-1,))
        images = len(dimensions) * len(values)
        check_images_fit(images, f"a traversal of {counted(images, 'image')}")
        return grids.traversal(self.model, base.to(self.device), dimensions, values).cpu()

    def _latents(self, given, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """given as a float tensor of `shape` (-1: any length >= 1) with finite values, else LatentError."""
        if isinstance(given, (str, bytes, Path)) or given is None:
            raise LatentError(f"{name} must be numbers (a tensor, an array or a list); got {_shown(given)}")
        try:
            latents = torch.as_tensor(given, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError, OverflowError) as error:
            raise LatentError(f"{name} must be numbers; got {type(given).__name__} ({one_line(error)[:120]})") from None
        if latents.is_meta:
            raise LatentError(f"{name} must hold numbers; got a tensor on the meta device, which holds none")
        fits = latents.ndim == len(shape) and all(want in (-1, got) for want, got in zip(shape, latents.shape))
        if not fits or latents.numel() == 0:
            wanted = ", ".join("N" if size == -1 else str(size) for size in shape)
            raise LatentError(f"{name} must have shape ({wanted}{',' if len(shape) == 1 else ''}) with N >= 1; "
                              f"got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise LatentError(f"{name} must be finite; got NaN or infinity")
        return latents

    def traversal_figure(self, base: torch.Tensor | None = None, what: str = "the prior mean",
                         rows: int | None = None):
        """The labelled traversal figure of the `rows` dimensions with most KL around `base`
        (default: TRAVERSAL_ROWS, or every dimension of a smaller code)."""
        from betavae.uses.figures import literal, traversal_figure  # matplotlib: only drawing a figure needs it

        if not isinstance(what, str):
            raise ArgumentError(f"what must be text describing the base; got {_shown(what)}")
        rows = min(TRAVERSAL_ROWS, self.latent_dim) if rows is None else rows
        rows = _integer(rows, f"rows (of the {self.latent_dim} latent dimensions)", 1, self.latent_dim, LatentError)
        order, kl = self.dimensions_by_kl(), self.latent_kl
        shown = order[:rows]
        labels = [f"z{dim}  KL {kl[dim].item():.2f}" for dim in shown]
        title = (f"Latent traversals around {literal(what)}: the {len(shown)} of {self.latent_dim} "
                 "dimensions with most KL")
        if len(order) > len(shown):
            rest = kl[order[len(shown):]].sum().item() / kl.sum().item() if kl.sum() > 0 else 0.0
            title += f"\n(the other {len(order) - len(shown)} hold {rest:.1%} of the KL)"
        pixels = grids.mosaic(self.traversal(base, shown), columns=len(TRAVERSAL_VALUES))
        return traversal_figure(pixels, labels, TRAVERSAL_VALUES, title)


def load(path: str | Path, device: str = "auto") -> TrainedModel:
    """The model saved at path (models/model.pt), on `device`: auto (CUDA if present), cpu or cuda."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"path must be the model file's path; got {_shown(path)}")
    if device not in DEVICES:
        raise ArgumentError(f"device must be one of {', '.join(DEVICES)}; got {_shown(device)}")
    model, model_file = load_model(path, runtime.resolve_device(device, runtime.API_DEVICE))
    return TrainedModel(model, model_file)


def check_images_fit(count: int, what: str) -> None:
    """Refuse, before allocating, `count` decoded images (and their grid) beyond the free memory."""
    image_bytes = SIDE * SIDE * 4 * 3  # float pixels, a copy on their way to a grid, its uint8 cells
    runtime.check_memory(count * image_bytes, what, torch.device("cpu"))


def as_batch(images) -> torch.Tensor:
    """uint8 or float images, (N, 28, 28) or (N, 1, 28, 28) -> float (N, 1, 28, 28) in [0, 1]."""
    if isinstance(images, (str, bytes, os.PathLike)):
        raise ImageError(f"images must be pixels (a tensor or an array); got {_shown(images)}: to read image files, "
                         "use api.read_images([...]) first")
    try:
        given = torch.as_tensor(images)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ImageError(f"images must be pixels (a tensor or an array); got {_shown(images)} "
                         f"({one_line(error)[:120]})") from None
    if given.is_meta:
        raise ImageError("images must hold pixel values; got a tensor on the meta device, which holds none")
    images = given.unsqueeze(1) if given.ndim == 3 else given
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, SIDE, SIDE) or len(images) == 0:
        raise ImageError(f"images must have shape (N, {SIDE}, {SIDE}) or (N, 1, {SIDE}, {SIDE}) with N >= 1; "
                         f"got {tuple(given.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point() or images.is_complex():
        raise ImageError(f"images must be uint8 (0-255) or float (0-1); got {images.dtype}")
    if images.isnan().any():
        raise ImageError("float images must lie in [0, 1]; got NaN")
    low, high = images.min().item(), images.max().item()
    if not (low >= 0 and high <= 1):
        raise ImageError(f"float images must lie in [0, 1]; got values from {low:g} to {high:g} "
                         "(pass uint8 for 0-255)")
    return images.float()


def read_images(paths: list[str | Path] | str | Path) -> torch.Tensor:
    """One IDX image file, or any number of 28x28 greyscale PNG files (a path, or a list of them) ->
    uint8 (N, 28, 28)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if (not isinstance(paths, (list, tuple)) or not paths
            or not all(isinstance(path, (str, os.PathLike)) for path in paths)):
        raise ImageError(f"paths must be a file's path or a non-empty list of them; got {_shown(paths)}")
    check_images_fit(len(paths), "reading the images")
    paths = [Path(path) for path in paths]
    if len(paths) == 1 and paths[0].suffix.lower() != ".png":
        return torch.from_numpy(idx.read_images(paths[0]).copy())
    return torch.stack([_read_png(path) for path in paths])


def _read_png(path: Path) -> torch.Tensor:
    data = files.read_bytes(path, MAX_PNG_BYTES, "a 28x28 PNG", ImageError)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (SIDE, SIDE):  # before decoding: a huge image is never loaded
                raise ImageError(f"{path}: a {image.size[0]}x{image.size[1]} image; expected a {SIDE}x{SIDE} "
                                 "8-bit greyscale PNG")
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:  # a header claiming billions of pixels, refused before decoding
        raise ImageError(f"{path}: an image of more than {Image.MAX_IMAGE_PIXELS} pixels; expected a "
                         f"{SIDE}x{SIDE} 8-bit greyscale PNG") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable PNG image (not in any image format Pillow knows)") from None
    except OSError as error:  # a damaged image
        raise ImageError(f"{path}: not a readable PNG image ({one_line(error)[:120]})") from None
    except Exception as error:  # Pillow raises many types for damaged files (ValueError, SyntaxError, ...)
        detail = f"{type(error).__name__}: {one_line(error)[:120]}"
        raise ImageError(f"{path}: not a readable PNG image ({detail})") from None
    if image.format != "PNG" or image.mode != "L" or image.size != (SIDE, SIDE):
        kind = {"L": "8-bit grey", "I;16": "16-bit grey", "LA": "grey with alpha", "RGB": "RGB", "RGBA": "RGBA",
                "P": "palette", "1": "1-bit"}.get(image.mode, image.mode)
        raise ImageError(f"{path}: a {image.size[0]}x{image.size[1]} {kind} {image.format or 'image'}; "
                         f"expected a {SIDE}x{SIDE} 8-bit greyscale PNG")
    return torch.from_numpy(np.array(image, dtype=np.uint8))
