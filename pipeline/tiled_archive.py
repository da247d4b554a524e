"""The stores runs write: one Zarr store for an area of any size, written tile by tile.

Every run (``flows.tiled.run_area``) writes one of these. The template covers the whole grid
and is written once; each tile then lands in its own chunk-aligned regions. Which tiles are
finished is recorded per time step in the ``tile_done`` variable (dims time, tile_row,
tile_col; 1 = written), so:

* a rerun with mode "resume" skips finished tiles (and the record is data, not one growing
  attribute: a continent of 10 000 tiles costs one small chunk per time step);
* appending a period (composites on a schedule) adds time steps, and with them fresh
  ``tile_done`` chunks, without touching any chunk of an earlier period;
* ``xarray.open_zarr`` shows analysts which tiles a store holds.

A run of one tile (an area that fits one tile, on its own grid) also records its regions as
they land (``record_regions_done``), so a resumed run skips the regions already written.

The run that made the store leaves its fingerprint (a hash of the grid, bands, search and
prior) in ``FINGERPRINT_ATTR``; resuming or appending with another configuration is refused.
Encoding, CRS and attribute handling are ``pipeline.archive``'s, as for ``write_archive``
(a dataset the caller already has, written in one piece).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .archive import (
    COMPLETE_ATTR,
    DONE_ATTR,
    ArchiveConfig,
    _json_safe,
    _quiet_consolidation_warning,
    _record,
    _spatial_dims,
    prepare_for_zarr,
)

log = logging.getLogger(__name__)

__all__ = [
    "FINGERPRINT_ATTR",
    "GRID_ATTR",
    "RUN_CONFIG_ATTR",
    "TILE_DONE_VAR",
    "append_time_steps",
    "mark_tile_done",
    "record_attrs",
    "record_regions_done",
    "region_sum",
    "regions_done",
    "store_record",
    "tile_write",
    "tiles_done",
    "write_tiled_template",
    "write_time_steps",
]

TILE_DONE_VAR = "tile_done"
FINGERPRINT_ATTR = "phyvlm_cr_run_fingerprint"
RUN_CONFIG_ATTR = "phyvlm_cr_run_config"
GRID_ATTR = "phyvlm_cr_grid"


def _tile_done_array(ntime: int, tile_grid: tuple[int, int]) -> xr.DataArray:
    return xr.DataArray(
        np.zeros((ntime, *tile_grid), dtype=np.uint8),
        dims=("time", "tile_row", "tile_col"),
        attrs={"long_name": "1 where the tile (row, col of the run's tile grid) is written"},
    )


def _tiled_encoding(template: xr.Dataset, config: ArchiveConfig) -> tuple[xr.Dataset, dict]:
    prepared, encoding = prepare_for_zarr(template, config, rechunk_dask=False)
    # One chunk per time step over the whole tile grid: small, and written by the driver only.
    encoding[TILE_DONE_VAR] = {
        **encoding.get(TILE_DONE_VAR, {}),
        "chunks": (1, *prepared[TILE_DONE_VAR].shape[1:]),
    }
    return prepared, encoding


def write_tiled_template(
    template: xr.Dataset,
    store: str | os.PathLike,
    config: ArchiveConfig,
    *,
    tile_grid: tuple[int, int],
    attrs: Mapping[str, Any],
) -> None:
    """Write the metadata, coordinates and empty arrays of a tiled store (no data).

    ``template``: every output variable over the whole grid, dask-backed (never computed:
    one dask chunk per variable is enough), with ``time``/``y``/``x`` coordinates and a CRS.
    Replaces an existing store (the caller decided that with ``check_destination``).
    """
    template = template.assign({TILE_DONE_VAR: _tile_done_array(template.sizes["time"], tile_grid)})
    prepared, encoding = _tiled_encoding(template, config)
    prepared.attrs = {
        **{k: _json_safe(v) for k, v in {**template.attrs, **attrs}.items()},
        DONE_ATTR: [],
        COMPLETE_ATTR: False,
    }
    with _quiet_consolidation_warning():
        prepared.to_zarr(
            str(store),
            mode="w",
            compute=False,
            encoding=encoding,
            zarr_format=config.zarr_format,
            consolidated=True,
        )
    log.info(
        "wrote tiled template of %s: %s px, %d time step(s)",
        store,
        dict(template.sizes),
        template.sizes["time"],
    )


def append_time_steps(
    template: xr.Dataset,
    store: str | os.PathLike,
    config: ArchiveConfig,
    *,
    tile_grid: tuple[int, int],
) -> None:
    """Grow the time axis of a tiled store by ``template``'s time steps (no data written).

    Earlier time steps keep every chunk as it is: time is chunked one step per chunk, so the
    new steps only add chunks.
    """
    import zarr

    template = template.assign({TILE_DONE_VAR: _tile_done_array(template.sizes["time"], tile_grid)})
    prepared, _ = _tiled_encoding(template, config)
    # xarray's append rewrites the root attributes with the appended dataset's: keep ours.
    prepared.attrs = {**zarr.open_group(str(store), mode="r").attrs, COMPLETE_ATTR: False}
    with _quiet_consolidation_warning():
        prepared.to_zarr(
            str(store),
            append_dim="time",
            compute=False,
            zarr_format=config.zarr_format,
            consolidated=True,
        )
    log.info("appended %d time step(s) to %s", template.sizes["time"], store)


def tile_write(
    part: xr.Dataset,
    store: str | os.PathLike,
    region: Mapping[str, slice],
    config: ArchiveConfig,
    *,
    extent: tuple[int, int] | None = None,
) -> Any:
    """A lazy write of one tile's output (time, y, x variables) into its region of the store.

    Returns the dask Delayed of the write; compute it (with anything it shares a graph with).
    Coordinates are in the template already and are not rewritten, so concurrent tiles never
    touch the same chunk of anything. ``extent``: the grid's (height, width); a region may end
    short of a whole chunk (shard) only there.
    """
    ydim, xdim = _spatial_dims(part)
    unit = config.write_unit  # a shard is written whole, by one task
    spatial = {ydim: unit, xdim: unit}
    for dim, end in zip((ydim, xdim), extent or (None, None), strict=True):
        sl = region[dim]
        if sl.start % unit or ((sl.stop - sl.start) % unit and sl.stop != end):
            raise ValueError(f"region {dict(region)} is not aligned to {unit}-px chunks (shards)")
    part = part.drop_vars(list(part.coords)).chunk({"time": 1, **spatial})
    for var in part.data_vars.values():
        var.encoding = {}
        var.attrs = {}
    return part.to_zarr(
        str(store),
        region=dict(region),
        compute=False,
        zarr_format=config.zarr_format,
        consolidated=False,
    )


def write_time_steps(
    store: str | os.PathLike,
    values: Mapping[str, np.ndarray],
    time: slice,
    config: ArchiveConfig,
) -> None:
    """Write small per-date variables (dims time, ...) at the time steps ``time`` (call from
    one process); a variable the store does not hold (made by an older version) is skipped."""
    import zarr

    group = zarr.open_group(str(store), mode="r+", zarr_format=config.zarr_format)
    for name, value in values.items():
        if name in group:
            group[name][time] = value  # type: ignore[index]


def mark_tile_done(
    store: str | os.PathLike, row: int, col: int, time: slice, config: ArchiveConfig
) -> None:
    """Record tile (row, col) as written for the time steps ``time`` (call from one process)."""
    import zarr

    group = zarr.open_group(str(store), mode="r+", zarr_format=config.zarr_format)
    array = group[TILE_DONE_VAR]
    array[time, row, col] = 1  # type: ignore[index]


def regions_done(store: str | os.PathLike) -> set[str]:
    """Keys of the regions recorded by ``record_regions_done`` (read fresh)."""
    import zarr

    keys = zarr.open_group(str(store), mode="r").attrs.get(DONE_ATTR) or []
    return {str(k) for k in keys}  # type: ignore[union-attr]


def record_regions_done(store: str | os.PathLike, keys: list[str], config: ArchiveConfig) -> None:
    """Record regions as written (``DONE_ATTR``; call from one thread): a run of one tile
    resumes region by region, as a run of many resumes tile by tile (``tile_done``)."""
    if keys:
        _record(str(store), {DONE_ATTR: sorted(regions_done(store) | set(keys))}, config)


def region_sum(store: str | os.PathLike, name: str, region: Mapping[str, slice]) -> int:
    """Sum of variable ``name`` over ``region`` (time, y, x slices) as it is in the store."""
    import zarr

    array = zarr.open_group(str(store), mode="r")[name]
    index = tuple(region[dim] for dim in ("time", "y", "x"))
    return int(np.asarray(array[index]).sum(dtype="int64"))  # type: ignore[index]


def tiles_done(store: str | os.PathLike, time: slice) -> np.ndarray:
    """(tile_row, tile_col) booleans: tiles written for every time step in ``time``."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    flags = np.asarray(group[TILE_DONE_VAR][time])  # type: ignore[index]
    if not flags.shape[0]:
        return np.zeros(flags.shape[1:], dtype=bool)
    return np.asarray(flags.astype(bool).all(axis=0))


def store_record(store: str | os.PathLike) -> tuple[dict[str, Any], pd.DatetimeIndex]:
    """Root attributes and time axis of an existing store (read fresh, not consolidated)."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    attrs = dict(group.attrs)
    times = xr.open_zarr(str(store), consolidated=False)["time"].values
    return attrs, pd.DatetimeIndex(times)


def record_attrs(
    store: str | os.PathLike, values: Mapping[str, Any], config: ArchiveConfig
) -> None:
    """Update root attributes (JSON-safe) and re-consolidate the metadata."""
    _record(str(store), {k: _json_safe(v) for k, v in values.items()}, config, consolidate=True)
