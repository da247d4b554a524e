"""Overviews: the archive at 1/2, 1/4, ... resolution, beside the full-resolution arrays.

Browsing a continental archive in a notebook or a web map should not read full resolution.
Each level is a Zarr group ``overviews/<factor>`` inside the store holding every spatial
variable (time, y, x) with its own coordinates and CRS; the root attribute ``multiscales``
lists the levels in the layout ndpyramid writes and xarray-based map tilers read (a list of
``{"datasets": [{"path": ...}, ...], "type": "reduce", "metadata": {...}}``), with the
full-resolution arrays as the first dataset (path ``"."``). Levels halve the resolution until
the whole area fits one ``min_size`` px tile (256 px, a web-map tile, by default).

Reduction: a coarse pixel is the NaN-ignoring mean of its 2 x 2 finer pixels (reflectance,
confidence, gate, transmission, reference days, prior probabilities); ``no_valid_observation``
is 1 only where all four are (a coarse pixel with any valid observation shows it).

Built per region as it lands: ``write_region_overviews`` reduces one written region (a tile)
of the store into every level whose chunks the region covers whole (so regions written at
the same time never share an overview chunk); ``finish_overviews`` then builds the coarser
levels, where one chunk spans several regions, from the finest shared level, and
consolidates the metadata. ``ensure_overview_arrays`` creates the levels (or grows their time
axis after an append) before regions land.

Open a level: ``open_overview(store, max_size=1024)`` or ``xr.open_zarr(store,
group="overviews/4", decode_coords="all")``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)

MULTISCALES_ATTR = "multiscales"
OVERVIEW_GROUP = "overviews"
#: Per-region levels stop where a region's footprint gets smaller than this (px): finer
#: chunks would mean many tiny objects; the coarser levels come from ``finish_overviews``.
MIN_REGION_CHUNK = 64


def per_region(region_size: int, factor: int) -> bool:
    """Whether a level is written region by region: each region covers whole chunks of it
    (``region_size / factor`` px), at least MIN_REGION_CHUNK px, or the first level always."""
    side = region_size // factor
    return region_size % factor == 0 and side >= min(MIN_REGION_CHUNK, region_size // 2)


@dataclass(frozen=True)
class OverviewLevel:
    factor: int
    path: str
    shape: tuple[int, int]


def level_factors(shape: tuple[int, int], min_size: int = 256) -> list[int]:
    """2, 4, 8, ... until the area fits one ``min_size`` px tile (none if it already does)."""
    if min_size < 16:
        raise ValueError(f"overview min_size {min_size} is too small: use 256 (a web-map tile)")
    factors: list[int] = []
    factor = 1
    while -(-max(shape) // factor) > min_size:
        factor *= 2
        factors.append(factor)
    return factors


def overview_levels(store: str | os.PathLike) -> list[OverviewLevel]:
    """The levels a store holds, finest first (from its ``multiscales`` attribute)."""
    import zarr

    attrs: dict[str, Any] = dict(
        zarr.open_group(str(store), mode="r", use_consolidated=False).attrs
    )
    levels = []
    for entry in attrs.get(MULTISCALES_ATTR) or []:
        for dataset in entry.get("datasets", []):
            if dataset.get("path") not in (None, "."):
                ny, nx = dataset.get("shape", (0, 0))
                levels.append(OverviewLevel(int(dataset["factor"]), dataset["path"], (ny, nx)))
    return sorted(levels, key=lambda level: level.factor)


def _spatial_vars(ds: xr.Dataset) -> list[str]:
    return [str(n) for n, v in ds.data_vars.items() if {"y", "x"} <= set(v.dims)]


def _reduce(ds: xr.Dataset, factor: int) -> xr.Dataset:
    """The 1/factor dataset (NaN-mean; no_valid_observation: all of the window)."""
    out = {}
    for name in _spatial_vars(ds):
        var = ds[name]
        if var.dtype == np.uint8:
            coarse = var.astype("float32").coarsen(y=factor, x=factor, boundary="pad").min()
            out[name] = coarse.fillna(1).astype("uint8")
        else:
            out[name] = var.coarsen(y=factor, x=factor, boundary="pad").mean().astype(var.dtype)
        out[name].attrs = dict(var.attrs)
    return xr.Dataset(out).drop_vars(["y", "x"], errors="ignore")


def _level_template(base: xr.Dataset, factor: int) -> xr.Dataset:
    import dask.array as da
    from odc.geo.xr import xr_coords

    geobox = base.odc.geobox.zoom_out(factor)
    names = _spatial_vars(base)
    data = {}
    for name in names:
        var = base[name]
        shape = tuple(
            geobox.shape[0] if d == "y" else geobox.shape[1] if d == "x" else base.sizes[d]
            for d in var.dims
        )
        data[name] = xr.DataArray(
            da.zeros(shape, dtype=var.dtype, chunks=shape), dims=var.dims, attrs=dict(var.attrs)
        )
    coords = dict(xr_coords(geobox, crs_coord_name="spatial_ref"))
    coords["time"] = base["time"]
    ds = xr.Dataset(data, coords=coords)
    return ds.rio.write_crs(geobox.crs.to_wkt(), grid_mapping_name="spatial_ref")


def ensure_overview_arrays(
    store: str | os.PathLike, config: Any, *, region_size: int, min_size: int = 256
) -> list[OverviewLevel]:
    """Create the overview levels of ``store`` (empty arrays), or grow their time axis to the
    store's; record them in the root ``multiscales`` attribute. ``config``: the ArchiveConfig.

    ``region_size``: side (px) of the regions the run writes (a tile, or an archive chunk);
    a level's chunks are ``region_size / factor`` where ``per_region`` says so (every region
    covers whole chunks of those levels), else the archive's chunk size.
    """
    import dataclasses

    import odc.geo.xr  # noqa: F401
    import zarr

    from .archive import _quiet_consolidation_warning, prepare_for_zarr

    store = str(store)
    base = xr.open_zarr(store, decode_coords="all", consolidated=False)
    factors = level_factors((base.sizes["y"], base.sizes["x"]), min_size)
    existing = {level.factor: level for level in overview_levels(store)}
    levels = []
    for factor in factors:
        path = f"{OVERVIEW_GROUP}/{factor}"
        template = _level_template(base, factor)
        shape = (template.sizes["y"], template.sizes["x"])
        levels.append(OverviewLevel(factor, path, shape))
        if factor in existing:
            have = xr.open_zarr(store, group=path, consolidated=False).sizes["time"]
            if have < base.sizes["time"]:
                extra = template.isel(time=slice(have, None))
                with _quiet_consolidation_warning():
                    extra.to_zarr(store, group=path, append_dim="time", compute=False,
                                  zarr_format=config.zarr_format, consolidated=False)  # fmt: skip
            continue
        chunk = region_size // factor if per_region(region_size, factor) else config.chunk_size
        level_config = dataclasses.replace(config, chunk_size=max(16, chunk), shard_size=None)
        prepared, encoding = prepare_for_zarr(template, level_config, rechunk_dask=False)
        prepared.attrs = {"overview_factor": factor, "reduction": _REDUCTION}
        with _quiet_consolidation_warning():
            prepared.to_zarr(store, group=path, mode="w", compute=False, encoding=encoding,
                             zarr_format=config.zarr_format, consolidated=False)  # fmt: skip
    record = [_multiscales(base, levels, region_size)]
    group = zarr.open_group(store, mode="r+", zarr_format=config.zarr_format)
    if group.attrs.get(MULTISCALES_ATTR) != record:  # a run with nothing to do writes nothing
        group.attrs[MULTISCALES_ATTR] = record
    return levels


_REDUCTION = "2x2 NaN-ignoring mean per level; no_valid_observation: 1 where all are 1"


def _multiscales(base: xr.Dataset, levels: list[OverviewLevel], region_size: int) -> dict:
    res = abs(float(base.x[1] - base.x[0])) if base.sizes["x"] > 1 else 0.0
    datasets = [
        {"path": ".", "factor": 1, "resolution": res, "shape": [base.sizes["y"], base.sizes["x"]]}
    ]
    for level in levels:
        datasets.append(
            {
                "path": level.path,
                "factor": level.factor,
                "resolution": res * level.factor,
                "shape": list(level.shape),
                "per_region": per_region(region_size, level.factor),
            }
        )
    return {
        "name": "phyvlm-cr overviews",
        "type": "reduce",
        "datasets": datasets,
        "metadata": {"method": _REDUCTION, "crs": str(base.rio.crs)},
    }


def write_region_overviews(
    store: str | os.PathLike,
    region: Mapping[str, slice],
    *,
    region_size: int,
    compute: bool = True,
) -> Any:
    """Reduce one written region of ``store`` into every per-region level.

    ``region`` holds y and x slices (and optionally time) aligned to ``region_size``. Returns
    the dask Delayed writes when ``compute`` is False (compute them on the run's client).
    """
    import dask

    store = str(store)
    levels = [lv for lv in overview_levels(store) if per_region(region_size, lv.factor)]
    if not levels:
        return [] if not compute else None
    base = xr.open_zarr(store, consolidated=False)
    window = {d: region[d] for d in ("time", "y", "x") if d in region}
    part = base[_spatial_vars(base)].isel(window).drop_vars(list(base.coords), errors="ignore")
    writes = []
    previous, previous_factor = part, 1
    for level in levels:
        step = level.factor // previous_factor
        coarse = _reduce(previous, step)
        y0, x0 = region["y"].start // level.factor, region["x"].start // level.factor
        target = {
            "y": slice(y0, y0 + coarse.sizes["y"]),
            "x": slice(x0, x0 + coarse.sizes["x"]),
        }
        if "time" in window:
            target["time"] = window["time"]
        else:
            target["time"] = slice(0, coarse.sizes["time"])
        chunk = region_size // level.factor
        coarse = coarse.chunk({"time": 1, "y": chunk, "x": chunk})
        for var in coarse.data_vars.values():
            var.encoding, var.attrs = {}, {}
        writes.append(
            coarse.to_zarr(
                store, group=level.path, region=target, compute=False, consolidated=False
            )
        )
        previous, previous_factor = coarse, level.factor
    if compute:
        dask.compute(*writes)
        return None
    return writes


def finish_overviews(
    store: str | os.PathLike, config: Any, *, region_size: int
) -> list[OverviewLevel]:
    """Build the levels coarser than the per-region ones from the finest per-region level (or
    from the full resolution when there is none), then consolidate the store's metadata."""
    import zarr

    from .archive import _quiet_consolidation_warning

    store = str(store)
    levels = overview_levels(store)
    source_path, source_factor = ".", 1
    for level in levels:
        if per_region(region_size, level.factor):
            source_path, source_factor = level.path, level.factor
            continue
        group = None if source_path == "." else source_path
        source = xr.open_zarr(store, group=group, consolidated=False)
        source = source[_spatial_vars(source)].drop_vars(list(source.coords), errors="ignore")
        coarse = _reduce(source, level.factor // source_factor)
        chunk = zarr.open_group(store, mode="r", use_consolidated=False)[
            f"{level.path}/{_spatial_vars(source)[0]}"
        ].chunks  # type: ignore[union-attr]
        coarse = coarse.chunk({"time": 1, "y": chunk[-2], "x": chunk[-1]})
        for var in coarse.data_vars.values():
            var.encoding, var.attrs = {}, {}
        coarse.to_zarr(store, group=level.path, mode="r+", consolidated=False)
        source_path, source_factor = level.path, level.factor
    with _quiet_consolidation_warning():
        zarr.consolidate_metadata(store, zarr_format=config.zarr_format)
    return levels


def build_overviews(
    store: str | os.PathLike, config: Any, *, region_size: int | None = None, min_size: int = 256
) -> list[OverviewLevel]:
    """All levels of a written store, region by region (a ``write_archive`` store, or a
    rebuild)."""
    import itertools

    store = str(store)
    size = region_size or config.write_unit
    levels = ensure_overview_arrays(store, config, region_size=size, min_size=min_size)
    base = xr.open_zarr(store, consolidated=False)
    ny, nx = base.sizes["y"], base.sizes["x"]
    for y0, x0 in itertools.product(range(0, ny, size), range(0, nx, size)):
        region = {"y": slice(y0, min(y0 + size, ny)), "x": slice(x0, min(x0 + size, nx))}
        write_region_overviews(store, region, region_size=size)
    finish_overviews(store, config, region_size=size)
    return levels


def open_overview(store: str | os.PathLike, max_size: int = 1024) -> xr.Dataset:
    """The finest level of ``store`` whose larger side is at most ``max_size`` px (the full
    resolution when it fits, the coarsest level when none does), lazily, CRS decoded."""
    store = str(store)
    base = xr.open_zarr(store, decode_coords="all")
    if max(base.sizes["y"], base.sizes["x"]) <= max_size:
        return base
    levels = overview_levels(store)
    if not levels:
        raise ValueError(
            f"{store} has no overviews and is larger than {max_size} px; fix: build them with "
            "pipeline.overviews.build_overviews(store, ArchiveConfig(...)) or rerun the run"
        )
    fitting = [lv for lv in levels if max(lv.shape) <= max_size] or [levels[-1]]
    ds = xr.open_zarr(store, group=fitting[0].path, decode_coords="all")
    ds.attrs = {**base.attrs, "overview_factor": fitting[0].factor}
    return ds
