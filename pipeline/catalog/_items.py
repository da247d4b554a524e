"""Item hygiene: acquisition keys, deduplication by processing baseline, EPSG, BOA offset.

The BOA offset comes from ``s2:processing_baseline`` (or the ``_Nxxyy_`` of ``s2:product_uri``),
never from the date. A Sentinel-2 item without either is an error naming the item; items of
other collections get offset 0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import pystac

from .._bands import QUANTIFICATION, boa_offset_dn, parse_baseline
from ._errors import ItemMetadataError

log = logging.getLogger(__name__)

_TILE_IN_ID = re.compile(r"_T(\d{2}[A-Z]{3})(?:_|$)")
_PROCESSING_TIME = re.compile(r"^\d{8}T\d{6}$")
_BASELINE_IN_URI = re.compile(r"_N(\d{2})(\d{2})_")
_EPSG_CODE = re.compile(r"^EPSG:(\d+)$", re.IGNORECASE)


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


def item_datetime(item: pystac.Item) -> datetime | None:
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
    when = item_datetime(item)
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
    kept.sort(key=lambda it: (item_datetime(it) or far_past, it.id))
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
        when = item_datetime(item)
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
