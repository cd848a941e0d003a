"""Mosaics of decoded digits (betavae/core/grids.py)."""

import pytest
import torch

from betavae.core import grids


def test_a_mosaic_lays_images_out_in_rows_with_white_gaps_at_the_saved_scale():
    images = torch.zeros(10, 1, 28, 28)
    pixels = grids.mosaic(images, columns=4)
    assert pixels.dtype == torch.uint8
    assert pixels.shape == (grids.SCALE * (3 * 30 + 2), grids.SCALE * (4 * 30 + 2))
    assert pixels[0, 0] == 255 and pixels[grids.SCALE * 2, grids.SCALE * 2] == 0  # a gap, then an image


@pytest.mark.parametrize("count, columns, height, width", [
    (64, 8, 28, 28), (10, 4, 28, 28), (3, 8, 28, 28), (2, 8, 5, 7), (9, 3, 4, 4), (17, 8, 28, 28)])
def test_a_mosaic_has_torchvisions_make_grid_pixels(count, columns, height, width):
    """The mosaic is the project's own (importing torchvision costs 2.5 s a process); its pixels are
    make_grid's wherever make_grid pads (it returns a lone image without a gap, the mosaic does not)."""
    from torchvision.utils import make_grid

    images = torch.rand(count, 1, height, width, generator=torch.Generator().manual_seed(count)) * 1.2 - 0.1
    expected = make_grid(images.clamp(0, 1), nrow=columns, padding=2, pad_value=1.0)[0].mul(255).round().to(torch.uint8)
    expected = expected.repeat_interleave(grids.SCALE, 0).repeat_interleave(grids.SCALE, 1)
    assert torch.equal(grids.mosaic(images, columns), expected)


def test_a_lone_image_has_its_white_border_too():
    pixels = grids.mosaic(torch.zeros(1, 1, 28, 28))
    assert pixels.shape == (grids.SCALE * 32, grids.SCALE * 32)
    border = grids.SCALE * grids.GAP
    assert pixels[0].eq(255).all() and pixels[border:-border, border:-border].eq(0).all()


def test_rows_of_inputs_sit_above_their_outputs_and_a_short_last_row_is_blank_filled():
    top, bottom = torch.zeros(5, 1, 2, 2), torch.full((5, 1, 2, 2), 0.5)
    pairs = grids.interleave_rows(top, bottom, columns=3)
    assert pairs.shape == (12, 1, 2, 2)
    assert pairs[:3].eq(0).all() and pairs[3:6].eq(0.5).all()
    assert pairs[8].eq(1).all() and pairs[11].eq(1).all()  # blank (white) cells complete the second row


def test_prior_latents_depend_on_the_seed_alone():
    assert torch.equal(grids.prior_latents(3, 5), grids.prior_latents(3, 5))
    assert grids.prior_latents(3, 5).shape == (grids.SAMPLES, 5)
    assert not torch.equal(grids.prior_latents(3, 5), grids.prior_latents(4, 5))
