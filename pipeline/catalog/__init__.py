"""Find Sentinel-2 L2A items: a STAC API (Planetary Computer by default) or a local catalog.

``search(SearchParams(...))`` returns clean items: one per acquisition (the latest processing
baseline wins), sorted by time. The same filters run server side (STAC API ``query`` extension)
or locally (a directory of item JSON, an ItemCollection file or a static catalog), so the offline
demo and the production search agree.

One concern per module:

- ``_params``: ``SearchParams`` and the checks of bbox, geometry, tile and limits;
- ``_datetime``: datetime ranges ("start/end", a date, month or year) to inclusive UTC bounds;
- ``_geojson``: the area of interest from a GeoJSON file;
- ``_items``: item hygiene (acquisition keys, deduplication by baseline, EPSG, BOA offset);
- ``_api``: a STAC API search with retries, Planetary Computer signing;
- ``_local``: local catalogs and the same filters applied in process;
- ``_search``: ``search``, which picks the API or the local path and deduplicates.

The package is named ``catalog``, not ``search``: ``pipeline.search`` is the public search
*function*, and a subpackage of that name would be shadowed by it as an attribute of
``pipeline`` (``import pipeline.search as s`` would give the function).

Decisions worth knowing:

- ``max_cloud_cover`` is inclusive (``eo:cloud_cover <= max``, the ``lte`` operator): a maximum of
  0 asks for cloud-free scenes instead of returning nothing.
- Date-only ends are whole days: ``"2024-04-01/2024-04-30"`` includes the 30th until 23:59:59.999999Z.
- A bbox with west > east is rejected rather than read as crossing the antimeridian: a swapped
  pair would otherwise silently search 359 degrees of longitude. Areas across the antimeridian go
  in as ``intersects`` with a MultiPolygon split at +-180.
- ``max_items`` caps the items fetched before deduplication.
- The BOA offset comes from ``s2:processing_baseline`` (or the ``_Nxxyy_`` of ``s2:product_uri``),
  never from the date.
- Assets are signed (Planetary Computer SAS tokens, about 45 minutes) at search time when
  ``sign=True``; long jobs should pass ``sign=False`` and sign at read time on the workers.
"""

from __future__ import annotations

from ._api import RETRY_STATUS, is_local_catalog, is_planetary_computer, item_modifier
from ._datetime import parse_datetime_range
from ._errors import (
    CatalogUnreachable,
    InvalidSearch,
    ItemMetadataError,
    NoItemsFound,
    SearchError,
)
from ._geojson import read_geometry
from ._items import (
    acquisition_key,
    deduplicate,
    item_epsg,
    item_mgrs_tile,
    items_table,
    reflectance_offset,
)
from ._local import load_local_items
from ._params import DEFAULT_COLLECTION, MAX_PAGE_SIZE, PLANETARY_COMPUTER_STAC, SearchParams
from ._search import search

__all__ = [
    "DEFAULT_COLLECTION",
    "MAX_PAGE_SIZE",
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
    "item_modifier",
    "item_epsg",
    "item_mgrs_tile",
    "items_table",
    "load_local_items",
    "parse_datetime_range",
    "read_geometry",
    "reflectance_offset",
    "search",
]
