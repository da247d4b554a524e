"""One output grid for areas of any size: tiles aligned with archive chunks, and time axes.

A tiled run (``flows.tiled``) writes a whole country or continent into one Zarr store. This
module holds the geometry and bookkeeping it needs, none of it tied to Dask or Zarr:

* ``make_grid``: the output grid (CRS, resolution, origin, size) of an area, cut into square
  tiles of ``tile_size`` pixels. The origin snaps to a lattice of whole tiles in CRS
  coordinates, so tile edges fall on archive chunk edges (``tile_size`` is a multiple of the
  chunk) and two runs over overlapping areas share tile edges.
* ``default_grid_crs``: the area's UTM zone when the area lies in one zone; otherwise an
  equal-area CRS (LAEA Europe, EPSG:3035, inside its area of use; else the global EASE-Grid 2.0,
  EPSG:6933). Items from several UTM zones are all reprojected onto that one grid by odc-stac,
  so an area across a zone boundary has neither gaps nor double counting.
* ``ItemIndex``: which items touch a tile (a spatial index over item footprints).
* Time axes shared by every tile: ``dates_axis`` (the union of the solar days of all items;
  a tile without an acquisition that day gets NaN and ``no_valid_observation``) and
  ``period_axis`` (one step per period of the search interval, for composites).

The CRS is chosen from the area, not from the items, so the grid is known before any search
and stays the same when a scheduled run finds items from a neighbouring zone.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pystac

__all__ = [
    "EQUAL_AREA_EUROPE",
    "EQUAL_AREA_GLOBAL",
    "PERIOD_ALIASES",
    "GridSpec",
    "ItemIndex",
    "Tile",
    "TilingConfig",
    "area_geometry",
    "dates_axis",
    "default_grid_crs",
    "make_grid",
    "period_axis",
    "resolve_period",
]

#: Lambert azimuthal equal-area for Europe; used when the area lies inside its area of use.
EQUAL_AREA_EUROPE = "EPSG:3035"
#: WGS 84 / NSIDC EASE-Grid 2.0 Global (cylindrical equal-area) for everywhere else.
EQUAL_AREA_GLOBAL = "EPSG:6933"
#: Area of use of EPSG:3035 (lon/lat), from the EPSG registry.
_EUROPE_BOUNDS = (-35.58, 24.6, 44.83, 84.73)

#: ``--period`` names and the pandas offset aliases they stand for.
PERIOD_ALIASES = {"monthly": "MS", "quarterly": "QS", "yearly": "YS", "annual": "YS"}


@dataclass(frozen=True)
class TilingConfig:
    """How a large area is cut into tiles and processed.

    tile_size: tile side in pixels (default 2048 = 20.48 km at 10 m); a multiple of the
        archive chunk size so every tile is a whole number of chunks.
    crs: output grid CRS ("EPSG:3035"); None chooses with ``default_grid_crs``.
    retries: how often a failed tile is retried before it is reported as failed.
    tiles_in_flight: tiles processed at once (None: one per worker process, at least 2);
        peak memory per worker depends on this and the chunk size, never on the area.
    seamless: read each tile with the restore halo and restore every tile with the run
        area's scene state, so the store equals the area restored as one grid (default);
        False: no halo and scene parameters per tile (cheaper; values step at tile edges,
        and a tile fails only on its own pixels' reads, not its neighbours').
    """

    tile_size: int = 2048
    crs: str | None = None
    retries: int = 2
    tiles_in_flight: int | None = None
    seamless: bool = True

    def __post_init__(self) -> None:
        if self.tile_size < 64:
            raise ValueError(f"tile_size {self.tile_size} is too small: use 1024..4096 pixels")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.tiles_in_flight is not None and self.tiles_in_flight < 1:
            raise ValueError(f"tiles_in_flight must be >= 1, got {self.tiles_in_flight}")


# --------------------------------------------------------------------------- area and CRS


def area_geometry(bbox: Sequence[float] | None = None, geojson: dict | None = None) -> Any:
    """The area of interest as an odc-geo Geometry in EPSG:4326 (from a bbox or GeoJSON)."""
    from odc.geo.geom import Geometry, box

    if (bbox is None) == (geojson is None):
        raise ValueError("give exactly one of bbox or a GeoJSON geometry as the area")
    if bbox is not None:
        west, south, east, north = bbox
        return box(west, south, east, north, "EPSG:4326")
    assert geojson is not None
    if geojson.get("type") == "Feature":
        geojson = geojson["geometry"]
    return Geometry(geojson, "EPSG:4326")


def _utm_zone(lon: float) -> int:
    return min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))


def default_grid_crs(area: Any) -> str:
    """The area's UTM zone when it lies in one zone and one hemisphere, else equal-area.

    Equal-area: EPSG:3035 (LAEA Europe) inside its area of use, else EPSG:6933.
    """
    west, south, east, north = area.to_crs("EPSG:4326").boundingbox
    if _utm_zone(west) == _utm_zone(east) and (south >= 0) == (north >= 0):
        zone = _utm_zone(west)
        return f"EPSG:{(32600 if south >= 0 else 32700) + zone}"
    ew, es, ee, en = _EUROPE_BOUNDS
    if west >= ew and east <= ee and south >= es and north <= en:
        return EQUAL_AREA_EUROPE
    return EQUAL_AREA_GLOBAL


# --------------------------------------------------------------------------- grid and tiles


@dataclass(frozen=True)
class Tile:
    """One tile: its place in the tile lattice and pixel window in the grid, and its GeoBox."""

    row: int
    col: int
    y: slice
    x: slice
    geobox: Any

    @property
    def key(self) -> str:
        return f"r{self.row}c{self.col}"

    def footprint_lonlat(self) -> Any:
        """The tile's outline in EPSG:4326 (densified, so curved edges stay close)."""
        return self.geobox.extent.to_crs("EPSG:4326")


@dataclass(frozen=True)
class GridSpec:
    """The output grid: ``rows x cols`` tiles of ``tile_size`` px, upper-left corner (x0, y0).

    ``height``/``width`` (px) cut the grid short of whole tiles: the last row and column of
    tiles are then partial. A lattice grid (``make_grid``) leaves them None; a grid that is
    one given GeoBox (``from_geobox``: the area's own grid, one tile) sets them.
    """

    crs: str
    resolution: float
    tile_size: int
    x0: float
    y0: float
    rows: int
    cols: int
    height: int | None = None
    width: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (
            self.height if self.height is not None else self.rows * self.tile_size,
            self.width if self.width is not None else self.cols * self.tile_size,
        )

    @property
    def geobox(self) -> Any:
        from affine import Affine
        from odc.geo.geobox import GeoBox

        r = self.resolution
        return GeoBox(self.shape, Affine(r, 0.0, self.x0, 0.0, -r, self.y0), self.crs)

    @classmethod
    def from_geobox(cls, geobox: Any, *, chunk_size: int) -> GridSpec:
        """A grid of one tile that is exactly ``geobox`` (north up, square pixels), its tile
        side the larger dimension rounded up to whole ``chunk_size`` chunks."""
        a = geobox.affine
        if a.b != 0 or a.d != 0 or a.e >= 0 or abs(a.a) != abs(a.e) or a.a <= 0:
            raise ValueError(
                f"the output grid must be north-up with square pixels, not {tuple(a)[:6]}: "
                "pass a GeoBox like GeoBox.from_bbox(bbox, crs, resolution=10)"
            )
        ny, nx = (int(n) for n in geobox.shape)
        side = -(-max(ny, nx) // chunk_size) * chunk_size
        return cls(str(geobox.crs), float(a.a), side, float(a.c), float(a.f), 1, 1, ny, nx)

    def tile(self, row: int, col: int) -> Tile:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"tile ({row}, {col}) outside the {self.rows} x {self.cols} grid")
        n = self.tile_size
        ny, nx = self.shape
        y = slice(row * n, min((row + 1) * n, ny))
        x = slice(col * n, min((col + 1) * n, nx))
        return Tile(row, col, y, x, self.geobox[y, x])

    def padded(self, tile: Tile, halo: int) -> Tile:
        """``tile`` grown by ``halo`` px on every side, clipped to the grid (same row, col and
        key): what a tile reads so that every window around its own pixels is whole, as it
        is when the grid is restored in one piece. Clipped, because the grid's edge is an
        edge for the one-piece restoration too."""
        if halo < 0:
            raise ValueError(f"halo must be >= 0 px, got {halo}")
        ny, nx = self.shape
        y = slice(max(0, tile.y.start - halo), min(ny, tile.y.stop + halo))
        x = slice(max(0, tile.x.start - halo), min(nx, tile.x.stop + halo))
        return Tile(tile.row, tile.col, y, x, self.geobox[y, x])

    def tiles(self) -> Iterator[Tile]:
        for row in range(self.rows):
            for col in range(self.cols):
                yield self.tile(row, col)

    def tiles_in(self, area: Any) -> list[Tile]:
        """Tiles whose extent intersects ``area`` (an odc-geo Geometry), row-major.

        Tiles inside the grid's bounding box but outside the area (the sea around a coast,
        the corners of a country) are never processed.
        """
        import shapely

        shape = area.to_crs(self.crs).geom
        shapely.prepare(shape)
        return [t for t in self.tiles() if shape.intersects(t.geobox.extent.geom)]

    def to_json(self) -> str:
        """The grid as JSON (fields left at None are left out: a lattice grid's JSON is the
        same as before ``height``/``width`` existed, so its stores still resume)."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GridSpec:
        return cls(**json.loads(text))


def make_grid(area: Any, config: TilingConfig, *, resolution: float, chunk_size: int) -> GridSpec:
    """The tile grid covering ``area`` (odc-geo Geometry) at ``resolution`` (CRS units).

    Raises ValueError when the tile size is not a whole number of archive chunks (region
    writes of two tiles would then share a chunk and race).
    """
    if config.tile_size % chunk_size:
        raise ValueError(
            f"tile size {config.tile_size} px is not a multiple of the archive chunk size "
            f"{chunk_size} px: tiles must be whole chunks so no two tiles write one chunk; "
            f"use e.g. --tile-size {max(1, round(config.tile_size / chunk_size)) * chunk_size}"
        )
    crs = config.crs or default_grid_crs(area)
    minx, miny, maxx, maxy = area.to_crs(crs).boundingbox
    if not all(np.isfinite([minx, miny, maxx, maxy])):
        raise ValueError(
            f"the area cannot be projected to {crs} (it lies outside that CRS's area of use): "
            "choose a grid CRS that covers it (--grid-crs), e.g. EPSG:6933"
        )
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    step = config.tile_size * resolution
    x0 = math.floor(minx / step) * step
    y0 = math.ceil(maxy / step) * step
    cols = max(1, math.ceil((maxx - x0) / step))
    rows = max(1, math.ceil((y0 - miny) / step))
    return GridSpec(crs, float(resolution), config.tile_size, x0, y0, rows, cols)


def area_fits_one_tile(area: Any, config: TilingConfig, resolution: float) -> bool:
    """Whether the area's projected extent is at most one tile wide and high."""
    crs = config.crs or default_grid_crs(area)
    minx, miny, maxx, maxy = area.to_crs(crs).boundingbox
    limit = config.tile_size * resolution
    return (maxx - minx) <= limit and (maxy - miny) <= limit


# --------------------------------------------------------------------------- items per tile


def _footprint(item: pystac.Item) -> Any:
    import shapely.geometry

    if item.geometry is not None:
        return shapely.geometry.shape(item.geometry)
    if item.bbox is not None:
        return shapely.geometry.box(*item.bbox[:2], *item.bbox[-2:])
    raise ValueError(f"item {item.id} has neither geometry nor bbox: it cannot be placed")


class ItemIndex:
    """A spatial index over item footprints (EPSG:4326): which items touch a tile."""

    def __init__(self, items: Iterable[pystac.Item]) -> None:
        import shapely

        self.items = list(items)
        self._tree = shapely.STRtree([_footprint(it) for it in self.items])

    def intersecting(self, tile: Tile) -> list[pystac.Item]:
        """Items whose footprint intersects the tile, in the original (time) order."""
        hits = self._tree.query(tile.footprint_lonlat().geom, predicate="intersects")
        return [self.items[i] for i in sorted(int(h) for h in hits)]


def item_hrefs(items: Iterable[pystac.Item]) -> set[str]:
    """Asset hrefs without query strings (as read-failure records name them)."""
    return {asset.href.split("?", 1)[0] for it in items for asset in it.assets.values()}


# --------------------------------------------------------------------------- time axes


def solar_day(item: pystac.Item) -> np.datetime64:
    """The item's local solar day (midnight, datetime64[ns]): the cube groups by it."""
    from .cube import _solar_date

    return np.datetime64(_solar_date(item), "ns")


def dates_axis(items: Iterable[pystac.Item]) -> pd.DatetimeIndex:
    """One time step per solar day of any item: the time axis of a tiled ``dates`` run."""
    return pd.DatetimeIndex(sorted({solar_day(it) for it in items}), name="time")


def resolve_period(period: str | None) -> str | None:
    """A ``--period`` value as a pandas offset alias ("monthly" -> "MS"); checks it."""
    if period is None:
        return None
    alias = PERIOD_ALIASES.get(period.strip().lower(), period.strip())
    try:
        offset = pd.tseries.frequencies.to_offset(alias)
    except ValueError as exc:
        raise ValueError(
            f"period {period!r} is neither monthly/quarterly/yearly nor a pandas offset alias; "
            "use e.g. monthly, quarterly, 'MS', 'QS', '14D'"
        ) from exc
    probe = pd.Series([0, 0], index=pd.DatetimeIndex(["2024-05-17", "2024-05-18"]))
    label = probe.resample(offset).size().index[0]
    if label > probe.index[0]:
        raise ValueError(
            f"period {period!r} labels periods by their end; use a start-anchored alias "
            "(MS, QS, YS, or a number of days such as 14D) so a label is its period's start"
        )
    return alias


def period_axis(interval: tuple[dt.datetime | None, dt.datetime | None], period: str | None):
    """(labels, edges) of the composite periods overlapping a search interval.

    ``period`` None: one period, the whole interval, labelled by its start. Otherwise every
    period of the (resolved) alias that overlaps the interval, labelled by its start; edges
    has one more entry than labels (the end of the last period). Fixed-length aliases
    ("14D") are anchored at the interval start.
    """
    start, end = interval
    if start is None or end is None:
        raise ValueError(
            "a tiled composite needs a closed datetime interval (START/END), not an open end"
        )
    t0 = pd.Timestamp(start).tz_localize(None) if start.tzinfo else pd.Timestamp(start)
    t1 = pd.Timestamp(end).tz_localize(None) if end.tzinfo else pd.Timestamp(end)
    if period is None:
        labels = pd.DatetimeIndex([t0.normalize()], name="time")
        return labels, pd.DatetimeIndex([t0.normalize(), t1 + pd.Timedelta(1, "ns")])
    alias = resolve_period(period)
    probe = pd.Series([0, 0], index=pd.DatetimeIndex([t0, t1]))
    labels = pd.DatetimeIndex(probe.resample(alias, origin="start_day").size().index, name="time")
    offset = pd.tseries.frequencies.to_offset(alias)
    edges = pd.DatetimeIndex([*labels, labels[-1] + offset])
    return labels, edges
