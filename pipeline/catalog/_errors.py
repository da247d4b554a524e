"""The search errors: each message says what went wrong and how to fix it."""

from __future__ import annotations


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
