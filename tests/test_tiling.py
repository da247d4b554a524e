"""The output grid of tiled runs: CRS choice, chunk-aligned tiles, tiles in the area, time axes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pystac
import pytest
from pyproj import Transformer

from pipeline.catalog import parse_datetime_range
from pipeline.tiling import (
    EQUAL_AREA_EUROPE,
    EQUAL_AREA_GLOBAL,
    GridSpec,
    ItemIndex,
    TilingConfig,
    area_fits_one_tile,
    area_geometry,
    dates_axis,
    default_grid_crs,
    make_grid,
    period_axis,
    resolve_period,
)


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ((14.5, 47.9, 15.5, 48.3), "EPSG:32633"),  # inside zone 33 (12-18 E), north
        ((-58.0, -35.0, -57.0, -34.0), "EPSG:32721"),  # zone 21, south
        ((11.5, 47.9, 12.5, 48.3), EQUAL_AREA_EUROPE),  # across 12 E (zones 32 and 33)
        ((5.0, 45.0, 25.0, 55.0), EQUAL_AREA_EUROPE),  # Central Europe
        ((-80.0, 30.0, -70.0, 40.0), EQUAL_AREA_GLOBAL),  # US east coast, several zones
        ((30.0, -1.0, 31.0, 1.0), EQUAL_AREA_GLOBAL),  # one zone, across the equator
    ],
)
def test_default_crs_is_the_utm_zone_or_equal_area(bbox, expected):
    assert default_grid_crs(area_geometry(bbox)) == expected


def test_tiles_are_whole_chunks_on_a_lattice_of_tiles():
    area = area_geometry((14.51, 47.91, 14.83, 48.07))
    grid = make_grid(area, TilingConfig(tile_size=1024), resolution=10.0, chunk_size=256)
    step = 1024 * 10.0
    # The origin sits on multiples of the tile size in CRS units: tiles (and chunks) of any
    # two runs over overlapping areas share edges.
    assert grid.x0 % step == 0 and grid.y0 % step == 0
    assert grid.shape == (grid.rows * 1024, grid.cols * 1024)
    west, south, east, north = area.to_crs(grid.crs).boundingbox
    assert grid.x0 <= west and grid.x0 + grid.cols * step >= east
    assert grid.y0 >= north and grid.y0 - grid.rows * step <= south
    tile = grid.tile(1, 2)
    assert (tile.y, tile.x) == (slice(1024, 2048), slice(2048, 3072))
    assert tile.y.start % 256 == 0 and tile.x.start % 256 == 0
    # The tile's GeoBox is exactly its window of the whole grid.
    assert tile.geobox == grid.geobox[1024:2048, 2048:3072]
    assert tile.geobox.affine.c == grid.x0 + 2 * step and tile.geobox.affine.f == grid.y0 - step
    assert GridSpec.from_json(grid.to_json()) == grid


def test_tile_size_must_be_a_multiple_of_the_chunk():
    area = area_geometry((14.5, 47.9, 14.6, 48.0))
    with pytest.raises(ValueError, match="multiple of the archive chunk") as exc:
        make_grid(area, TilingConfig(tile_size=1000), resolution=10.0, chunk_size=256)
    assert "--tile-size 1024" in str(exc.value)


def test_tiles_outside_the_area_are_skipped():
    # An L-shaped area: the bounding box holds 3 x 3 tiles, the L only 5 of them.
    grid = GridSpec("EPSG:32633", 10.0, 100, 400_000.0, 5_400_000.0, 3, 3)
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    step = 1000.0
    corners = [(0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3)]  # (col, row) in tile units
    ring = [to_lonlat.transform(400_000.0 + c * step, 5_400_000.0 - r * step) for c, r in corners]
    shrunk = area_geometry(geojson={"type": "Polygon", "coordinates": [ring + [ring[0]]]}).buffer(
        -1e-4
    )
    keys = {t.key for t in grid.tiles_in(shrunk)}
    assert keys == {"r0c0", "r0c1", "r0c2", "r1c0", "r2c0"}


def test_small_area_fits_one_tile_large_does_not():
    small = area_geometry((14.50, 47.90, 14.52, 47.91))  # ~1.5 x 1.1 km
    large = area_geometry((14.0, 47.5, 15.0, 48.5))  # ~75 x 111 km
    config = TilingConfig(tile_size=2048)
    assert area_fits_one_tile(small, config, 10.0)
    assert not area_fits_one_tile(large, config, 10.0)
    assert not area_fits_one_tile(large, config, 40.0)  # 81.9 km tiles: too short
    assert area_fits_one_tile(large, config, 60.0)  # 122.9 km tiles


def test_area_across_utm_zones_gets_one_equal_area_grid_without_gaps():
    area = area_geometry((11.9, 48.0, 12.1, 48.1))  # across the 12 E zone boundary
    grid = make_grid(area, TilingConfig(tile_size=256), resolution=10.0, chunk_size=256)
    assert grid.crs == EQUAL_AREA_EUROPE
    tiles = grid.tiles_in(area)
    # Tiles partition the grid: every pixel in exactly one tile.
    cover = np.zeros(grid.shape, dtype=np.int32)
    for tile in grid.tiles():
        cover[tile.y, tile.x] += 1
    assert (cover == 1).all()
    # And the tiles in the area cover it entirely.
    union = tiles[0].geobox.extent
    for tile in tiles[1:]:
        union = union | tile.geobox.extent
    assert union.contains(area.to_crs(grid.crs))


def _item(item_id: str, when: str, bbox: tuple[float, float, float, float]) -> pystac.Item:
    w, s, e, n = bbox
    geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    item = pystac.Item(item_id, geometry, list(bbox), dt.datetime.fromisoformat(when), {})
    item.add_asset("B04", pystac.Asset(f"file:///data/{item_id}/B04.tif?token=x"))
    return item


def test_item_index_finds_the_items_of_a_tile():
    grid = make_grid(
        area_geometry((14.5, 47.9, 14.7, 48.0)),
        TilingConfig(tile_size=512),
        resolution=10.0,
        chunk_size=256,
    )
    west_tile = grid.tile(0, 0)
    w, s, e, n = west_tile.footprint_lonlat().boundingbox
    inside = _item("a", "2024-05-01T10:00:00+00:00", (w + 0.001, s + 0.001, w + 0.01, s + 0.01))
    elsewhere = _item("b", "2024-05-02T10:00:00+00:00", (e + 0.5, s, e + 0.6, n))
    across = _item("c", "2024-04-30T10:00:00+00:00", (w - 0.1, s - 0.1, e + 0.1, n + 0.1))
    index = ItemIndex([across, inside, elsewhere])
    assert [it.id for it in index.intersecting(west_tile)] == ["c", "a"]


def test_dates_axis_is_the_union_of_solar_days():
    # 23:30 UTC at 100 E is the next solar day; two items of one day give one step.
    items = [
        _item("a", "2024-05-01T10:00:00+00:00", (14.0, 47.0, 14.1, 47.1)),
        _item("b", "2024-05-01T10:00:05+00:00", (15.0, 47.0, 15.1, 47.1)),
        _item("c", "2024-05-01T23:30:00+00:00", (100.0, 10.0, 100.1, 10.1)),
    ]
    assert list(dates_axis(items)) == [pd.Timestamp("2024-05-01"), pd.Timestamp("2024-05-02")]


def test_period_axis_covers_the_interval_with_period_starts():
    labels, edges = period_axis(parse_datetime_range("2024-02-10/2024-05-03"), "monthly")
    assert [str(t.date()) for t in labels] == [
        "2024-02-01",
        "2024-03-01",
        "2024-04-01",
        "2024-05-01",
    ]
    assert str(edges[-1].date()) == "2024-06-01"
    labels, edges = period_axis(parse_datetime_range("2024-01-01/2024-12-31"), "quarterly")
    assert [t.month for t in labels] == [1, 4, 7, 10]
    labels, edges = period_axis(parse_datetime_range("2024-03-01/2024-03-31"), None)
    assert list(labels) == [pd.Timestamp("2024-03-01")] and edges[-1] > pd.Timestamp(
        "2024-03-31T23:59"
    )
    labels, _ = period_axis(parse_datetime_range("2024-03-05/2024-04-01"), "14D")
    assert [str(t.date()) for t in labels] == ["2024-03-05", "2024-03-19"]


def test_period_names_and_bad_periods():
    assert resolve_period("Monthly") == "MS"
    assert resolve_period("quarterly") == "QS"
    assert resolve_period("14D") == "14D"
    assert resolve_period(None) is None
    with pytest.raises(ValueError, match="start-anchored"):
        resolve_period("ME")
    with pytest.raises(ValueError, match="monthly/quarterly/yearly"):
        resolve_period("fortnightly-ish")
    with pytest.raises(ValueError, match="closed datetime interval"):
        period_axis(parse_datetime_range("2024-03-01/.."), "monthly")
