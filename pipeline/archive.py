"""Cloud-free Zarr archives: template, chunk-aligned region writes, CRS, provenance, resume.

The parts every store shares: the encoding and CRS (``prepare_for_zarr``), the refusal to
overwrite (``check_destination``), chunk-aligned regions (``regions``, ``window_regions``)
and how their writes reach a store (``write_regions``: no two writers ever touch one chunk).

``write_archive`` writes a dataset the caller already has (a notebook's ``restore`` output)
into one store: the template (all metadata, coordinates, empty arrays) first, then region by
region, each region recorded in the store's attributes as it lands; a rerun with
``mode="resume"`` skips them, and a store is marked complete only when every region is in.
A run (``flows``) writes through ``pipeline.tiled_archive`` instead: a template for its whole
grid, tiles recorded as done per time step (the one tile of a small area, region by region).

Readers: ``xarray.open_zarr(store, decode_coords="all")`` gets the CRS back because every
data variable keeps ``grid_mapping`` pointing at ``spatial_ref``. Zarr format 3 is the
default; GDAL older than 3.13 (QGIS) needs ``zarr_format=2``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

log = logging.getLogger(__name__)

WriteMode = Literal["create", "resume", "overwrite"]
DONE_ATTR = "phyvlm_cr_regions_done"
COMPLETE_ATTR = "phyvlm_cr_complete"
SPATIAL_REF = "spatial_ref"


class ArchiveExistsError(FileExistsError):
    """The output store exists and the caller asked neither to resume nor to overwrite."""


class ArchiveMismatchError(ValueError):
    """A store to resume was written for a different grid, time axis or set of variables."""


@dataclass(frozen=True)
class ArchiveConfig:
    """zarr_format: 3 (default) or 2 for GDAL < 3.13 / QGIS.
    chunk_size: spatial chunk in pixels (time is chunked one date per chunk).
    clevel: Blosc zstd level; bitshuffle suits float32 reflectance.
    mode: "create" refuses an existing store; "resume" continues it; "overwrite" replaces it.
    """

    zarr_format: Literal[2, 3] = 3
    chunk_size: int = 1024
    clevel: int = 3
    mode: WriteMode = "create"
    #: Zarr 3 sharding: one object holds a (shard_size / chunk_size)^2 block of chunks (per
    #: variable and date), so a continent is thousands of objects, not millions. None: one
    #: object per chunk. A multiple of chunk_size; region writes align to it.
    shard_size: int | None = None

    @property
    def write_unit(self) -> int:
        """Side (px) of the smallest independently writable block: a shard, else a chunk."""
        return self.shard_size or self.chunk_size

    def __post_init__(self) -> None:
        if self.zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, not {self.zarr_format}")
        if self.mode not in ("create", "resume", "overwrite"):
            raise ValueError(f"mode must be create, resume or overwrite, not {self.mode!r}")
        if self.chunk_size < 16:
            raise ValueError(f"chunk_size {self.chunk_size} is too small: use 256..4096")
        if self.shard_size is not None:
            if self.zarr_format != 3:
                raise ValueError("sharding needs zarr_format 3; drop --shard-size for format 2")
            if self.shard_size < self.chunk_size or self.shard_size % self.chunk_size:
                raise ValueError(
                    f"shard_size {self.shard_size} must be a multiple of chunk_size "
                    f"{self.chunk_size} (e.g. {4 * self.chunk_size})"
                )


def _compressor(config: ArchiveConfig) -> Any:
    if config.zarr_format == 3:
        from zarr.codecs import BloscCodec

        return BloscCodec(cname="zstd", clevel=config.clevel, shuffle="bitshuffle")
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=config.clevel, shuffle=numcodecs.Blosc.BITSHUFFLE)


def _spatial_dims(ds: xr.Dataset) -> tuple[str, str]:
    if "y" in ds.dims and "x" in ds.dims:
        return "y", "x"
    if "latitude" in ds.dims and "longitude" in ds.dims:
        return "latitude", "longitude"
    raise ValueError(f"dataset has no y/x dims (dims: {dict(ds.sizes)}): is it a datacube?")


def _chunk_sizes(
    ds: xr.Dataset, var: xr.DataArray, config: ArchiveConfig, side: int | None = None
) -> tuple[int, ...]:
    """Chunk shape of ``var`` (or shard shape with ``side=config.shard_size``: whole chunks)."""
    ydim, xdim = _spatial_dims(ds)
    chunk = config.chunk_size
    sizes = []
    for dim in var.dims:
        if dim in (ydim, xdim):
            n = ds.sizes[dim]
            sizes.append(min(side, -(-n // chunk) * chunk) if side else min(chunk, n))
        elif dim == "time":
            sizes.append(1)
        else:
            sizes.append(ds.sizes[dim])
    return tuple(sizes)


def prepare_for_zarr(
    ds: xr.Dataset, config: ArchiveConfig, *, rechunk_dask: bool = True
) -> tuple[xr.Dataset, dict]:
    """Attach the CRS, align dask chunks to archive chunks and build the encoding.

    ``rechunk_dask=False`` leaves dask chunks alone: a template that is never computed (a
    tiled run's whole grid) would otherwise build a task per archive chunk for nothing.
    """
    ydim, xdim = _spatial_dims(ds)
    ds = ds.copy()
    crs = _dataset_crs(ds)
    if crs is not None:
        ds = ds.rio.write_crs(crs, grid_mapping_name=SPATIAL_REF)
    compressor = _compressor(config)
    encoding: dict[str, dict[str, Any]] = {}
    rechunk: dict[str, int] = {}
    for name, var in ds.data_vars.items():
        chunks = _chunk_sizes(ds, var, config)
        enc: dict[str, Any] = {"chunks": chunks, "compressors": (compressor,)}
        if config.shard_size and {ydim, xdim} <= set(var.dims):
            enc["shards"] = _chunk_sizes(ds, var, config, side=config.shard_size)
        if np.issubdtype(var.dtype, np.floating):
            enc["_FillValue"] = np.nan
        if crs is not None and ydim in var.dims and xdim in var.dims:
            var.attrs.pop("grid_mapping", None)
            enc["grid_mapping"] = (
                SPATIAL_REF  # keeps the CRS through open_zarr(decode_coords="all")
            )
        var.encoding = {}
        encoding[str(name)] = enc
        if var.chunks is not None:
            for dim in (ydim, xdim):
                rechunk[dim] = min(config.write_unit, ds.sizes[dim])
    if rechunk and rechunk_dask:
        # Dask chunks must cover whole archive chunks (shards) or parallel writes would race.
        ds = ds.chunk(rechunk)
    for name in ds.coords:
        ds[name].encoding = {}
        if ds[name].dtype.kind == "U":
            # Fixed-width unicode has no Zarr v3 spec; variable-length strings do.
            ds[name] = ds[name].astype(object)
    return ds, encoding


def _dataset_crs(ds: xr.Dataset) -> Any:
    try:
        crs = ds.rio.crs
    except Exception:  # noqa: BLE001 - rioxarray raises several types for a missing CRS
        crs = None
    if crs is None and hasattr(ds, "odc"):
        try:
            odc_crs = ds.odc.crs
            crs = None if odc_crs is None else str(odc_crs)
        except Exception:  # noqa: BLE001
            crs = None
    return crs


def _json_safe(value: Any) -> Any:
    """Attributes must be JSON: tuples to lists, numpy scalars to Python, dicts to strings."""
    if isinstance(value, Mapping):
        return json.dumps(value, default=str, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _store_exists(store: str | os.PathLike) -> bool:
    path = str(store)
    if "://" in path and not path.startswith("file://"):
        import fsspec

        fs, root = fsspec.core.url_to_fs(path)
        return bool(fs.exists(root))
    return Path(path.removeprefix("file://")).exists()


def regions(ds: xr.Dataset, config: ArchiveConfig) -> Iterator[dict[str, slice]]:
    """Chunk-aligned spatial regions (one archive chunk, or shard, each), row-major."""
    ydim, xdim = _spatial_dims(ds)
    window = {ydim: slice(0, ds.sizes[ydim]), xdim: slice(0, ds.sizes[xdim])}
    yield from window_regions(window, config.write_unit)


def window_regions(window: Mapping[str, slice], step: int) -> Iterator[dict[str, slice]]:
    """``window`` (y and x slices, in that order) cut into ``step``-px regions, row-major;
    the last row and column stop at the window's edge."""
    (ydim, ys), (xdim, xs) = window.items()
    for y0, x0 in itertools.product(range(ys.start, ys.stop, step), range(xs.start, xs.stop, step)):
        yield {ydim: slice(y0, min(y0 + step, ys.stop)), xdim: slice(x0, min(x0 + step, xs.stop))}


def region_key(region: Mapping[str, slice]) -> str:
    return "_".join(f"{dim}{sl.start}" for dim, sl in region.items())


def _check_resumable(store: str, ds: xr.Dataset) -> list[str]:
    existing = xr.open_zarr(store, decode_coords="all", consolidated=False)
    problems = []
    if set(existing.data_vars) != set(ds.data_vars):
        problems.append(
            f"variables {sorted(map(str, existing.data_vars))} vs {sorted(map(str, ds.data_vars))}"
        )
    for dim in ds.dims:
        if existing.sizes.get(dim) != ds.sizes[dim]:
            problems.append(f"dim {dim}: {existing.sizes.get(dim)} vs {ds.sizes[dim]}")
        elif dim in ds.coords and not np.array_equal(existing[dim].values, ds[dim].values):
            problems.append(f"coordinate {dim} differs")
    if problems:
        raise ArchiveMismatchError(
            f"cannot resume {store}: it was written for another run ({'; '.join(problems)}). "
            "Run with the same area, dates and bands as the original run, or write a new store "
            "(or --overwrite to replace it)."
        )
    # Progress lives in the root attributes, which consolidated metadata may hold stale.
    return list(existing.attrs.get(DONE_ATTR, []))


def check_destination(store: str | os.PathLike, config: ArchiveConfig) -> bool:
    """Fail early (before any compute) when ``store`` exists and mode is "create".

    Returns whether the store exists. Nothing is written or deleted here.
    """
    exists = _store_exists(store)
    if exists and config.mode == "create":
        raise ArchiveExistsError(
            f"output store {store} already exists. Choose a new path, pass --resume to finish "
            "an interrupted run into it, or --overwrite to replace it."
        )
    return exists


def write_archive(
    ds: xr.Dataset,
    store: str | os.PathLike,
    config: ArchiveConfig | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
    progress: bool | Callable[[int, int], None] = True,
    client: Any = None,
) -> dict[str, Any]:
    """Write ``ds`` (numpy or dask backed) into a Zarr store; return a summary.

    Existing store: mode "create" raises ArchiveExistsError and touches nothing; "resume"
    checks the store matches and writes only the regions not yet recorded; "overwrite"
    replaces it. With ``client`` every region is submitted at once (neighbouring regions
    share their input chunks) and recorded in the store as it lands; without one, regions
    are computed in batches on the current dask scheduler, each batch recorded when done.
    """
    config = config or ArchiveConfig()
    store = str(store)
    exists = check_destination(store, config)
    done: set[str] = set()
    prepared, encoding = prepare_for_zarr(ds, config)
    all_attrs = {k: _json_safe(v) for k, v in {**ds.attrs, **(attrs or {})}.items()}
    prepared.attrs = {**all_attrs, DONE_ATTR: [], COMPLETE_ATTR: False}
    # Consolidated metadata (both formats): one read opens the store, on object storage too.
    consolidated = True
    if exists and config.mode == "resume":
        done = set(_check_resumable(store, prepared))
        log.info("resuming %s: %d region(s) already written", store, len(done))
    else:
        with _quiet_consolidation_warning():
            prepared.to_zarr(
                store,
                mode="w",
                compute=False,
                encoding=encoding,
                zarr_format=config.zarr_format,
                consolidated=consolidated,
            )
        log.info("wrote template of %s (zarr format %d)", store, config.zarr_format)

    todo = [r for r in regions(prepared, config) if region_key(r) not in done]
    total = len(todo) + len(done)
    ydim, xdim = _spatial_dims(prepared)
    spatial_vars = [n for n, v in prepared.data_vars.items() if ydim in v.dims and xdim in v.dims]
    other_vars = [n for n in prepared.data_vars if n not in spatial_vars]
    bar = _progress_bar(progress, total, initial=len(done))

    def region_write(region: dict[str, slice]) -> Any:
        part = prepared[spatial_vars].isel(region)
        # A region write may only hold variables that have the region's dims.
        part = part.drop_vars([c for c in part.coords if not {ydim, xdim} & set(part[c].dims)])
        return part.to_zarr(
            store, region=region, compute=False, zarr_format=config.zarr_format, consolidated=False
        )

    def finished(keys: list[str]) -> None:
        done.update(keys)
        _record(store, {DONE_ATTR: sorted(done)}, config)
        if bar is not None:
            bar(len(keys))

    try:
        write_regions(todo, region_write, finished, client=client)
        if other_vars:
            # Per-date scene parameters and the like: small, written once at the end.
            prepared[other_vars].to_zarr(
                store, mode="r+", zarr_format=config.zarr_format, consolidated=False
            )
    finally:
        if bar is not None:
            bar(0, close=True)
    _record(store, {COMPLETE_ATTR: True}, config, consolidate=consolidated)
    summary = {"store": store, "regions_written": len(todo), "regions_skipped": total - len(todo)}
    log.info("archive complete: %s", summary)
    return summary


def write_regions(
    todo: list[dict[str, slice]],
    region_write: Callable[[dict[str, slice]], Any],
    finished: Callable[[list[str]], None],
    *,
    client: Any = None,
) -> None:
    """Compute the lazy writes ``region_write(region)`` of the regions in ``todo`` and call
    ``finished(keys)`` (``region_key``) as they land: the one way regions reach a store (a
    whole area's, ``write_archive``; a tile's, ``flows.tiled``). With ``client`` every region
    is submitted at once (``_write_all_at_once``); without one, regions are computed in
    batches on the current dask scheduler, each batch reported when done."""
    if client is not None:
        _write_all_at_once(client, todo, region_write, finished)
        return
    import dask

    for batch in _batches(todo, _parallel_regions()):
        dask.compute(*[region_write(r) for r in batch])
        finished([region_key(r) for r in batch])


def _parallel_regions() -> int:
    """Regions per batch on the local scheduler: enough to keep every core busy."""
    return max(2, 2 * (os.cpu_count() or 1))


def _batches(seq: list, size: int) -> Iterator[list]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _write_all_at_once(
    client: Any,
    todo: list[dict[str, slice]],
    region_write: Callable[[dict[str, slice]], Any],
    finished: Callable[[list[str]], None],
) -> None:
    """Submit every region's write in one go; record each region as it lands.

    One submission shares the input chunks between regions: a region's restore reads a halo
    from its neighbours' chunks, and regions computed in separate batches would each load
    (download, decode) those neighbours again, up to 9 times over. The scheduler runs the
    merged graph in dask's memory-friendly order and frees an input chunk once its last
    dependent region is done. A region is recorded (``DONE_ATTR``) when its write finishes,
    at most once a second (a batch of records per store update), so ``mode="resume"`` skips
    exactly the regions that reached the store; the first failed region cancels the rest.
    """
    from distributed import as_completed

    futures = client.compute([region_write(r) for r in todo])
    key_of = {f.key: region_key(r) for f, r in zip(futures, todo, strict=True)}
    pending: list[str] = []
    last = time.monotonic()
    try:
        for future in as_completed(futures):
            future.result()  # raises the region's error
            pending.append(key_of[future.key])
            if time.monotonic() - last >= 1.0:
                finished(pending)
                pending, last = [], time.monotonic()
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        if pending:
            finished(pending)


def _record(
    store: str, values: Mapping[str, Any], config: ArchiveConfig, consolidate: bool = False
) -> None:
    import zarr

    group = zarr.open_group(store, mode="r+", zarr_format=config.zarr_format)
    group.attrs.update(dict(values))
    if consolidate:
        with _quiet_consolidation_warning():
            zarr.consolidate_metadata(store, zarr_format=config.zarr_format)


@contextlib.contextmanager
def _quiet_consolidation_warning() -> Iterator[None]:
    """zarr warns that consolidated metadata is not in the v3 spec; xarray and zarr read it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


def _progress_bar(progress: bool | Callable[[int, int], None], total: int, initial: int = 0):
    """A callable ``advance(n, close=False)``: tqdm when progress is True, or the user's callback."""
    if progress is False or total == 0:
        return None
    if callable(progress):
        count = [initial]

        def advance(n: int, close: bool = False) -> None:
            count[0] += n
            if n:
                progress(count[0], total)

        return advance
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc="writing regions", unit="region")

    def advance_tqdm(n: int, close: bool = False) -> None:
        if n:
            bar.update(n)
        if close:
            bar.close()

    return advance_tqdm


def open_archive(store: str | os.PathLike, **kwargs: Any) -> xr.Dataset:
    """Open an archive the way analysts should: lazily, with the CRS decoded."""
    ds = xr.open_zarr(str(store), decode_coords="all", **kwargs)
    if not ds.attrs.get(COMPLETE_ATTR, False):
        log.warning("%s is incomplete (an interrupted run): rerun with --resume", store)
    return ds
