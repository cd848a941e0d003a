"""Pictures as files, in the format their name asks for: the one place where pixels and figures
become bytes. A name whose format cannot be written is refused before anything is computed
(`check_name`), never written in another format under it.

    pixels   a uint8 (H, W) grey image (the mosaics of betavae/core/grids.py): PNG, JPEG, WebP,
             BMP, TIFF or GIF, through Pillow
    figures  a matplotlib Figure (betavae/uses/figures.py): PNG, JPEG, SVG, PDF or any other
             format matplotlib writes
Bytes are the same for the same picture: no timestamps or software names are embedded.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from betavae.errors import BetaVAEError

PIXEL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".gif": "GIF"}
FIGURE_FORMATS = (".png", ".jpg", ".jpeg", ".svg", ".pdf", ".eps", ".ps", ".tif", ".tiff", ".webp")
JPEG_QUALITY = 95


class PictureNameError(BetaVAEError, ValueError):
    """An output name whose suffix names no format this kind of picture can be written in."""


def check_name(path: str | Path, kind: str = "pixels") -> None:
    """Refuse, naming the formats that can be written, a name whose suffix is not one of them."""
    suffix = Path(path).suffix.lower()
    formats = PIXEL_FORMATS if kind == "pixels" else FIGURE_FORMATS
    if suffix not in formats:
        names = ", ".join(sorted(set(formats)))
        shown = f"ends in {suffix!r}" if suffix else "has no suffix"
        raise PictureNameError(f"{path}: {shown}; a {'picture' if kind == 'pixels' else 'figure'} is written as "
                               f"one of {names}")


def pixels_bytes(pixels, path: str | Path = "picture.png") -> bytes:
    """uint8 (H, W) pixels (a torch tensor or numpy array) -> the bytes of an image file in the format
    path's suffix names. Pillow, as DVCLive uses for the snapshots."""
    from PIL import Image

    check_name(path, "pixels")
    image_format = PIXEL_FORMATS[Path(path).suffix.lower()]
    array = pixels.numpy() if hasattr(pixels, "numpy") else pixels
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
    Image.fromarray(array, mode="L").save(buffer, format=image_format, **options)
    return buffer.getvalue()


def figure_bytes(figure, path: str | Path = "figure.png") -> bytes:
    """A matplotlib Figure -> the bytes of the format path's suffix names, without the date or
    software metadata that would make the same figure different bytes."""
    check_name(path, "figures")
    suffix = Path(path).suffix.lower().lstrip(".")
    image_format = {"jpg": "jpeg", "tif": "tiff"}.get(suffix, suffix)
    metadata = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
                "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
                "eps": {"Creator": None}, "ps": {"Creator": None}}.get(image_format)
    buffer = io.BytesIO()
    if image_format == "svg":  # a fixed id salt, or every save names its clip paths anew
        import matplotlib

        with matplotlib.rc_context({"svg.hashsalt": "betavae"}):
            figure.savefig(buffer, format=image_format, metadata=metadata, dpi=figure.dpi)
    else:
        figure.savefig(buffer, format=image_format, metadata=metadata, dpi=figure.dpi)
    if image_format in ("ps", "eps"):  # matplotlib always stamps the time here (unless SOURCE_DATE_EPOCH is set)
        return re.sub(rb"%%(CreationDate|Creator): [^\n]*\n", b"", buffer.getvalue(), count=2)
    return buffer.getvalue()
