"""Search a STAC API (Planetary Computer by default) with retries and signing.

Statuses 429/502/503/504 and read errors are retried with exponential backoff; what still
fails becomes ``CatalogUnreachable`` naming the fix. Assets are signed (Planetary Computer SAS
tokens, about 45 minutes) at search time when ``sign=True``; long jobs pass ``sign=False`` and
sign at read time on the workers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pystac

from ._errors import CatalogUnreachable, SearchError
from ._local import matches_properties
from ._params import SearchParams

log = logging.getLogger(__name__)

#: HTTP statuses retried with exponential backoff (rate limit, gateway errors, timeouts).
RETRY_STATUS = (429, 502, 503, 504)
_PC_HOST = "planetarycomputer.microsoft.com"


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


def search_api(params: SearchParams) -> list[pystac.Item]:
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
    kept = [item for item in items if matches_properties(item, params)]
    if len(kept) < len(items):
        log.warning(
            "%s returned %d item(s) outside the cloud-cover/tile/collection filters (does it "
            "support the STAC query extension?); dropped them",
            params.catalog,
            len(items) - len(kept),
        )
    return kept
