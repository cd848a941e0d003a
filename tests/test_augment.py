import math

import torch

from betavae.core.augment import draw_affine, random_affine, warp


def _dot(row: int, column: int) -> torch.Tensor:
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, row, column] = 1.0
    return x


def test_shift_of_one_pixel_in_normalised_units_moves_content_by_one_pixel():
    theta = torch.tensor([[[1.0, 0.0, 2 / 28], [0.0, 1.0, 0.0]]])  # output(u) = input(u + 1 px)
    out = warp(_dot(10, 12), theta)
    assert torch.allclose(out, _dot(10, 11), atol=1e-6)


def test_quarter_turn_maps_pixels_like_rot90():
    x = torch.rand(1, 1, 28, 28)
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    out = warp(x, quarter)
    assert torch.allclose(out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5) or \
        torch.allclose(out, torch.rot90(x, k=-1, dims=(2, 3)), atol=1e-5)


def test_draws_stay_within_the_configured_ranges():
    theta = draw_affine(10_000, 15.0, 0.1, torch.Generator().manual_seed(0))
    angles = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    assert angles.abs().max() <= math.radians(15.0) + 1e-6
    assert angles.abs().max() > math.radians(14.0)  # the range is used, not just its middle
    assert theta[:, :, 2].abs().max() <= 0.2 + 1e-6
    assert torch.allclose(theta[:, 0, 0], theta[:, 1, 1])  # pure rotation: no scale or shear


def test_zero_strength_is_the_identity_and_draws_nothing():
    x = torch.rand(4, 1, 28, 28)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert random_affine(x, 0.0, 0.0, generator) is x
    assert torch.equal(generator.get_state(), state)


def test_each_image_gets_its_own_transform_and_seed_reproduces_it():
    x = torch.rand(1, 1, 28, 28).expand(8, 1, 28, 28).contiguous()
    first = random_affine(x, 20.0, 0.1, torch.Generator().manual_seed(3))
    again = random_affine(x, 20.0, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert not torch.allclose(first[0], first[1])


def _digit_like(generator: torch.Generator) -> torch.Tensor:
    """(16, 1, 28, 28) images of crisp strokes: a few grey levels on a black background."""
    levels = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, 1.0])
    return levels[torch.randint(len(levels), (16, 1, 28, 28), generator=generator)]


def test_nearest_only_moves_pixels_so_no_new_grey_levels_appear():
    x = _digit_like(torch.Generator().manual_seed(0))
    out = random_affine(x, 10.0, 0.1, torch.Generator().manual_seed(1))  # the default interpolation
    assert set(out.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert not torch.equal(out, x)


def test_bilinear_blends_neighbours_into_new_grey_levels():
    x = _digit_like(torch.Generator().manual_seed(0))
    out = random_affine(x, 10.0, 0.1, torch.Generator().manual_seed(1), interpolation="bilinear")
    assert len(set(out.unique().tolist()) - {0.0, 0.5, 1.0}) > 100


def test_both_interpolations_draw_the_same_transforms():
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 9:19, 9:19] = 1.0
    nearest = random_affine(x, 10.0, 0.1, torch.Generator().manual_seed(1), "nearest")
    bilinear = random_affine(x, 10.0, 0.1, torch.Generator().manual_seed(1), "bilinear")
    # same geometry: the two differ by sub-pixel resampling, not by where the content went
    assert (nearest - bilinear).abs().mean() < 0.25 * (nearest - x).abs().mean()
