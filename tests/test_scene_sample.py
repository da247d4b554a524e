"""The scene sample read from the COGs' overviews (``load_scene_sample``, ``restore(scene_sample=)``)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from pipeline.cube import CubeConfig, load_cube, load_scene_sample
from pipeline.restore import restore, sample_stride
from pipeline.synthetic import make_stack, write_stac_items

BANDS = ("B02", "B03", "B04", "B08", "B11")
CONFIG = CubeConfig(bands=BANDS, chunk_size=128, include_scl=True)


@pytest.fixture(scope="module")
def stack_items(tmp_path_factory):
    stack = make_stack((4, 256, 256), bands=BANDS, seed=5)
    items = write_stac_items(
        stack, tmp_path_factory.mktemp("cogs"), blocksize=64, baselines="02.12"
    )
    return stack, items


def test_the_sample_is_the_coarse_grid_read_from_the_overviews(stack_items):
    _, items = stack_items
    cube = load_cube(items, CONFIG)
    geobox = cube.odc.geobox
    sample = load_scene_sample(items, CONFIG, geobox, sample_pixels=64 * 64)
    assert sample_stride(geobox.shape, 64 * 64) == 4
    assert sample.sizes == {"time": 4, "y": 64, "x": 64}
    assert sample["B02"].chunks is None  # in memory
    np.testing.assert_array_equal(sample["time"].values, cube["time"].values)
    assert sample.odc.geobox.resolution.x == 4 * geobox.resolution.x
    # the 1/4 grid is exactly the second overview level: the pixels are its values, scaled
    href = items[0].assets["B02"].href
    with rasterio.open(href, overview_level=1) as src:
        overview = src.read(1).astype(np.float64)
    assert overview.shape == (64, 64)
    expected = np.where(overview > 0, overview / 10000.0, np.nan)
    np.testing.assert_allclose(sample["B02"].values[0], expected, atol=1e-6, equal_nan=True)
    # ... which the strided sample of the full grid is not (the overview averages 4x4 pixels)
    strided = cube["B02"].values[0, ::4, ::4]
    assert np.nanmax(np.abs(strided - expected)) > 1e-3


def test_restore_with_the_coarse_sample_matches_the_strided_one(stack_items):
    _, items = stack_items
    cube = load_cube(items, CONFIG)
    sample = load_scene_sample(items, CONFIG, cube.odc.geobox, sample_pixels=64 * 64)
    coarse = restore(cube, scene_sample=sample).compute()
    strided = restore(cube, sample_pixels=64 * 64).compute()
    assert (
        coarse.attrs["scene_sample"] == "coarse grid" and coarse.attrs["scene_sample_stride"] == 4
    )
    assert strided.attrs["scene_sample"] == "strided"
    # the scene parameters come from other pixels, so they differ a little, not much
    np.testing.assert_allclose(coarse["airlight"], strided["airlight"], atol=0.05)
    diff = np.abs(coarse["B04"].values - strided["B04"].values)
    assert np.nanmedian(diff) < 0.005


def test_a_sample_of_other_dates_or_bands_is_refused(stack_items):
    _, items = stack_items
    cube = load_cube(items, CONFIG)
    sample = load_scene_sample(items, CONFIG, cube.odc.geobox, sample_pixels=64 * 64)
    with pytest.raises(ValueError, match="scene_sample has 3 dates"):
        restore(cube, scene_sample=sample.isel(time=slice(0, 3)))
    with pytest.raises(ValueError, match=r"scene_sample lacks \['B11'\]"):
        restore(cube, scene_sample=sample.drop_vars("B11"))


def test_a_long_series_is_sampled_no_denser_than_twelve_dates():
    """Up to 12 dates keep the per-date default; a longer series gets a coarser stride whose
    sample holds no more pixel-dates than 12 dates of the same grid (at least 4096 px per
    date), so the scene estimation's memory does not grow with the search."""
    from pipeline.restore import MIN_SAMPLE_PIXELS, scene_sample_stride

    def held(shape, dates):
        s = scene_sample_stride(shape, dates)
        return dates * -(-shape[0] // s) * -(-shape[1] // s)

    for shape in ((256, 256), (512, 512), (1024, 1024), (700, 1300)):
        twelve = held(shape, 12)
        assert scene_sample_stride(shape, 4) == scene_sample_stride(shape, 12)
        assert scene_sample_stride(shape, 12) == sample_stride(shape)
        for dates in (36, 73, 146):
            assert held(shape, dates) <= twelve
            assert held(shape, dates) >= MIN_SAMPLE_PIXELS * dates
    assert scene_sample_stride((1024, 1024), 12) == 3
    assert scene_sample_stride((1024, 1024), 146) == 11  # 94 x 94 px per date
    # never below 64 x 64 px per date, even where the budget asks for less
    assert scene_sample_stride((256, 256), 10_000) == 4
    assert scene_sample_stride((256, 256), 146, 64 * 64) == 4  # a caller's figure is kept
    assert scene_sample_stride((256, 256), 146, 256 * 256) == 1


def test_the_strided_sample_of_a_long_series_is_coarser():
    from pipeline.restore import _sample

    frame = np.zeros((1, 1, 800, 800), np.float32)
    short = np.broadcast_to(frame, (12, 1, 800, 800))
    year = np.broadcast_to(frame, (146, 1, 800, 800))
    (s12, stride12), (s146, stride146) = _sample(short, None), _sample(year, None)
    assert (stride12, stride146) == (2, 8)
    assert s146.size <= s12.size  # pixel-dates held: no more than 12 dates' worth


def test_the_coarse_sample_of_a_long_series_is_coarser(tmp_path):
    """``load_scene_sample`` (what the flows estimate the scene state from) counts the
    items' dates: 48 dates of a 256 px area are sampled at 1/2 where 12 are read whole."""
    stack = make_stack((48, 256, 256), bands=("B02", "B04"), seed=1, interval_days=2.5)
    items = write_stac_items(stack, tmp_path, blocksize=64)
    config = CubeConfig(bands=("B02", "B04"), chunk_size=128, include_scl=True)
    geobox = stack.truth.odc.geobox
    assert load_scene_sample(items[:12], config, geobox).sizes == {"time": 12, "y": 256, "x": 256}
    assert load_scene_sample(items, config, geobox).sizes == {"time": 48, "y": 128, "x": 128}
