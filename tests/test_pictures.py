"""Pictures written in the format their name asks for (betavae/pipeline/pictures.py), and refused
where no format fits the name."""

import io
import time

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from betavae.core import grids
from betavae.pipeline import pictures


def _pixels() -> torch.Tensor:
    return grids.mosaic(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)))


def _figure() -> Figure:
    figure = Figure(figsize=(2, 2), dpi=50)
    figure.subplots().plot([0, 1, 4], [1, 2, 0])
    return figure


@pytest.mark.parametrize("name, kind", [("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.JPEG", "JPEG"), ("a.webp", "WEBP"),
                                        ("a.bmp", "BMP"), ("a.tif", "TIFF"), ("a.gif", "GIF")])
def test_pixels_are_written_in_the_format_the_name_asks_for(name, kind):
    data = pictures.pixels_bytes(_pixels(), name)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == kind and image.size == tuple(reversed(_pixels().shape))


@pytest.mark.parametrize("name, start", [("f.png", b"\x89PNG"), ("f.pdf", b"%PDF"), ("f.svg", b"<?xml"),
                                         ("f.jpg", b"\xff\xd8"), ("f.eps", b"%!PS"), ("f.ps", b"%!PS")])
def test_figures_are_written_in_the_format_the_name_asks_for_and_the_same_figure_is_the_same_bytes(name, start,
                                                                                                 monkeypatch):
    """The clock moves between the two writes: matplotlib stamps PostScript with time.ctime()."""
    clock = iter(["Sat Dec  5 08:04:09 2026", "Sat Dec  5 08:04:10 2026"])
    monkeypatch.setattr(time, "ctime", lambda *_: next(clock))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first, second = pictures.figure_bytes(_figure(), name), pictures.figure_bytes(_figure(), name)
    assert first.startswith(start) and first == second


@pytest.mark.parametrize("name", ["s.txt", "s", "s.png.exe", "s.csv", "s.pdf"])
def test_a_name_no_pixel_format_fits_is_refused_naming_the_formats(name):
    with pytest.raises(pictures.PictureNameError, match=r"a picture is written as one of \.bmp, .*\.png"):
        pictures.pixels_bytes(_pixels(), name)


def test_a_name_no_figure_format_fits_is_refused():
    with pytest.raises(pictures.PictureNameError, match="has no suffix"):
        pictures.figure_bytes(_figure(), "traversal")
    pictures.check_name("t.svg", "figures")
