"""Local catalogs (item JSON files, ItemCollections, static catalogs) searched in process.

The filters are the ones a STAC API applies server side, so the offline demo and a real
search agree; ``search_api`` reuses ``matches_properties`` to filter again what a server that
ignores the query extension returns.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import pystac

from ._errors import CatalogUnreachable
from ._items import item_datetime, item_mgrs_tile
from ._params import PLANETARY_COMPUTER_STAC, SearchParams

log = logging.getLogger(__name__)


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


def matches_properties(item: pystac.Item, params: SearchParams) -> bool:
    if item.collection_id is not None and item.collection_id != params.collection:
        return False
    if params.max_cloud_cover is not None:
        cloud = item.properties.get("eo:cloud_cover")
        if cloud is None or float(cloud) > float(params.max_cloud_cover):
            return False
    tile = params.tile
    return tile is None or item_mgrs_tile(item) == tile


def search_local(params: SearchParams) -> list[pystac.Item]:
    import shapely.geometry

    if params.bbox is not None:
        aoi = shapely.geometry.box(*params.bbox)
    else:
        aoi = shapely.geometry.shape(params.intersects)
    start, end = params.interval
    found = []
    for item in load_local_items(params.catalog):
        if not matches_properties(item, params):
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
    found.sort(key=lambda it: (item_datetime(it) or far_past, it.id), reverse=True)
    if params.max_items is not None:
        found = found[: params.max_items]
    return found


def _in_interval(item: pystac.Item, start: datetime | None, end: datetime | None) -> bool:
    first = item_datetime(item)
    last = item.common_metadata.end_datetime if item.datetime is None else first
    if first is None:
        return False
    if last is None:
        last = first
    if last.tzinfo is None:
        last = last.replace(tzinfo=timezone.utc)
    return (start is None or last >= start) and (end is None or first <= end)
