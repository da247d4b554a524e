"""``SearchParams``: what to search for and where, and the checks that reject bad input early."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ._datetime import parse_datetime_range
from ._errors import InvalidSearch

#: ``datetime`` is also a SearchParams field; annotations inside the class use this name.
_Instant = datetime

PLANETARY_COMPUTER_STAC = "https://planetarycomputer.microsoft.com/api/stac/v1"
DEFAULT_COLLECTION = "sentinel-2-l2a"
#: Planetary Computer caps a page at 1000 items.
MAX_PAGE_SIZE = 1000

_TILE = re.compile(r"^\d{2}[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V]$")
_GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


@dataclass(frozen=True)
class SearchParams:
    """What to search for and where. ``validate()`` checks it; ``search()`` calls that.

    Attributes:
        bbox: (west, south, east, north) in degrees, EPSG:4326. Exactly one of bbox/intersects.
        intersects: a GeoJSON geometry in EPSG:4326 (see ``read_geometry`` for files).
        datetime: an interval "start/end" ("2024-04-01/2024-04-30", open ends ".."), or one
            date, month or year ("2024-04-19", "2024-04"); date-only ends cover the whole day.
        collection: the STAC collection id.
        max_cloud_cover: keep items with ``eo:cloud_cover <= max_cloud_cover`` (0..100).
        mgrs_tile: one MGRS tile ("33UUP"; a leading "T" is accepted).
        catalog: a STAC API root URL, or a local path (directory of item JSON, an
            ItemCollection file, or a static catalog.json).
        max_items: stop after this many items (before deduplication); None for all.
        page_size: items per page requested from the API (``limit``), 1..1000.
        sign: sign Planetary Computer asset hrefs (SAS tokens last about 45 minutes).
        max_retries: retries on 429/502/503/504 and read errors (connection errors: at most 2).
        backoff_factor: exponential backoff base in seconds (0, 2b, 4b, ... between tries).
        timeout_s: per-request read timeout in seconds (connect timeout: 10 s or less).
    """

    bbox: tuple[float, float, float, float] | None = None
    intersects: dict[str, Any] | None = field(default=None, hash=False)
    datetime: str | None = None
    collection: str = DEFAULT_COLLECTION
    max_cloud_cover: float | None = None
    mgrs_tile: str | None = None
    catalog: str = PLANETARY_COMPUTER_STAC
    max_items: int | None = None
    page_size: int = 100
    sign: bool = True
    max_retries: int = 5
    backoff_factor: float = 1.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.bbox is not None and not isinstance(self.bbox, tuple):
            object.__setattr__(self, "bbox", tuple(self.bbox))
        if isinstance(self.catalog, Path):
            object.__setattr__(self, "catalog", str(self.catalog))

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> SearchParams:
        """Raise InvalidSearch naming the problem and the fix; return self when valid."""
        if (self.bbox is None) == (self.intersects is None):
            which = "both" if self.bbox is not None else "neither"
            raise InvalidSearch(
                f"give exactly one area of interest, got {which} of bbox and intersects: "
                "pass --bbox WEST SOUTH EAST NORTH or --intersects area.geojson"
            )
        if self.bbox is not None:
            _check_bbox(self.bbox)
        if self.intersects is not None:
            _check_geometry(self.intersects, "intersects")
        if not self.datetime:
            raise InvalidSearch(
                "datetime is required: pass a range such as '2024-04-01/2024-04-30' "
                "(open ends: '2024-04-01/..')"
            )
        parse_datetime_range(self.datetime)
        if not self.collection or not isinstance(self.collection, str):
            raise InvalidSearch(
                f"collection must be a collection id such as {DEFAULT_COLLECTION!r}"
            )
        if self.max_cloud_cover is not None:
            try:
                cc = float(self.max_cloud_cover)
            except (TypeError, ValueError):
                cc = float("nan")
            if not 0.0 <= cc <= 100.0:
                raise InvalidSearch(
                    f"max_cloud_cover={self.max_cloud_cover!r} is outside 0..100: it is a "
                    "percentage of the scene (e.g. 20 for at most 20 % cloud)"
                )
        if self.mgrs_tile is not None:
            _normalise_tile(self.mgrs_tile)
        if self.max_items is not None and (
            not isinstance(self.max_items, int) or self.max_items < 1
        ):
            raise InvalidSearch(
                f"max_items={self.max_items!r} must be a positive integer or None (no cap)"
            )
        if not isinstance(self.page_size, int) or not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise InvalidSearch(
                f"page_size={self.page_size!r} must be an integer in 1..{MAX_PAGE_SIZE} "
                "(Planetary Computer caps pages at 1000)"
            )
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise InvalidSearch(f"max_retries={self.max_retries!r} must be an integer >= 0")
        if self.backoff_factor < 0 or self.timeout_s <= 0:
            raise InvalidSearch("backoff_factor must be >= 0 and timeout_s > 0")
        if not self.catalog:
            raise InvalidSearch(
                f"catalog is empty: pass a STAC API URL such as {PLANETARY_COMPUTER_STAC}"
            )
        return self

    # -- derived -----------------------------------------------------------------------------

    @property
    def tile(self) -> str | None:
        """The MGRS tile, normalised ("T33UUP" -> "33UUP")."""
        return None if self.mgrs_tile is None else _normalise_tile(self.mgrs_tile)

    @property
    def interval(self) -> tuple[_Instant | None, _Instant | None]:
        """The datetime range as UTC datetimes (None for an open end), ends inclusive."""
        if not self.datetime:
            raise InvalidSearch("datetime is required, e.g. '2024-04-01/2024-04-30'")
        return parse_datetime_range(self.datetime)

    def query(self) -> dict[str, Any]:
        """The STAC API ``query`` extension object for the property filters."""
        query: dict[str, Any] = {}
        if self.max_cloud_cover is not None:
            query["eo:cloud_cover"] = {"lte": float(self.max_cloud_cover)}
        if self.tile is not None:
            query["s2:mgrs_tile"] = {"eq": self.tile}
        return query

    def describe(self) -> str:
        """One line naming what is searched, for messages and logs."""
        parts = [f"collection {self.collection!r} in {self.catalog}"]
        if self.bbox is not None:
            parts.append("bbox (" + ", ".join(f"{v:g}" for v in self.bbox) + ")")
        if self.intersects is not None:
            parts.append(f"intersects a {self.intersects.get('type', '?')}")
        parts.append(f"datetime {self.datetime}")
        if self.max_cloud_cover is not None:
            parts.append(f"eo:cloud_cover <= {self.max_cloud_cover:g} %")
        if self.mgrs_tile is not None:
            parts.append(f"tile {self.tile}")
        return ", ".join(parts)


def _check_bbox(bbox: tuple[float, ...]) -> None:
    if len(bbox) != 4:
        raise InvalidSearch(
            f"bbox must have 4 numbers (west, south, east, north) in degrees, got {len(bbox)}: {bbox!r}"
        )
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError) as exc:
        raise InvalidSearch(f"bbox values must be numbers, got {bbox!r}") from exc
    for name, lon in (("west", west), ("east", east)):
        if not -180.0 <= lon <= 180.0:
            raise InvalidSearch(
                f"bbox {name}={lon:g} is outside -180..180: the bbox is in degrees "
                "(EPSG:4326, lon/lat order), not in projected metres"
            )
    for name, lat in (("south", south), ("north", north)):
        if not -90.0 <= lat <= 90.0:
            raise InvalidSearch(
                f"bbox {name}={lat:g} is outside -90..90: the order is (west, south, east, north), "
                "longitude first"
            )
    if south > north:
        raise InvalidSearch(
            f"bbox south={south:g} > north={north:g}: swap them (order: west, south, east, north)"
        )
    if west > east:
        raise InvalidSearch(
            f"bbox west={west:g} > east={east:g}: swap them (order: west, south, east, north). "
            "If the area really crosses the antimeridian, pass --intersects with a MultiPolygon "
            "split at +-180 instead"
        )


def _check_geometry(geometry: Any, what: str) -> None:
    import shapely.geometry

    if not isinstance(geometry, dict) or geometry.get("type") not in _GEOMETRY_TYPES:
        kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
        raise InvalidSearch(
            f"{what} must be a GeoJSON geometry (Polygon, MultiPolygon, ...), got {kind!r}: "
            "use read_geometry() to take the geometry out of a Feature or FeatureCollection"
        )
    try:
        geom = shapely.geometry.shape(geometry)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise InvalidSearch(f"{what} is not a valid GeoJSON {geometry['type']}: {exc}") from exc
    if geom.is_empty:
        raise InvalidSearch(f"{what} is an empty geometry")
    west, south, east, north = geom.bounds
    if west < -180 or east > 180 or south < -90 or north > 90:
        raise InvalidSearch(
            f"{what} bounds ({west:g}, {south:g}, {east:g}, {north:g}) are not lon/lat degrees: "
            "GeoJSON must be in EPSG:4326; reproject it (e.g. ogr2ogr -t_srs EPSG:4326)"
        )


def _normalise_tile(tile: str) -> str:
    text = str(tile).strip().upper()
    if text.startswith("T") and len(text) == 6:
        text = text[1:]
    if not _TILE.match(text):
        raise InvalidSearch(
            f"mgrs_tile={tile!r} is not an MGRS tile: expected 2 digits, a latitude band and a "
            "100 km square, e.g. '33UUP' (as in item ids ..._T33UUP_...)"
        )
    return text
