import pytest
import torch

from scalavit import WidthGrid, select_channels


@pytest.mark.parametrize('granularity, count', [(1 / 16, 13), (1 / 32, 25), (1 / 8, 7), (1 / 4, 4)])
def test_grid_sizes_match_the_paper(granularity, count):
    widths = WidthGrid(0.25, 1.0, granularity).widths
    assert len(widths) == count
    assert widths[0] == 0.25 and widths[-1] == 1.0


def test_default_grid_is_exact():
    assert WidthGrid().widths == tuple(k / 16 for k in range(4, 17))


def test_snap_accepts_float_noise_and_rejects_off_grid_widths():
    grid = WidthGrid()
    assert grid.snap(0.1 + 0.2 + 0.0125) == 0.3125
    with pytest.raises(ValueError, match='valid widths'):
        grid.snap(0.3)


@pytest.mark.parametrize('kwargs, message', [
    (dict(smallest=0.0), 'smallest'),
    (dict(smallest=0.5, largest=0.25), 'smallest'),
    (dict(largest=1.5), 'largest'),
    (dict(granularity=0.0), 'granularity must be positive'),
    (dict(granularity=0.1), 'not a whole number of granularity steps'),
])
def test_bad_grids_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WidthGrid(**kwargs)


def test_isolated_activation_takes_first_channels_at_the_ends_and_last_ones_between():
    grid = WidthGrid()
    assert select_channels(grid, 0.25, 384, 1536).embed == (0, 96)
    assert select_channels(grid, 1.0, 384, 1536) == ((0, 384), (0, 1152), (0, 1536), 384)
    assert select_channels(grid, 0.5, 384, 1536) == ((192, 384), (576, 1152), (768, 1536), 192)
    assert select_channels(grid, 0.5, 384, 1536, isolated_activation=False).embed == (0, 192)


def test_largest_below_one_still_takes_the_first_channels():
    grid = WidthGrid(0.25, 0.75, 0.125)
    assert select_channels(grid, 0.75, 384, 1536).embed == (0, 288)
    assert select_channels(grid, 0.625, 384, 1536).embed == (144, 384)


def test_stable_sampling_bins_follow_the_reference_code():
    upper, lower = WidthGrid().stable_bins()
    assert upper == (0.625, 0.6875, 0.75, 0.8125, 0.875, 0.9375)
    assert lower == (0.3125, 0.375, 0.4375, 0.5, 0.5625)


def test_granularity_a_quarter_always_trains_a_half_and_three_quarters():
    grid = WidthGrid(granularity=0.25)
    generator = torch.Generator().manual_seed(0)
    assert {grid.sample(generator) for _ in range(20)} == {(0.75, 0.5)}


def test_stable_sampling_draws_every_width_of_each_bin_and_uniform_sampling_mixes_them():
    grid = WidthGrid()
    generator = torch.Generator().manual_seed(0)
    draws = [grid.sample(generator) for _ in range(600)]
    upper, lower = grid.stable_bins()
    assert {high for high, _ in draws} == set(upper)
    assert {low for _, low in draws} == set(lower)
    uniform = [grid.sample(generator, stable=False) for _ in range(600)]
    assert all(high >= low for high, low in uniform)
    assert any(low >= 0.625 for _, low in uniform) and any(high < 0.625 for high, _ in uniform)


def test_a_grid_with_no_intermediate_width_cannot_be_sampled():
    with pytest.raises(ValueError, match='no intermediate width'):
        WidthGrid(granularity=0.75).sample(torch.Generator())
