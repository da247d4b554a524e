"""GDAL (what QGIS and rasterio use) opens the Zarr format 2 archive with its CRS and transform;
the format 3 archive needs GDAL >= 3.13 (README, "Which format for which client")."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.archive import ArchiveConfig, write_archive

from .test_archive import _dataset


def _gdal_version() -> tuple[int, ...]:
    return tuple(int(p) for p in rasterio.__gdal_version__.split(".")[:2])


def test_gdal_opens_the_format_2_archive_with_crs_and_transform(tmp_path):
    ds = _dataset(ny=50, nx=70, nt=3)
    store = tmp_path / "v2.zarr"
    write_archive(ds, store, ArchiveConfig(zarr_format=2, chunk_size=32), progress=False)

    # The grid from the coordinates (pixel centres), independent of what the archive writes.
    res = float(ds.x[1] - ds.x[0])
    expected = from_origin(float(ds.x[0]) - res / 2, float(ds.y[0]) + res / 2, res, res)
    with rasterio.open(f'ZARR:"{store}":/B04') as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform.almost_equals(expected)
        assert (src.count, src.height, src.width) == (3, 50, 70)  # one band per date
        np.testing.assert_array_equal(src.read(2), ds["B04"].values[1])
        assert np.isnan(src.read(1)[0, 0])  # NaN = no valid observation survives
    with rasterio.open(f'ZARR:"{store}":/no_valid_observation') as src:
        assert src.crs.to_epsg() == 32633 and src.dtypes[0] == "uint8"


@pytest.mark.skipif(_gdal_version() >= (3, 13), reason="GDAL >= 3.13 reads Zarr format 3")
def test_gdal_before_3_13_cannot_open_the_format_3_archive(tmp_path):
    """Why the README sends GDAL and QGIS users to --zarr-format 2."""
    store = tmp_path / "v3.zarr"
    write_archive(_dataset(), store, ArchiveConfig(zarr_format=3, chunk_size=32), progress=False)
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(f'ZARR:"{store}":/B04')
