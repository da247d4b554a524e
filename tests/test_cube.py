"""Datacube loading: real Planetary Computer DN, both baselines, proj:epsg and proj:code."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cube import CubeConfig, load_cube

from .real_fixtures import AUSTRIA_BANDS, read_austria_dn, write_austria_items


@pytest.fixture(scope="module")
def austria_items(tmp_path_factory, request):
    from .conftest import shared_data

    tif = shared_data("pc-l2a-austria-2dates", "inference-img.tif")
    items_dir = shared_data("pc-stac-items")
    out = tmp_path_factory.mktemp("austria")
    return tif, write_austria_items(tif, items_dir, out)


def test_cube_scales_each_date_by_its_own_baseline(austria_items):
    tif, items = austria_items
    assert items[0].properties["s2:processing_baseline"] == "02.12"
    assert items[1].properties["s2:processing_baseline"] == "05.10"
    assert "proj:code" in items[1].properties and "proj:epsg" not in items[1].properties

    cube = load_cube(items, CubeConfig(bands=AUSTRIA_BANDS, include_scl=False, chunk_size=256))
    assert cube.sizes["time"] == 2
    assert cube.odc.crs.epsg == 32633
    for band in AUSTRIA_BANDS:
        assert cube[band].dtype == np.float32
        assert cube[band].chunks is not None  # lazy
    loaded = cube.compute()

    dn = read_austria_dn(tif)
    for band in AUSTRIA_BANDS:
        got = loaded[band].values
        assert got.shape[1:] == dn[band].shape[1:]
        expected = np.where(dn[band] > 0, dn[band] / 10000.0, np.nan).astype("float32")
        # Date B was re-encoded as baseline 05.10 (DN + 1000): the -1000 must be undone.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, equal_nan=True)


def test_missing_asset_names_item_and_fix(austria_items):
    _, items = austria_items
    with pytest.raises(ValueError, match=r"has no asset\(s\) \['B11'\].*--bands"):
        load_cube(items, CubeConfig(bands=("B04", "B11"), include_scl=False))


def test_unknown_band_is_rejected_with_the_valid_keys():
    with pytest.raises(ValueError, match="valid asset keys are B01"):
        CubeConfig(bands=("B04", "B10"))


def test_failed_read_raises_with_asset_named(austria_items, tmp_path):
    _, items = austria_items
    broken = [it.clone() for it in items]
    broken[1].assets["B04"].href = (tmp_path / "gone.tif").as_uri()
    cube = load_cube(broken, CubeConfig(bands=("B04",), include_scl=False, max_read_attempts=1))
    from pipeline._reading import ReadFailedError, collect_read_failures

    collect_read_failures()  # start clean
    with pytest.raises(ReadFailedError, match="gone.tif"):
        cube.compute(scheduler="synchronous")
    failures = collect_read_failures()
    assert [f.href.endswith("gone.tif") for f in failures] == [True]


def test_failed_read_counted_not_silent(austria_items, tmp_path):
    _, items = austria_items
    broken = [it.clone() for it in items]
    broken[1].assets["B04"].href = (tmp_path / "gone.tif").as_uri()
    config = CubeConfig(
        bands=("B04",), include_scl=False, on_read_error="count", max_read_attempts=1
    )
    from pipeline._reading import collect_read_failures

    collect_read_failures()
    loaded = load_cube(broken, config).compute(scheduler="synchronous")
    assert np.isnan(loaded["B04"].values[1]).all()
    assert np.isfinite(loaded["B04"].values[0]).mean() > 0.99
    failures = collect_read_failures()
    assert len(failures) >= 1 and all(f.href.endswith("gone.tif") for f in failures)


def test_one_day_with_two_baselines_is_scaled_per_item_then_fused(austria_items):
    """Tiles of one day processed at different baselines: each keeps its own offset."""
    tif, items = austria_items
    old, new = items[0].clone(), items[1].clone()
    new.datetime = old.datetime  # same acquisition day, the second item at baseline 05.10
    new.id = new.id + "_reprocessed"
    cube = load_cube([old, new], CubeConfig(bands=("B04",), include_scl=False, chunk_size=256))
    loaded = cube.compute()
    assert loaded.sizes["time"] == 1
    dn = read_austria_dn(tif)["B04"]
    # Newer-baseline pixels come first; a single shared offset would be 0.1 off for one of them.
    expected = np.where(dn[1] > 0, dn[1] / 10000.0, np.where(dn[0] > 0, dn[0] / 10000.0, np.nan))
    np.testing.assert_allclose(
        loaded["B04"].values[0], expected.astype("float32"), atol=1e-6, equal_nan=True
    )


def test_baseline_from_the_product_uri_when_the_property_is_missing(austria_items):
    """The data path uses the search's careful rule: the _Nxxyy_ of s2:product_uri counts."""
    tif, items = austria_items
    recorded = [it.clone() for it in items]
    baseline = recorded[1].properties.pop("s2:processing_baseline")
    assert baseline == "05.10"
    recorded[1].properties["s2:product_uri"] = (
        "S2B_MSIL2A_20240606T100559_N0510_R022_T33UUP_20240606T123456.SAFE"
    )
    cube = load_cube(recorded, CubeConfig(bands=("B04",), include_scl=False, chunk_size=256))
    expected = np.where(read_austria_dn(tif)["B04"] > 0, read_austria_dn(tif)["B04"] / 1e4, np.nan)
    np.testing.assert_allclose(cube["B04"].values, expected, rtol=0, atol=1e-6, equal_nan=True)


def test_a_sentinel2_item_of_unknown_baseline_is_refused(austria_items):
    """No guessed offset: without a baseline, baseline >= 04.00 data would be 0.1 too bright."""
    _, items = austria_items
    unknown = [it.clone() for it in items]
    unknown[1].properties.pop("s2:processing_baseline")
    unknown[1].properties.pop("s2:product_uri", None)
    with pytest.raises(
        ValueError,
        match=rf"{unknown[1].id} has no s2:processing_baseline.*set s2:processing_baseline",
    ):
        load_cube(unknown, CubeConfig(bands=("B04",), include_scl=False))
