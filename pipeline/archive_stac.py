"""A STAC Collection (and Items) describing an archive, so catalogs and analysts' tools find it.

``write_archive_stac(store)`` reads a finished (or partly finished) archive and writes, beside
it (``restored.zarr`` -> ``restored.stac/collection.json``), a self-contained STAC catalog:

- the **Collection**: the extent, the datacube extension (``cube:dimensions``,
  ``cube:variables`` with units; restored bands are ``data``, quality layers ``auxiliary``), the
  projection, one ``zarr`` asset with the xarray-assets extension's ``xarray:open_kwargs`` (the
  way Planetary Computer lists its Zarr datasets), one asset per overview level, and the
  provenance: source catalog and item ids, software version, configuration fingerprint and
  the run's self-validation (processing extension and ``phyvlm:`` fields);
- **Items**: one per written tile of a run's store (its footprint and pixel window), or one
  for the whole area of a ``write_archive`` store, each with the same ``zarr`` asset, so a STAC API
  search by place and time finds the archive.

Opening it back::

    collection = pystac.Collection.from_file("restored.stac/collection.json")
    asset = collection.assets["zarr"]
    ds = xr.open_dataset(asset.href, **asset.extra_fields["xarray:open_kwargs"])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
import xarray as xr

log = logging.getLogger(__name__)

EXTENSIONS = {
    "datacube": "https://stac-extensions.github.io/datacube/v2.2.0/schema.json",
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "xarray": "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
ZARR_MEDIA_TYPE = "application/vnd+zarr"
#: Quality layers: (unit, description) where the archive's attributes do not say.
_QUALITY_UNITS = {
    "confidence": "1",
    "gate": "1",
    "transmission": "1",
    "reference_days": "d",
    "no_valid_observation": "1",
    "gamma": "1",
    "airlight": "1",
    "tile_done": "1",
}
#: Archive attributes that define what a run computes (the configuration fingerprint).
_CONFIG_ATTRS = (
    "catalog",
    "collection",
    "search_bbox",
    "search_intersects",
    "search_datetime",
    "search_max_cloud_cover",
    "search_mgrs_tile",
    "mode",
    "period",
    "cube_config",
    "prior",
    "prior_params",
    "fusion_params",
)


def stac_location(store: str | os.PathLike) -> str:
    """Where the catalog of ``store`` goes: ``x/restored.zarr`` -> ``x/restored.stac``."""
    text = str(store).rstrip("/")
    base = text[: -len(".zarr")] if text.endswith(".zarr") else text
    return base + ".stac"


def _absolute(store: str | os.PathLike) -> str:
    text = str(store)
    if "://" in text and not text.startswith("file://"):
        return text
    return str(Path(text.removeprefix("file://")).resolve())


def open_kwargs(store_format: int, group: str | None = None) -> dict[str, Any]:
    """``xarray.open_dataset(href, **kwargs)`` keywords: lazy, CRS decoded, one metadata read."""
    kwargs: dict[str, Any] = {
        "engine": "zarr",
        "chunks": {},
        "consolidated": True,
        "decode_coords": "all",
        "zarr_format": store_format,
    }
    if group:
        kwargs["group"] = group
    return kwargs


def config_fingerprint(attrs: Mapping[str, Any]) -> str:
    """The run's fingerprint (tiled stores record one), else a hash of its configuration."""
    from .tiled_archive import FINGERPRINT_ATTR

    if attrs.get(FINGERPRINT_ATTR):
        return str(attrs[FINGERPRINT_ATTR])
    parts = {k: attrs.get(k) for k in _CONFIG_ATTRS}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _variable(name: str, var: xr.DataArray, bands: set[str]) -> dict[str, Any]:
    is_band = name in bands
    unit = var.attrs.get("units") or ("1" if is_band else _QUALITY_UNITS.get(name, "1"))
    description = var.attrs.get("long_name") or (
        f"{name} surface reflectance (restored)" if is_band else name.replace("_", " ")
    )
    return {
        "dimensions": [str(d) for d in var.dims],
        "type": "data" if is_band else "auxiliary",
        "unit": str(unit),
        "description": str(description),
        "data_type": str(var.dtype),
    }


def _dimensions(ds: xr.Dataset, epsg: int | None) -> dict[str, Any]:
    res_x = float(ds.x[1] - ds.x[0]) if ds.sizes["x"] > 1 else 0.0
    res_y = float(ds.y[1] - ds.y[0]) if ds.sizes["y"] > 1 else 0.0
    dims: dict[str, Any] = {
        "x": {
            "type": "spatial",
            "axis": "x",
            "extent": [float(ds.x.min()) - abs(res_x) / 2, float(ds.x.max()) + abs(res_x) / 2],
            "step": res_x,
            "reference_system": epsg,
        },
        "y": {
            "type": "spatial",
            "axis": "y",
            "extent": [float(ds.y.min()) - abs(res_y) / 2, float(ds.y.max()) + abs(res_y) / 2],
            "step": res_y,
            "reference_system": epsg,
        },
    }
    if "time" in ds.dims:
        times = [pd.Timestamp(t).strftime("%Y-%m-%dT%H:%M:%SZ") for t in ds["time"].values]
        dims["time"] = {"type": "temporal", "extent": [times[0], times[-1]], "values": times}
    for dim in ds.dims:
        if str(dim) not in dims and dim in ds.coords:
            dims[str(dim)] = {"type": str(dim), "values": [str(v) for v in ds[dim].values]}
        elif str(dim) not in dims:
            dims[str(dim)] = {"type": str(dim), "extent": [0, int(ds.sizes[dim]) - 1], "step": 1}
    return dims


def _lonlat(geobox: Any) -> tuple[list[float], dict[str, Any]]:
    footprint = geobox.extent.to_crs("EPSG:4326")
    b = footprint.boundingbox
    return [b.left, b.bottom, b.right, b.top], footprint.json


def _proj_fields(geobox: Any) -> dict[str, Any]:
    t = geobox.transform
    b = geobox.extent.boundingbox
    return {
        "proj:code": f"EPSG:{geobox.crs.epsg}" if geobox.crs.epsg else None,
        "proj:shape": [int(geobox.shape[0]), int(geobox.shape[1])],
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "proj:bbox": [b.left, b.bottom, b.right, b.top],
    }


def _provenance(attrs: Mapping[str, Any], version_fallback: str) -> dict[str, Any]:
    item_ids = attrs.get("item_ids") or []
    validation = attrs.get("self_validation")
    if isinstance(validation, str) and validation:
        try:
            validation = json.loads(validation)
        except ValueError:
            pass
    return {
        "processing:software": {
            str(attrs.get("software", "phyvlm-cr")): str(
                attrs.get("software_version", version_fallback)
            )
        },
        "processing:lineage": (
            "Sentinel-2 L2A restored by phyvlm-cr: physical inversion of thin cloud, harmonised "
            f"temporal references for thick cloud, blended by a {attrs.get('prior', 'physics')} "
            "prior's per-pixel confidence"
        ),
        "processing:datetime": attrs.get("created") or None,
        "phyvlm:source_catalog": attrs.get("catalog", ""),
        "phyvlm:source_collection": attrs.get("collection", ""),
        "phyvlm:source_items": [str(i) for i in item_ids],
        "phyvlm:config_fingerprint": config_fingerprint(attrs),
        "phyvlm:self_validation": validation or None,
    }


def _window_items(
    ds: xr.Dataset, collection_id: str, asset: pystac.Asset, extra: Mapping[str, Any]
) -> list[pystac.Item]:
    """One Item per written tile (tiled store), else one for the whole area."""
    from odc.geo.geobox import GeoBox

    from .tiled_archive import GRID_ATTR, TILE_DONE_VAR
    from .tiling import GridSpec

    geobox: GeoBox = ds.odc.geobox
    times = pd.DatetimeIndex(ds["time"].values)
    start, end = times.min().to_pydatetime(), times.max().to_pydatetime()
    windows: list[tuple[str, Any, dict[str, list[int]]]] = []
    if GRID_ATTR in ds.attrs and TILE_DONE_VAR in ds:
        grid = GridSpec.from_json(ds.attrs[GRID_ATTR])
        written = np.asarray(np.asarray(ds[TILE_DONE_VAR].values).astype(bool).any(axis=0))
        for tile in grid.tiles():
            if written[tile.row, tile.col]:
                window = {"y": [tile.y.start, tile.y.stop], "x": [tile.x.start, tile.x.stop]}
                windows.append((tile.key, tile.geobox, window))
    else:
        ny, nx = geobox.shape
        windows.append(("area", geobox, {"y": [0, int(ny)], "x": [0, int(nx)]}))
    items = []
    for key, box, window in windows:
        bbox, geometry = _lonlat(box)
        item = pystac.Item(
            id=f"{collection_id}-{key}",
            geometry=geometry,
            bbox=bbox,
            datetime=None,
            properties={
                "start_datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end_datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                **_proj_fields(box),
                "phyvlm:window": window,
                **extra,
            },
            stac_extensions=[EXTENSIONS["projection"], EXTENSIONS["xarray"]],
            collection=collection_id,
        )
        item.add_asset("zarr", asset.clone())
        items.append(item)
    return items


def archive_collection(
    store: str | os.PathLike, *, collection_id: str | None = None, description: str = ""
) -> pystac.Collection:
    """The STAC Collection (with its Items) that describes the archive ``store``."""
    import odc.geo.xr  # noqa: F401  (the .odc accessor)
    import zarr

    from . import __version__
    from .archive import COMPLETE_ATTR

    href = _absolute(store)
    group = zarr.open_group(str(store), mode="r")
    store_format = int(group.metadata.zarr_format)
    ds = xr.open_zarr(str(store), decode_coords="all", consolidated=True)
    attrs: dict[str, Any] = dict(group.attrs)  # fresh, not the consolidated copy
    collection_id = collection_id or Path(href.rstrip("/")).name.removesuffix(".zarr")
    geobox = ds.odc.geobox
    epsg = geobox.crs.epsg if geobox.crs is not None else None
    bbox, _ = _lonlat(geobox)
    times = pd.DatetimeIndex(ds["time"].values)
    provenance = _provenance(attrs, __version__)
    bands = {str(b) for b in json.loads(attrs.get("cube_config") or "{}").get("bands", [])}
    bands = bands or {str(n) for n in ds.data_vars if str(n)[:1] == "B" and str(n)[1:2].isdigit()}

    from .overviews import overview_levels

    levels = overview_levels(str(store))
    collection = pystac.Collection(
        id=collection_id,
        description=description
        or (
            f"Cloud-free Sentinel-2 L2A surface reflectance with quality layers ({len(times)} "
            f"time step(s)), restored by phyvlm-cr {provenance['processing:software']}"
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]),
            pystac.TemporalExtent([[times.min().to_pydatetime(), times.max().to_pydatetime()]]),
        ),
        title=f"phyvlm-cr archive {collection_id}",
        license="other",
        keywords=["sentinel-2", "cloud removal", "surface reflectance", "zarr"],
        stac_extensions=list(EXTENSIONS.values()),
        extra_fields={
            "cube:dimensions": _dimensions(ds, epsg),
            "cube:variables": {
                str(n): _variable(str(n), v, bands) for n, v in ds.data_vars.items()
            },
            "summaries": {"proj:code": [f"EPSG:{epsg}"] if epsg else []},
            "phyvlm:complete": bool(attrs.get(COMPLETE_ATTR, False)),
            "phyvlm:overview_factors": [level.factor for level in levels],
            **provenance,
        },
    )
    collection.add_link(
        pystac.Link(
            "license",
            "https://sentinels.copernicus.eu/documents/247904/690755/Sentinel_Data_Legal_Notice",
            title="Copernicus Sentinel data terms (source data)",
        )
    )
    catalog = str(attrs.get("catalog", ""))
    if catalog.startswith(("http://", "https://")) and attrs.get("collection"):
        collection.add_link(
            pystac.Link(
                "derived_from",
                f"{catalog.rstrip('/')}/collections/{attrs['collection']}",
                media_type="application/json",
                title="source collection",
            )
        )
    asset = pystac.Asset(
        href=href,
        media_type=ZARR_MEDIA_TYPE,
        roles=["data", "zarr"],
        title="the archive (all time steps, bands and quality layers)",
        extra_fields={"xarray:open_kwargs": open_kwargs(store_format)},
    )
    collection.add_asset("zarr", asset)
    for level in levels:
        collection.add_asset(
            f"overview_{level.factor}x",
            pystac.Asset(
                href=href,
                media_type=ZARR_MEDIA_TYPE,
                roles=["overview", "zarr"],
                title=f"overview at 1/{level.factor} resolution ({level.shape[0]} x "
                f"{level.shape[1]} px)",
                extra_fields={"xarray:open_kwargs": open_kwargs(store_format, level.path)},
            ),
        )
    extra = {
        "phyvlm:config_fingerprint": provenance["phyvlm:config_fingerprint"],
        "processing:software": provenance["processing:software"],
    }
    for item in _window_items(ds, collection_id, asset, extra):
        collection.add_item(item)
    return collection


class _FsspecStacIO(pystac.StacIO):
    """pystac reads and writes through fsspec, so the catalog can sit beside an az:// store."""

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        import fsspec

        with fsspec.open(str(source), "r") as f:
            return str(f.read())

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        import fsspec

        with fsspec.open(str(dest), "w") as f:
            f.write(txt)


def write_archive_stac(
    store: str | os.PathLike, destination: str | None = None, *, collection_id: str | None = None
) -> str:
    """Describe ``store`` as a STAC Collection with Items; return the collection.json path.

    ``destination`` (a folder, local or fsspec URL) defaults to ``stac_location(store)``. The
    catalog is self-contained (relative links); assets point at the store's absolute href.
    """
    collection = archive_collection(store, collection_id=collection_id)
    folder = destination or stac_location(_absolute(store))
    if "://" not in folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
    collection.normalize_hrefs(folder.rstrip("/") + "/")  # a folder, despite its ".stac"
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=_FsspecStacIO())
    path = collection.get_self_href() or f"{folder}/collection.json"
    log.info(
        "STAC collection %s (%d item(s)): %s",
        collection.id,
        len(list(collection.get_items())),
        path,
    )
    return path
