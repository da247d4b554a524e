"""The one run path for an area that fits one tile: one tile on the area's own grid, written and
resumed region by region, its composites on the periods that hold a date, its failure raised.

The area is about 190 x 190 px of synthetic COGs with 64 px chunks (9 regions), run in this process by
dask's synchronous scheduler, so the module stays fast.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from odc.geo.geobox import GeoBox

from flows.run import RunConfig
from flows.tiled import run_area
from pipeline.archive import DONE_ATTR, ArchiveConfig
from pipeline.catalog import SearchParams
from pipeline.compositing import composite, period_labels
from pipeline.cube import CubeConfig
from pipeline.synthetic import make_stack, write_stac_items
from pipeline.tiled_archive import COMPLETE_ATTR, TILE_DONE_VAR
from pipeline.tiling import GridSpec, TilingConfig, dates_axis
from pipeline.validation import ValidationConfig

BANDS = ("B02", "B03", "B04", "B08")
SIZE, CHUNK = 192, 64
ORIGIN = (360000.0, 5350000.0)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """Four cloudy dates (03-11 ... 04-10) over 1.92 x 1.92 km in UTM 33N."""
    out = tmp_path_factory.mktemp("one-tile-catalog")
    stack = make_stack((4, SIZE, SIZE), bands=BANDS, origin=ORIGIN, start="2024-03-11", seed=5)
    write_stac_items(stack, out)
    return out


def _area() -> tuple[float, float, float, float]:
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    x0, y0 = ORIGIN[0] + 50, ORIGIN[1] - SIZE * 10 + 50
    x1, y1 = ORIGIN[0] + SIZE * 10 - 50, ORIGIN[1] - 50
    xs, ys = to_lonlat.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
    return (min(xs), min(ys), max(xs), max(ys))


def _config(catalog: Path, store: Path, **changes) -> RunConfig:
    config = RunConfig(
        search=SearchParams(bbox=_area(), datetime="2024-03-01/2024-05-31", catalog=str(catalog)),
        output=str(store),
        cube=CubeConfig(bands=BANDS, chunk_size=CHUNK),
        archive=ArchiveConfig(chunk_size=CHUNK),
        tiling=TilingConfig(tile_size=256),
        validation=ValidationConfig(enabled=False),
        overview_min_size=32,
        stac=False,
    )
    return dataclasses.replace(config, **changes)


def _run(config: RunConfig, **options):
    with dask.config.set(scheduler="synchronous"):
        return run_area(config, progress=False, in_process=True, **options)


def _regions(shape: tuple[int, int]) -> int:
    return -(-shape[0] // CHUNK) * -(-shape[1] // CHUNK)


def test_a_small_area_is_one_tile_on_its_own_grid_and_resumes_region_by_region(catalog, tmp_path):
    store = tmp_path / "one.zarr"
    config = _config(catalog, store)
    assert not config.use_tiles()
    first = _run(config)
    assert first.tiles is None, "one tile on the area's own grid is summarised by regions"
    ds = xr.open_zarr(store, decode_coords="all").load()
    regions = _regions((ds.sizes["y"], ds.sizes["x"]))
    assert (first.regions_written, first.regions_skipped) == (regions, 0)
    assert regions == 9 and "regions          9 written, 0 skipped" in "\n".join(first.lines())
    assert ds.rio.crs.to_epsg() == 32633 and ds.sizes["time"] == 4
    assert ds[TILE_DONE_VAR].shape == (4, 1, 1) and ds[TILE_DONE_VAR].values.all()
    assert ds.attrs[COMPLETE_ATTR] is True
    assert np.isfinite(ds["B04"].values).mean() > 0.9
    # the run's scene state, per date, as a store written in one piece always held it
    assert np.isfinite(ds["gamma"].values).all() and ds["airlight"].dims == ("time", "band")
    assert list(ds["band"].values) == list(BANDS)
    assert first.no_valid_pixels == int(ds["no_valid_observation"].sum())
    assert [lv for lv in (store / "overviews").iterdir()], "overview levels, block by block"

    # An interrupted run: the tile not recorded, two regions lost (never recorded, data gone).
    group = zarr.open_group(str(store), mode="r+")
    done = sorted(group.attrs[DONE_ATTR])
    assert len(done) == regions and all(key.startswith("t0-4:") for key in done)
    lost = done[:2]
    group.attrs.update({DONE_ATTR: done[2:], COMPLETE_ATTR: False})
    group[TILE_DONE_VAR][:] = 0
    for key in lost:
        y0, x0 = (int(part[1:]) for part in key.split(":")[1].split("_"))
        group["B04"][:, y0 : y0 + CHUNK, x0 : x0 + CHUNK] = np.nan
    resumed = _run(
        dataclasses.replace(config, archive=ArchiveConfig(chunk_size=CHUNK, mode="resume"))
    )
    assert (resumed.regions_written, resumed.regions_skipped) == (2, regions - 2)
    again = xr.open_zarr(store, decode_coords="all").load()
    xr.testing.assert_equal(again["B04"], ds["B04"])
    assert again.attrs[COMPLETE_ATTR] is True and again[TILE_DONE_VAR].values.all()


def test_composites_of_one_tile_are_the_periods_that_hold_a_date(catalog, tmp_path):
    store = tmp_path / "monthly.zarr"
    config = _config(catalog, store, mode="composite", period="MS", overviews=False)
    summary = _run(config)
    ds = xr.open_zarr(store)
    # The interval reaches into May, which holds no date: left out, as composite leaves it out.
    assert [str(t)[:10] for t in ds["time"].values] == ["2024-03-01", "2024-04-01"]
    assert summary.dates == 2 and "gamma" not in ds
    from pipeline.catalog import search

    items = search(config.search)
    labels = period_labels(dates_axis(items), "MS")
    assert list(labels) == list(ds.indexes["time"])


def test_period_labels_are_the_labels_composite_gives():
    times = np.array(["2024-01-03", "2024-01-20", "2024-03-05"], dtype="datetime64[ns]")
    stack = xr.Dataset(
        {
            "B04": (("time", "y", "x"), np.full((3, 2, 2), 0.1, np.float32)),
            "confidence": (("time", "y", "x"), np.ones((3, 2, 2), np.float32)),
        },
        coords={"time": times},
    )
    for period in ("MS", "QS", None):
        expected = composite(stack, period=period).indexes["time"]
        assert list(period_labels(times, period)) == list(expected), period
    with pytest.raises(ValueError, match="no dates"):
        period_labels([], "MS")


def test_an_exact_geobox_is_one_tile_and_a_failed_one_tile_run_raises_its_error(catalog, tmp_path):
    broken = tmp_path / "catalog"
    shutil.copytree(catalog, broken)
    for tif in broken.rglob("*_B04_*.tif"):
        tif.write_bytes(b"not a tiff")
    for item_json in broken.rglob("*.json"):
        item_json.write_text(item_json.read_text().replace(str(catalog), str(broken)))
    box = GeoBox.from_bbox(
        (ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1]), "EPSG:32633", resolution=10
    )
    store = tmp_path / "broken.zarr"
    config = _config(broken, store, tiled=True)  # a geobox wins over the tile lattice
    with pytest.raises(Exception, match="B04"):
        _run(config, geobox=box)
    ds = xr.open_zarr(store)
    assert (ds.sizes["y"], ds.sizes["x"]) == (64, 64) and ds[TILE_DONE_VAR].shape[1:] == (1, 1)
    assert ds.attrs[COMPLETE_ATTR] is False and not ds[TILE_DONE_VAR].values.any()


def test_a_grid_from_a_geobox_is_one_tile_of_whole_chunks():
    box = GeoBox.from_bbox((360000, 5349000, 360970, 5350000), "EPSG:32633", resolution=10)
    grid = GridSpec.from_geobox(box, chunk_size=32)
    assert grid.shape == (100, 97) and grid.tile_size == 128 and (grid.rows, grid.cols) == (1, 1)
    tile = grid.tile(0, 0)
    assert (tile.y, tile.x) == (slice(0, 100), slice(0, 97)) and tile.geobox == box
    assert GridSpec.from_json(grid.to_json()) == grid
    assert grid.padded(tile, 10).y == slice(0, 100)  # clipped to the grid
    south_up = GeoBox(box.shape, box.affine * box.affine.scale(1, -1), box.crs)
    with pytest.raises(ValueError, match="north-up"):
        GridSpec.from_geobox(south_up, chunk_size=32)
