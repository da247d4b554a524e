"""``search``: one entry point over a STAC API or a local catalog, with item hygiene."""

from __future__ import annotations

import logging

import pystac

from ._api import is_local_catalog, search_api
from ._errors import NoItemsFound
from ._items import deduplicate
from ._local import search_local
from ._params import SearchParams

log = logging.getLogger(__name__)


def search(params: SearchParams) -> list[pystac.Item]:
    """Search the catalog; return one item per acquisition, sorted by datetime.

    Raises InvalidSearch, CatalogUnreachable, NoItemsFound (all SearchError).
    """
    params.validate()
    if is_local_catalog(params.catalog):
        found = search_local(params)
    else:
        found = search_api(params)
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
