"""Overviews: levels down to one tile, NaN-aware 2x2 reduction checked against numpy, per
region and finishing paths agreeing, CRS and grid of each level, the multiscales record, and
the quicklook reading them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr

from pipeline.archive import ArchiveConfig, write_archive
from pipeline.overviews import (
    MULTISCALES_ATTR,
    build_overviews,
    level_factors,
    open_overview,
    overview_levels,
)


def _archive(tmp_path, ny=600, nx=520, fmt=3, shard=None) -> tuple[xr.Dataset, str]:
    rng = np.random.default_rng(3)
    shape = (2, ny, nx)
    band = rng.uniform(0.02, 0.4, shape).astype("float32")
    band[:, 100:141, 37:90] = np.nan  # a hole with odd edges
    nvo = np.isnan(band).astype("uint8")
    ds = xr.Dataset(
        {
            "B02": (("time", "y", "x"), band * 0.8),
            "B03": (("time", "y", "x"), band * 0.9),
            "B04": (("time", "y", "x"), band),
            "confidence": (("time", "y", "x"), rng.uniform(0, 1, shape).astype("float32")),
            "no_valid_observation": (("time", "y", "x"), nvo),
            "gamma": (("time",), np.array([0.5, 1.0], dtype="float32")),
        },
        coords={
            "time": pd.date_range("2024-05-01", periods=2, freq="10D"),
            "y": 5_300_005.0 - 10 * np.arange(ny),
            "x": 400_005.0 + 10 * np.arange(nx),
        },
    ).rio.write_crs("EPSG:32633")
    store = str(tmp_path / "a.zarr")
    config = ArchiveConfig(zarr_format=fmt, chunk_size=128, shard_size=shard)
    write_archive(ds.chunk({"y": 128, "x": 128}), store, config, progress=False)
    return ds, store


def _numpy_reduce(a: np.ndarray, f: int, how: str) -> np.ndarray:
    """Independent reference: level f is the 2x2 reduction of level f/2 (edges padded with
    NaN), NaN-ignoring mean, or min for the all-of flag."""
    out = a.astype("float64")
    while f > 1:
        t, ny, nx = out.shape
        padded = np.full((t, -(-ny // 2) * 2, -(-nx // 2) * 2), np.nan)
        padded[:, :ny, :nx] = out
        blocks = padded.reshape(t, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
        out = np.nanmean(blocks, axis=(2, 4)) if how == "mean" else np.nanmin(blocks, axis=(2, 4))
        f //= 2
    return out


def test_levels_halve_until_the_area_fits_one_tile():
    assert level_factors((600, 520), 64) == [2, 4, 8, 16]  # 600 -> 300, 150, 75, 38
    assert level_factors((256, 200), 256) == []
    assert level_factors((257, 10), 256) == [2]
    with pytest.raises(ValueError, match="too small"):
        level_factors((100, 100), 4)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_overviews_reduce_every_level_like_numpy_with_grid_and_crs(tmp_path):
    ds, store = _archive(tmp_path)
    config = ArchiveConfig(zarr_format=3, chunk_size=128)
    # region 256 px: levels 2 and 4 are written per region, 8 and 16 by finish_overviews
    levels = build_overviews(store, config, region_size=256, min_size=64)
    assert [lv.factor for lv in levels] == [2, 4, 8, 16]
    assert [lv.factor for lv in overview_levels(store)] == [2, 4, 8, 16]
    base = xr.open_zarr(store, decode_coords="all")
    (entry,) = base.attrs[MULTISCALES_ATTR]
    assert [d["path"] for d in entry["datasets"]] == [".", *(lv.path for lv in levels)]
    for level in levels:
        f = level.factor
        got = xr.open_zarr(store, group=level.path, decode_coords="all")
        assert (got.sizes["y"], got.sizes["x"]) == (-(-600 // f), -(-520 // f)) == level.shape
        np.testing.assert_allclose(
            got["B04"].values, _numpy_reduce(ds["B04"].values, f, "mean"), rtol=2e-5
        )
        nvo = _numpy_reduce(ds["no_valid_observation"].values, f, "min")
        np.testing.assert_array_equal(got["no_valid_observation"].values, nvo.astype("uint8"))
        assert got.rio.crs.to_epsg() == 32633
        t = got.rio.transform()
        assert (t.a, -t.e) == (10.0 * f, 10.0 * f)
        assert (t.c, t.f) == (400_000.0, 5_300_010.0)  # same upper-left corner as the base
        assert "gamma" not in got  # not spatial
    # the hole is NaN where it covers whole 2x2 blocks and flagged there, valid elsewhere
    level2 = xr.open_zarr(store, group="overviews/2")
    assert (
        np.isnan(level2["B04"].values[0, 55, 25])
        and level2["no_valid_observation"].values[0, 55, 25] == 1
    )
    assert level2["no_valid_observation"].values[0, 0, 0] == 0


def test_open_overview_picks_the_finest_level_that_fits_and_quicklook_reads_it(tmp_path):
    from pipeline.quicklook import save_archive_quicklook

    _, store = _archive(tmp_path, ny=300, nx=260)
    build_overviews(store, ArchiveConfig(zarr_format=3, chunk_size=128), min_size=64)
    assert open_overview(store, max_size=1000).sizes["y"] == 300  # full resolution fits
    assert open_overview(store, max_size=160).attrs["overview_factor"] == 2
    assert open_overview(store, max_size=80).attrs["overview_factor"] == 4
    assert open_overview(store, max_size=10).attrs["overview_factor"] == 8  # the coarsest
    png = save_archive_quicklook(store, tmp_path / "q.png", max_size=80)
    assert png.stat().st_size > 1000


def test_an_archive_without_overviews_says_how_to_build_them(tmp_path):
    _, store = _archive(tmp_path, ny=300, nx=260)
    with pytest.raises(ValueError, match="build_overviews"):
        open_overview(store, max_size=100)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_overviews_of_a_sharded_format_3_store_and_a_format_2_store(tmp_path):
    for fmt, shard in ((3, 256), (2, None)):
        ds, store = _archive(tmp_path / f"f{fmt}", fmt=fmt, shard=shard)
        build_overviews(
            store, ArchiveConfig(zarr_format=fmt, chunk_size=128, shard_size=shard), min_size=128
        )
        got = xr.open_zarr(store, group="overviews/4")
        np.testing.assert_allclose(
            got["confidence"].values, _numpy_reduce(ds["confidence"].values, 4, "mean"), rtol=2e-5
        )
