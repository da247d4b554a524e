"""Find Sentinel-2 L2A items: a STAC API (Planetary Computer by default) or a local catalog.

``search(SearchParams(...))`` returns clean items: one per acquisition (the latest processing
baseline wins), sorted by time. The same filters run server side (STAC API ``query`` extension)
or locally (a directory of item JSON, an ItemCollection file or a static catalog), so the offline
demo and the production search agree.

Decisions worth knowing:

- ``max_cloud_cover`` is inclusive (``eo:cloud_cover <= max``, the ``lte`` operator): a maximum of
  0 asks for cloud-free scenes instead of returning nothing.
- Date-only ends are whole days: ``"2024-04-01/2024-04-30"`` includes the 30th until 23:59:59.999999Z.
- A bbox with west > east is rejected rather than read as crossing the antimeridian: a swapped
  pair would otherwise silently search 359 degrees of longitude. Areas across the antimeridian go
  in as ``intersects`` with a MultiPolygon split at +-180.
- ``max_items`` caps the items fetched before deduplication.
- The BOA offset comes from ``s2:processing_baseline`` (or the ``_Nxxyy_`` of ``s2:product_uri``),
  never from the date. A Sentinel-2 item without either is an error naming the item; items of
  other collections get offset 0.
- Assets are signed (Planetary Computer SAS tokens, about 45 minutes) at search time when
  ``sign=True``; long jobs should pass ``sign=False`` and sign at read time on the workers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pystac

from ._bands import QUANTIFICATION, boa_offset_dn, parse_baseline

#: ``datetime`` is also a SearchParams field; annotations inside the class use this name.
_Instant = datetime

__all__ = [
    "DEFAULT_COLLECTION",
    "PLANETARY_COMPUTER_STAC",
    "RETRY_STATUS",
    "CatalogUnreachable",
    "InvalidSearch",
    "ItemMetadataError",
    "NoItemsFound",
    "SearchError",
    "SearchParams",
    "acquisition_key",
    "deduplicate",
    "is_local_catalog",
    "is_planetary_computer",
    "item_epsg",
    "item_mgrs_tile",
    "item_modifier",
    "items_table",
    "load_local_items",
    "parse_datetime_range",
    "read_geometry",
    "reflectance_offset",
    "search",
]

log = logging.getLogger(__name__)

PLANETARY_COMPUTER_STAC = "https://planetarycomputer.microsoft.com/api/stac/v1"
DEFAULT_COLLECTION = "sentinel-2-l2a"
#: HTTP statuses retried with exponential backoff (rate limit, gateway errors, timeouts).
RETRY_STATUS = (429, 502, 503, 504)
#: Planetary Computer caps a page at 1000 items.
MAX_PAGE_SIZE = 1000

_PC_HOST = "planetarycomputer.microsoft.com"
_TILE_IN_ID = re.compile(r"_T(\d{2}[A-Z]{3})(?:_|$)")
_TILE = re.compile(r"^\d{2}[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V]$")
_PROCESSING_TIME = re.compile(r"^\d{8}T\d{6}$")
_BASELINE_IN_URI = re.compile(r"_N(\d{2})(\d{2})_")
_EPSG_CODE = re.compile(r"^EPSG:(\d+)$", re.IGNORECASE)
_GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


class SearchError(Exception):
    """Base class of the search errors; messages say what went wrong and how to fix it."""


class InvalidSearch(SearchError, ValueError):
    """The search parameters are inconsistent (bbox, dates, cloud cover, ...)."""


class NoItemsFound(SearchError):
    """The catalog answered, but nothing matched."""


class CatalogUnreachable(SearchError):
    """The STAC API (or local catalog path) cannot be reached or keeps failing."""


class ItemMetadataError(SearchError, ValueError):
    """An item lacks metadata the pipeline needs (CRS, processing baseline)."""


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# Datetime ranges
# ------------------------------------------------------------------------------------------------

_DATE_PART = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _parse_instant(text: str, *, end: bool) -> datetime:
    """A year, month, day or RFC 3339 datetime; date-only ends round to the end of the period."""
    match = _DATE_PART.match(text)
    if match:
        year, month, day = int(match[1]), int(match[2] or 1), int(match[3] or 1)
        start = datetime(year, month, day, tzinfo=timezone.utc)
        if not end:
            return start
        if match[3]:
            nxt = start + timedelta(days=1)
        elif match[2]:
            nxt = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
        else:
            nxt = datetime(year + 1, 1, 1, tzinfo=timezone.utc)
        return nxt - timedelta(microseconds=1)
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_datetime_range(text: str) -> tuple[datetime | None, datetime | None]:
    """Parse "start/end" (or one date/month/year) into inclusive UTC bounds; None = open."""
    parts = [p.strip() for p in str(text).split("/")]
    if len(parts) > 2:
        raise InvalidSearch(f"datetime {text!r} has more than one '/': use 'start/end'")
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    bounds: list[datetime | None] = []
    for i, part in enumerate(parts):
        if part in ("", ".."):
            bounds.append(None)
            continue
        try:
            bounds.append(_parse_instant(part, end=i == 1))
        except ValueError as exc:
            raise InvalidSearch(
                f"cannot read {part!r} in datetime {text!r}: use dates like 2024-04-01 or "
                "2024-04-01T10:00:00Z, and '..' for an open end"
            ) from exc
    start, end = bounds
    if start is None and end is None:
        raise InvalidSearch(
            f"datetime {text!r} is open at both ends: give at least a start or an end"
        )
    if start is not None and end is not None and start > end:
        raise InvalidSearch(
            f"datetime {text!r} ends before it starts ({start:%Y-%m-%d %H:%M:%S} > "
            f"{end:%Y-%m-%d %H:%M:%S}): swap the dates (order: start/end)"
        )
    return start, end


# ------------------------------------------------------------------------------------------------
# Geometry files
# ------------------------------------------------------------------------------------------------


def read_geometry(path: str | Path) -> dict[str, Any]:
    """The GeoJSON geometry of a file: a bare geometry, a Feature, or a FeatureCollection (union).

    Raises InvalidSearch when the file is not GeoJSON in EPSG:4326.
    """
    import shapely
    import shapely.geometry

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidSearch(f"geometry file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise InvalidSearch(f"cannot read {path} as GeoJSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidSearch(f"{path} is not a GeoJSON object")
    crs = (
        doc.get("crs", {}).get("properties", {}).get("name", "")
        if isinstance(doc.get("crs"), dict)
        else ""
    )
    if crs and not re.search(r"(CRS84|EPSG::?4326)$", crs):
        raise InvalidSearch(
            f"{path} declares CRS {crs}: reproject it to EPSG:4326 (ogr2ogr -t_srs EPSG:4326)"
        )
    kind = doc.get("type")
    if kind == "Feature":
        geometry = doc.get("geometry")
    elif kind == "FeatureCollection":
        shapes = [
            shapely.geometry.shape(f["geometry"])
            for f in doc.get("features", [])
            if f.get("geometry")
        ]
        if not shapes:
            raise InvalidSearch(f"{path} is a FeatureCollection without geometries")
        geometry = (
            shapely.geometry.mapping(shapely.union_all(shapes))
            if len(shapes) > 1
            else shapely.geometry.mapping(shapes[0])
        )
    else:
        geometry = doc
    if not isinstance(geometry, dict):
        raise InvalidSearch(f"{path}: the Feature has no geometry")
    geometry = json.loads(json.dumps(geometry))  # tuples from shapely.mapping -> lists
    _check_geometry(geometry, str(path))
    return geometry


# ------------------------------------------------------------------------------------------------
# Item helpers
# ------------------------------------------------------------------------------------------------


def item_mgrs_tile(item: pystac.Item) -> str | None:
    """MGRS tile from ``s2:mgrs_tile``, the MGRS extension, or the id (``_T33UUP_``)."""
    props = item.properties
    tile = props.get("s2:mgrs_tile")
    if tile:
        return str(tile).upper()
    if all(k in props for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")):
        return f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}".upper()
    match = _TILE_IN_ID.search(item.id)
    return match[1] if match else None


def _platform(item: pystac.Item) -> str:
    platform = item.properties.get("platform")
    if platform:
        return str(platform).lower()
    match = re.match(r"^S2([A-D])_", item.id)
    return f"sentinel-2{match[1].lower()}" if match else ""


def _item_datetime(item: pystac.Item) -> datetime | None:
    value = item.datetime or item.common_metadata.start_datetime
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def acquisition_key(item: pystac.Item) -> tuple[str, str, str]:
    """(platform, datetime to the second in UTC, MGRS tile): equal for reprocessings of one scene.

    Items without a known tile get their id as the tile, so they are never merged.
    """
    when = _item_datetime(item)
    stamp = when.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ") if when else ""
    return _platform(item), stamp, item_mgrs_tile(item) or item.id


def _processing_time(item: pystac.Item) -> str:
    """Processing timestamp as YYYYMMDDTHHMMSS: the id's last field, else s2:generation_time."""
    last = item.id.rsplit("_", 1)[-1]
    if _PROCESSING_TIME.match(last):
        return last
    generated = item.properties.get("s2:generation_time") or item.properties.get("updated")
    if generated:
        return re.sub(r"[-:]", "", str(generated))[:15]
    return ""


def _baseline_text(item: pystac.Item) -> str | None:
    """``s2:processing_baseline``, else the ``_Nxxyy_`` field of ``s2:product_uri``."""
    baseline = item.properties.get("s2:processing_baseline")
    if baseline not in (None, ""):
        return str(baseline)
    uri = item.properties.get("s2:product_uri")
    match = _BASELINE_IN_URI.search(str(uri)) if uri else None
    if match:
        log.debug(
            "%s: processing baseline %s.%s read from s2:product_uri", item.id, match[1], match[2]
        )
        return f"{match[1]}.{match[2]}"
    return None


def _recency(item: pystac.Item) -> tuple[tuple[int, int], str, str]:
    try:
        baseline = parse_baseline(_baseline_text(item)) or (-1, -1)
    except ValueError:
        baseline = (-1, -1)
    return baseline, _processing_time(item), item.id


def deduplicate(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    """One item per acquisition (``acquisition_key``), sorted by datetime then id.

    Of duplicates, keep the latest ``s2:processing_baseline``, then the latest processing
    timestamp (the id's last field). Items with the same id are kept once.
    """
    by_id: dict[str, pystac.Item] = {}
    for item in items:
        by_id.setdefault(item.id, item)
    groups: dict[tuple[str, str, str], list[pystac.Item]] = {}
    for item in by_id.values():
        groups.setdefault(acquisition_key(item), []).append(item)
    kept = []
    for group in groups.values():
        best = max(group, key=_recency)
        kept.append(best)
        for other in group:
            if other is not best:
                log.debug(
                    "duplicate acquisition: dropped %s (baseline %s), kept %s (baseline %s)",
                    other.id,
                    _baseline_text(other),
                    best.id,
                    _baseline_text(best),
                )
    far_past = datetime.min.replace(tzinfo=timezone.utc)
    kept.sort(key=lambda it: (_item_datetime(it) or far_past, it.id))
    return kept


def _epsg_from(fields: dict[str, Any], item: pystac.Item, where: str) -> int | None:
    epsg = fields.get("proj:epsg")
    if epsg is not None:
        try:
            return int(epsg)
        except (TypeError, ValueError) as exc:
            raise ItemMetadataError(
                f"item {item.id}: proj:epsg={epsg!r} at {where} is not an integer"
            ) from exc
    code = fields.get("proj:code")
    if code is not None:
        match = _EPSG_CODE.match(str(code).strip())
        if not match:
            raise ItemMetadataError(
                f"item {item.id}: proj:code={code!r} at {where} is not an EPSG code "
                "('EPSG:32633'); the pipeline needs an EPSG CRS"
            )
        return int(match[1])
    return None


def item_epsg(item: pystac.Item, asset: str | None = None) -> int:
    """EPSG code of an item from ``proj:epsg`` (int) or ``proj:code`` ("EPSG:32633").

    Looks at the item properties, then at ``asset`` (or at every asset, which must agree).
    """
    epsg = _epsg_from(item.properties, item, "item properties")
    if epsg is not None:
        return epsg
    assets = {asset: item.assets[asset]} if asset and asset in item.assets else item.assets
    found = {}
    for key, value in assets.items():
        asset_epsg = _epsg_from(value.extra_fields, item, f"asset {key}")
        if asset_epsg is not None:
            found[key] = asset_epsg
    codes = set(found.values())
    if len(codes) == 1:
        return codes.pop()
    if len(codes) > 1:
        raise ItemMetadataError(
            f"item {item.id}: assets are in different CRSs {found}: pass asset= to choose one"
        )
    raise ItemMetadataError(
        f"item {item.id} has no proj:epsg or proj:code (item properties or assets): the "
        "projection extension is needed to place the pixels; use a catalog that provides it "
        "(Planetary Computer does) or add proj:code to the item"
    )


def _is_sentinel2(item: pystac.Item) -> bool:
    return (
        str(item.collection_id or "").startswith("sentinel-2")
        or str(item.properties.get("platform", "")).lower().startswith("sentinel-2")
        or bool(re.match(r"^S2[A-D]_", item.id))
    )


def reflectance_offset(item: pystac.Item) -> float:
    """Offset to add to DN/10000 for reflectance: -0.1 for baseline >= 04.00, else 0.0.

    From ``s2:processing_baseline`` (or ``s2:product_uri``), never from the acquisition date.
    A Sentinel-2 item without a baseline raises ItemMetadataError; other items get 0.0.
    """
    baseline = _baseline_text(item)
    if baseline is None:
        if _is_sentinel2(item):
            raise ItemMetadataError(
                f"Sentinel-2 item {item.id} has no s2:processing_baseline (nor a _Nxxyy_ field in "
                "s2:product_uri): cannot tell whether its DN carry the +1000 BOA offset of "
                "baseline >= 04.00. Use a catalog that records the baseline (Planetary Computer's "
                "sentinel-2-l2a does) or set s2:processing_baseline from the product's MTD_MSIL2A.xml"
            )
        log.debug("%s: not a Sentinel-2 item, reflectance offset 0", item.id)
        return 0.0
    try:
        return boa_offset_dn(baseline) / QUANTIFICATION
    except ValueError as exc:
        raise ItemMetadataError(f"item {item.id}: {exc}") from exc


def items_table(items: Iterable[pystac.Item]) -> str:
    """A fixed-width table (id, datetime, tile, cloud %, baseline, epsg) for the CLI."""
    header = ("id", "datetime (UTC)", "tile", "cloud %", "baseline", "epsg")
    rows = []
    for item in items:
        when = _item_datetime(item)
        cloud = item.properties.get("eo:cloud_cover")
        try:
            epsg = str(item_epsg(item))
        except ItemMetadataError:
            epsg = "?"
        rows.append(
            (
                item.id,
                when.strftime("%Y-%m-%d %H:%M:%S") if when else "?",
                item_mgrs_tile(item) or "?",
                f"{float(cloud):.1f}" if cloud is not None else "?",
                _baseline_text(item) or "?",
                epsg,
            )
        )
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    right = {3, 5}

    def fmt(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    lines.append(f"{len(rows)} item{'s' if len(rows) != 1 else ''}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Catalog kinds
# ------------------------------------------------------------------------------------------------


def is_local_catalog(catalog: str | Path) -> bool:
    """True for a filesystem path or file:// URI, False for an http(s) STAC API URL."""
    return not re.match(r"^https?://", str(catalog), re.IGNORECASE)


def is_planetary_computer(catalog: str) -> bool:
    """True when the catalog URL is on Planetary Computer (assets need SAS signing)."""
    if is_local_catalog(catalog):
        return False
    host = (urlparse(str(catalog)).hostname or "").lower()
    return host == _PC_HOST or host.endswith("." + _PC_HOST)


def item_modifier(params: SearchParams) -> Callable[[Any], None] | None:
    """The pystac-client ``modifier``: Planetary Computer signing for PC catalogs, else None."""
    if params.sign and is_planetary_computer(params.catalog):
        import planetary_computer

        return planetary_computer.sign_inplace
    return None


# ------------------------------------------------------------------------------------------------
# Search
# ------------------------------------------------------------------------------------------------


def search(params: SearchParams) -> list[pystac.Item]:
    """Search the catalog; return one item per acquisition, sorted by datetime.

    Raises InvalidSearch, CatalogUnreachable, NoItemsFound (all SearchError).
    """
    params.validate()
    if is_local_catalog(params.catalog):
        found = _search_local(params)
    else:
        found = _search_api(params)
    items = deduplicate(found)
    dropped = len(found) - len(items)
    log.info(
        "found %d item(s) for %s; %d after deduplication (%d duplicate acquisition(s) dropped)",
        len(found),
        params.describe(),
        len(items),
        dropped,
    )
    if not items:
        raise NoItemsFound(f"no items found for {params.describe()}: {_relax_hint(params)}")
    return items


def _relax_hint(params: SearchParams) -> str:
    hints = ["widen the date range"]
    if params.max_cloud_cover is not None:
        hints.append("raise --max-cloud-cover")
    if params.mgrs_tile is not None:
        hints.append("drop --mgrs-tile")
    hints.append("check the area is lon/lat (bbox order: west, south, east, north)")
    hints.append(f"check the collection id ({params.collection!r})")
    return ", ".join(hints[:-1]) + " or " + hints[-1]


def _retry(params: SearchParams) -> Any:
    from urllib3.util.retry import Retry

    return Retry(
        total=params.max_retries,
        connect=min(params.max_retries, 2),
        read=params.max_retries,
        status=params.max_retries,
        backoff_factor=params.backoff_factor,
        backoff_max=60,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # retry POST /search too: a search is idempotent
        respect_retry_after_header=True,
        raise_on_status=False,  # hand the last response to pystac-client -> APIError with a status
    )


def _unreachable(params: SearchParams, cause: str) -> CatalogUnreachable:
    return CatalogUnreachable(
        f"cannot reach the STAC API at {params.catalog}: {cause}. Check the network and proxy "
        "settings (HTTPS_PROXY), that the URL is a STAC API root, or pass --catalog with another "
        "API or a local catalog (a directory of item JSON)"
    )


def _api_error(params: SearchParams, exc: Exception) -> SearchError:
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split())[:300]
    if status is None:
        return _unreachable(params, text or type(exc).__name__)
    if status in RETRY_STATUS or status >= 500:
        return _unreachable(
            params, f"the server answered HTTP {status} after {params.max_retries} retries ({text})"
        )
    return SearchError(
        f"the STAC API at {params.catalog} rejected the search with HTTP {status}: {text}. "
        f"Check the collection id ({params.collection!r}) and the search parameters"
    )


def _search_api(params: SearchParams) -> list[pystac.Item]:
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    stac_io = StacApiIO(
        max_retries=_retry(params), timeout=(min(10.0, params.timeout_s), params.timeout_s)
    )
    try:
        client = Client.open(params.catalog, modifier=item_modifier(params), stac_io=stac_io)
    except APIError as exc:
        raise _api_error(params, exc) from exc
    except (ValueError, KeyError, pystac.STACError) as exc:  # not JSON / not STAC
        raise _unreachable(params, f"the answer is not a STAC API landing page ({exc})") from exc
    start, end = params.interval
    query = params.query()
    kwargs: dict[str, Any] = {
        "collections": [params.collection],
        "datetime": (start, end),
        "max_items": params.max_items,
        "limit": params.page_size,
        "method": "POST",
    }
    if params.bbox is not None:
        kwargs["bbox"] = list(params.bbox)
    else:
        kwargs["intersects"] = params.intersects
    if query:
        kwargs["query"] = query
    try:
        item_search = client.search(**kwargs)
        pages = 0
        items: list[pystac.Item] = []
        for page in item_search.pages():
            pages += 1
            items.extend(page.items)
            if params.max_items is not None and len(items) >= params.max_items:
                items = items[: params.max_items]
                break
    except APIError as exc:
        raise _api_error(params, exc) from exc
    except NotImplementedError as exc:  # no item-search conformance
        raise SearchError(f"{params.catalog} does not support STAC item search: {exc}") from exc
    log.debug("%d item(s) in %d page(s) from %s", len(items), pages, params.catalog)
    # A server that ignores the query extension returns everything: filter again, exactly.
    kept = [item for item in items if _matches_properties(item, params)]
    if len(kept) < len(items):
        log.warning(
            "%s returned %d item(s) outside the cloud-cover/tile/collection filters (does it "
            "support the STAC query extension?); dropped them",
            params.catalog,
            len(items) - len(kept),
        )
    return kept


# ------------------------------------------------------------------------------------------------
# Local catalogs
# ------------------------------------------------------------------------------------------------


def _local_path(catalog: str | Path) -> Path:
    text = str(catalog)
    if text.lower().startswith("file://"):
        text = urlparse(text).path
    return Path(text).expanduser()


def _items_of_document(path: Path) -> list[pystac.Item]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: not readable JSON (%s)", path, exc)
        return []
    if not isinstance(doc, dict):
        return []
    kind = doc.get("type")
    if kind == "Feature":
        item = pystac.Item.from_dict(doc, href=str(path), preserve_dict=False)
        item.set_self_href(str(path.resolve()))
        return [item]
    if kind == "FeatureCollection":
        out = []
        for feature in doc.get("features", []):
            if isinstance(feature, dict) and feature.get("type") == "Feature":
                item = pystac.Item.from_dict(feature, preserve_dict=False)
                out.append(item)
        return out
    if kind in ("Catalog", "Collection"):
        catalog = pystac.read_file(str(path))
        assert isinstance(catalog, pystac.Catalog)
        return list(catalog.get_items(recursive=True))
    log.debug("skipping %s: not a STAC item, item collection or catalog", path)
    return []


def load_local_items(catalog: str | Path) -> list[pystac.Item]:
    """Every item of a local catalog: a directory of JSON files (searched recursively), one
    ItemCollection/FeatureCollection file, or a static catalog.json/collection.json.

    A directory holding a catalog.json or collection.json is read as that static catalog.
    Items appearing twice (same id) are kept once.
    """
    path = _local_path(catalog)
    if not path.exists():
        raise CatalogUnreachable(
            f"local catalog {path} does not exist: pass --catalog with a directory of STAC item "
            f"JSON, an items.json FeatureCollection, a catalog.json, or a STAC API URL such as "
            f"{PLANETARY_COMPUTER_STAC}"
        )
    if path.is_dir():
        roots = [
            path / name for name in ("catalog.json", "collection.json") if (path / name).is_file()
        ]
        files = roots[:1] or sorted(path.rglob("*.json"))
    else:
        files = [path]
    by_id: dict[str, pystac.Item] = {}
    for file in files:
        for item in _items_of_document(file):
            if item.get_self_href():
                item.make_asset_hrefs_absolute()
            by_id.setdefault(item.id, item)
    log.debug("%d item(s) in local catalog %s", len(by_id), path)
    return list(by_id.values())


def _matches_properties(item: pystac.Item, params: SearchParams) -> bool:
    if item.collection_id is not None and item.collection_id != params.collection:
        return False
    if params.max_cloud_cover is not None:
        cloud = item.properties.get("eo:cloud_cover")
        if cloud is None or float(cloud) > float(params.max_cloud_cover):
            return False
    tile = params.tile
    return tile is None or item_mgrs_tile(item) == tile


def _search_local(params: SearchParams) -> list[pystac.Item]:
    import shapely.geometry

    if params.bbox is not None:
        aoi = shapely.geometry.box(*params.bbox)
    else:
        aoi = shapely.geometry.shape(params.intersects)
    start, end = params.interval
    found = []
    for item in load_local_items(params.catalog):
        if not _matches_properties(item, params):
            continue
        if not _in_interval(item, start, end):
            continue
        if item.geometry is not None:
            footprint = shapely.geometry.shape(item.geometry)
        elif item.bbox is not None:
            footprint = shapely.geometry.box(*item.bbox[:2], *item.bbox[-2:])
        else:
            continue
        if footprint.intersects(aoi):
            found.append(item)
    # Newest first, as pgstac returns them, so that max_items caps the same items.
    far_past = datetime.min.replace(tzinfo=timezone.utc)
    found.sort(key=lambda it: (_item_datetime(it) or far_past, it.id), reverse=True)
    if params.max_items is not None:
        found = found[: params.max_items]
    return found


def _in_interval(item: pystac.Item, start: datetime | None, end: datetime | None) -> bool:
    first = _item_datetime(item)
    last = item.common_metadata.end_datetime if item.datetime is None else first
    if first is None:
        return False
    if last is None:
        last = first
    if last.tzinfo is None:
        last = last.replace(tzinfo=timezone.utc)
    return (start is None or last >= start) and (end is None or first <= end)
