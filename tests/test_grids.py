"""Mosaics of decoded digits (betavae/core/grids.py)."""

import torch

from betavae.core import grids


def test_a_mosaic_lays_images_out_in_rows_with_white_gaps_at_the_saved_scale():
    images = torch.zeros(10, 1, 28, 28)
    pixels = grids.mosaic(images, columns=4)
    assert pixels.dtype == torch.uint8
    assert pixels.shape == (grids.SCALE * (3 * 30 + 2), grids.SCALE * (4 * 30 + 2))
    assert pixels[0, 0] == 255 and pixels[grids.SCALE * 2, grids.SCALE * 2] == 0  # a gap, then an image


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
