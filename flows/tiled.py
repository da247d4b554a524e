"""The run path: an area into one Zarr store, tile by tile, resumable, appendable.

``run_area(config)`` is every run (``flows.run.run`` adds the STAC description and the
object count). This module is the one place that decides how an area is cut, loaded,
restored, validated and written. Its steps:

1. **search** once for the whole area (unless the caller brings the items);
2. **plan** (``plan_run``): an area larger than one tile (or ``RunConfig.tiled``) is cut on
   the tile lattice (``pipeline.tiling.make_grid``) into the tiles that intersect it; an
   area that fits one tile is one tile on the area's own grid (the grid a one-piece load of
   the area has), and an exact ``geobox`` is one tile that is that GeoBox;
3. **time axis** shared by every tile: the union of the items' solar days (``dates``), or
   the periods (``composite``): every period of the search interval on the lattice, the
   periods holding a date on the area's own grid (as ``pipeline.composite`` labels them);
4. **store**: write the template for the whole grid once; or, resuming, check the store was
   made by the same configuration and append the time steps of new periods;
5. **tiles**: per tile, load the tile's items onto the tile's GeoBox (odc-stac reprojects
   items of any UTM zone onto the one grid), restore, fit to the shared time axis and write
   into the tile's chunk-aligned regions; record the tile as done. A few tiles are in flight
   at once; a failed tile is retried, then reported, and never stops the others;
6. **summary**: tiles done / skipped / failed (a run of one tile on its own grid: regions
   written / skipped), pixels without a valid observation, read failures per tile.

Decisions worth knowing:

- One search for the whole area, kept in this (client) process: tiles pick their items from
  a spatial index. That gives every tile the same time axis in ``dates`` mode and costs one
  catalog query instead of one per tile. The price is memory on the client: about 20-40 KB
  per item (a continental year, ~100 000 items, needs a few GB); task graphs never hold the
  item list, only each tile's own items.
- Seamless tiles. Each tile is read with a halo (``flows.steps.restore_halo``: every window
  of the prior and the fusion, the depth by which ``restore`` overlaps its own chunks),
  clipped to the grid, restored on that padded grid and cropped to its own pixels; and every
  tile restores with one scene state (airlight, gamma, clear-sky line, the stack evidence's
  dark-object excess, pair gain/offset, each date's clearness) estimated once for the whole
  run area from the COGs' overviews (``flows.steps.scene_state_step``). A tiled run then
  equals the area restored as one grid, seams included. The halo costs
  (1 + 2 halo / tile_size)^2 - 1 more reads and compute (about 7 % for 2048 px tiles).
  The per-date ``gamma``/``airlight`` of that scene state are written once per run (``dates``
  mode; NaN where the tiles estimate their own).
- A tile is written region by region (archive chunks, or shards), all its regions computed
  together so they share their input chunks. A run of one tile on its own grid records each
  region as it lands and a resumed run skips them; a run of many tiles records whole tiles.
- ``dates`` mode: the time axis is every solar day with an acquisition anywhere in the area;
  a tile with no acquisition that day holds NaN and ``no_valid_observation`` = 1.
- ``composite`` mode on the lattice: one step per period overlapping the search interval
  (``period`` None: one step for the whole interval), labelled by the period start; empty
  periods are NaN with ``no_valid_observation`` = 1. With a period, a later run with the
  next interval and ``--resume`` appends its periods; rerunning a period that is complete
  changes nothing.
- Peak memory per worker depends on the chunk size, the number of dates and the tiles in
  flight, never on the area: each tile is its own small graph.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from pipeline.archive import (
    ArchiveMismatchError,
    check_destination,
    region_key,
    window_regions,
    write_regions,
)
from pipeline.catalog import search
from pipeline.cluster import dask_client
from pipeline.compositing import composite, composite_periods, period_labels
from pipeline.restore import scene_variables
from pipeline.tiled_archive import (
    COMPLETE_ATTR,
    FINGERPRINT_ATTR,
    GRID_ATTR,
    RUN_CONFIG_ATTR,
    append_time_steps,
    mark_tile_done,
    record_attrs,
    record_regions_done,
    region_sum,
    regions_done,
    store_record,
    tile_write,
    tiles_done,
    write_tiled_template,
    write_time_steps,
)
from pipeline.tiling import (
    GridSpec,
    ItemIndex,
    Tile,
    area_geometry,
    dates_axis,
    item_hrefs,
    make_grid,
    period_axis,
)
from pipeline.validation import VALIDATION_ATTR

from .config import RunConfig, RunSummary, TileSummary
from .steps import (
    UNCALIBRATED_ERROR_ATTRS,
    error_layer_step,
    fusion_of,
    load_step,
    prior_of,
    provenance,
    restore_halo,
    restore_step,
    scene_sample_step,
    scene_state_step,
    validation_step,
    wants_error_layer,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class TilePlan:
    """What a run writes: grid, tiles in the area, this run's time steps.

    ``own_grid``: one tile on the area's own grid (or the caller's GeoBox), not the tile
    lattice: written and resumed region by region, summarised by regions.
    """

    grid: GridSpec
    tiles: tuple[Tile, ...]
    axis: pd.DatetimeIndex  # this run's time steps (dates, or period starts)
    edges: pd.DatetimeIndex | None  # composite on the lattice: period edges (len(axis) + 1)
    own_grid: bool = False

    def region_size(self, archive: Any) -> int:
        """Side (px) of the blocks overviews are made from as they land: a lattice tile, or
        an archive chunk (shard) of the area's own grid."""
        return archive.write_unit if self.own_grid else self.grid.tile_size


def plan_run(
    config: RunConfig, items: Sequence[Any], geobox: Any = None
) -> tuple[GridSpec, list[Tile], bool]:
    """Step 2, how the area is cut: (grid, tiles, own_grid).

    ``geobox`` given: one tile that is exactly that GeoBox. Else an area that fits one tile
    (``RunConfig.use_tiles``) is one tile on its own grid: the grid a one-piece load of the
    area gets (the search area in ``cube.crs``, else the items' most common CRS, at
    ``cube.resolution``). Else the lattice tiles of ``plan_grid``.
    """
    if geobox is None and config.use_tiles():
        grid, tiles = plan_grid(config)
        return grid, tiles, False
    if geobox is None:
        geobox = load_step(list(items), config).odc.geobox  # lazy: nothing is read
    grid = GridSpec.from_geobox(geobox, chunk_size=config.archive.chunk_size)
    log.info("one tile on the area's own grid: %d x %d px in %s", *grid.shape, grid.crs)
    return grid, [grid.tile(0, 0)], True


def plan_grid(config: RunConfig) -> tuple[GridSpec, list[Tile]]:
    """Step 1: the grid of the search area and the tiles that intersect it."""
    s = config.search
    area = area_geometry(s.bbox, s.intersects)
    grid = make_grid(
        area,
        config.grid_tiling(),
        resolution=config.cube.resolution,
        chunk_size=config.archive.chunk_size,
    )
    tiles = grid.tiles_in(area)
    log.info(
        "grid %s at %g m: %d x %d tiles of %d px, %d intersect the area",
        grid.crs,
        grid.resolution,
        grid.rows,
        grid.cols,
        grid.tile_size,
        len(tiles),
    )
    return grid, tiles


def time_axis(
    config: RunConfig, items: Sequence[Any], *, own_grid: bool = False
) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex | None]:
    """Step 3: the time steps this run writes, shared by every tile (composites on the own
    grid: the periods holding a date, as ``composite`` labels them; no edges)."""
    if config.mode == "dates":
        return dates_axis(items).as_unit("ns"), None
    if own_grid:
        return period_labels(dates_axis(items), config.period).as_unit("ns"), None
    labels, edges = period_axis(config.search.interval, config.period)
    return labels.as_unit("ns"), edges.as_unit("ns")


# --------------------------------------------------------------------------- fingerprint


def run_fingerprint(config: RunConfig, grid: GridSpec) -> tuple[str, dict[str, Any]]:
    """A hash of everything that makes two runs write the same store, and its parts.

    The search interval is left out for periodic composites: each scheduled run brings a new
    interval and appends its periods to the same store.
    """
    s = config.search
    search_part = {
        "catalog": s.catalog,
        "collection": s.collection,
        "bbox": list(s.bbox) if s.bbox else None,
        "intersects": s.intersects,
        "max_cloud_cover": s.max_cloud_cover,
        "mgrs_tile": s.tile,
        "max_items": s.max_items,
    }
    if not (config.mode == "composite" and config.period):
        search_part["datetime"] = s.datetime
    parts = {
        "grid": json.loads(grid.to_json()),
        "search": search_part,
        "bands": list(config.cube.bands),
        "include_scl": config.cube.include_scl,
        "prior": config.prior,
        "prior_options": dict(config.prior_options),
        "mode": config.mode,
        "period": config.period,
        "zarr_format": config.archive.zarr_format,
        "chunk_size": config.archive.chunk_size,
    }
    if not config.tiling.seamless:  # other values at tile edges: not the same store
        parts["seamless"] = False
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], json.loads(text)


def _describe_mismatch(stored: dict[str, Any], ours: dict[str, Any]) -> str:
    keys = sorted(set(stored) | set(ours))
    diffs = [k for k in keys if stored.get(k) != ours.get(k)]
    return ", ".join(diffs) or "unknown fields"


# --------------------------------------------------------------------------- output schema


@dataclass(frozen=True)
class OutputSchema:
    """Names, dtypes and attributes of the variables a tile writes, and run-level attrs.

    Made from the configuration (``output_schema``) with the functions that name the
    variables ``pipeline.restore`` and ``pipeline.composite`` return, so it matches them
    layer for layer without restoring anything in this process.
    """

    variables: dict[str, tuple[np.dtype, dict[str, Any]]]
    attrs: dict[str, Any]
    #: per-date scene parameters (``pipeline.restore.SCENE_VARIABLES``: name -> dims, attrs),
    #: written once from the run's scene state; ``bands`` labels their ``band`` dim
    per_date: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = dataclasses.field(
        default_factory=dict
    )
    bands: tuple[str, ...] = ()

    def fill(self, name: str) -> Any:
        """Value of a pixel nothing was observed for."""
        dtype = self.variables[name][0]
        if name == "no_valid_observation":
            return 1
        return np.nan if np.issubdtype(dtype, np.floating) else 0

    def empty(
        self, shape: tuple[int, int, int], chunks: tuple[int, int, int]
    ) -> dict[str, da.Array]:
        return {
            name: da.full(shape, self.fill(name), dtype=dtype, chunks=chunks)
            for name, (dtype, _) in self.variables.items()
        }


def output_schema(config: RunConfig) -> OutputSchema:
    """The output's structure from the configuration: the bands, the quality layers and the
    prior's own layers (``pipeline.restore.output_variables``), or the composite's layers
    (``pipeline.compositing.composite_variables``), and the error layer of a run that
    validates itself. Only the prior's description is built here: no model is loaded."""
    from pipeline.compositing import composite_variables
    from pipeline.restore import SCENE_VARIABLES, output_variables
    from pipeline.validation import ERROR_LAYER

    prior = prior_of(config)
    bands = tuple(config.cube.bands)
    per_date = {}
    if config.mode == "composite":
        variables = composite_variables(bands)
    else:
        variables = output_variables(bands, prior)
        if wants_error_layer(config):
            variables[ERROR_LAYER] = (np.dtype(np.float32), dict(UNCALIBRATED_ERROR_ATTRS))
        per_date = {
            name: (dims, {"long_name": desc}) for name, (dims, desc) in SCENE_VARIABLES.items()
        }
    attrs = {
        "prior": prior.name,
        "prior_params": json.dumps(prior.params(), sort_keys=True),
        "fusion_params": json.dumps(fusion_of(config).params(), sort_keys=True),
    }
    return OutputSchema(variables, attrs, per_date, bands)


# --------------------------------------------------------------------------- one tile


def _fit_to_axis(
    restored: xr.Dataset, plan: TilePlan, schema: OutputSchema, config: RunConfig
) -> xr.Dataset:
    """A restored tile on the run's time axis (dates: reindex; composite: per period)."""
    names = list(schema.variables)
    fills = {n: schema.fill(n) for n in names}
    if config.mode == "dates":
        return restored[names].reindex(time=plan.axis, fill_value=fills)
    periods: xr.Dataset | None
    if plan.edges is None:  # the own grid: the periods holding a date, as composite labels them
        periods = composite(restored, period=config.period)
    else:
        periods = composite_periods(restored, plan.axis, plan.edges)
    if periods is None:
        return _empty_tile(plan, schema, (restored.sizes["y"], restored.sizes["x"]))
    return periods[names].reindex(time=plan.axis, fill_value=fills)


def _empty_tile(plan: TilePlan, schema: OutputSchema, shape: tuple[int, int]) -> xr.Dataset:
    """A tile no item touches: NaN, no_valid_observation = 1, counts 0."""
    arrays = schema.empty((len(plan.axis), *shape), (1, *shape))
    return xr.Dataset(
        {n: (("time", "y", "x"), a) for n, a in arrays.items()}, coords={"time": plan.axis}
    )


@dataclass
class TileResult:
    key: str
    ok: bool
    attempts: int
    no_valid_pixels: int = 0
    error: str = ""
    seconds: float = 0.0
    regions_written: int = 0
    regions_skipped: int = 0
    #: the last error (a run of one tile on its own grid raises it, as any failed call does)
    exception: Exception | None = dataclasses.field(default=None, repr=False)


class TileWorker:
    """Builds and computes one tile's graph: load -> restore -> fit to the axis -> write."""

    def __init__(
        self,
        config: RunConfig,
        plan: TilePlan,
        schema: OutputSchema,
        index: ItemIndex,
        time_slice: slice,
        client: Any,
    ) -> None:
        self.config = config
        self.plan = plan
        self.schema = schema
        self.index = index
        self.time_slice = time_slice
        self.client = client
        #: the run's self-validation (its error model calibrates each tile's error layer)
        self.validation: Any = None
        #: the run area's scene state (``scene_state_step``), shared by every tile; None:
        #: each tile estimates its own from its own sample (seams at tile edges)
        self.scene: Any = None
        #: pixels read around each tile (``restore_halo``; none without seamless tiles)
        self.halo = restore_halo(config) if config.tiling.seamless else 0

    def cube(self, tile: Tile, purpose: str = "") -> xr.Dataset | None:
        """The tile's input cube, lazy, one step per solar day (None: no item covers it).

        Reads are tagged with the tile's key (``purpose`` prefixed: the self-validation's
        reads are its own, so a failure there is never taken for the tile's)."""
        items = self.index.intersecting(tile)
        if not items:
            return None
        context = f"{purpose}:{tile.key}" if purpose else tile.key
        return load_step(items, self.config, geobox=tile.geobox, read_context=context)

    def output(self, tile: Tile) -> xr.Dataset:
        """The tile's output, lazy, on the run's time axis: read and restored with its halo,
        cropped to its own pixels."""
        grid = self.plan.grid
        padded = grid.padded(tile, self.halo)
        cube = self.cube(padded)
        ny, nx = tile.y.stop - tile.y.start, tile.x.stop - tile.x.start
        if cube is None:
            return _empty_tile(self.plan, self.schema, (ny, nx))
        config = dataclasses.replace(self.config, mode="dates", period=None)
        if self.scene is not None:
            restored = restore_step(
                cube,
                config,
                scene=self.scene,
                origin=(padded.y.start, padded.x.start),
                grid_shape=grid.shape,
            )
        else:
            sample = scene_sample_step(
                self.index.intersecting(padded), self.config, cube, read_context=tile.key
            )
            restored = restore_step(cube, config, sample)
        dy, dx = tile.y.start - padded.y.start, tile.x.start - padded.x.start
        restored = restored.isel(y=slice(dy, dy + ny), x=slice(dx, dx + nx))
        if wants_error_layer(self.config):
            restored = error_layer_step(restored, self.validation)
        return _fit_to_axis(restored, self.plan, self.schema, self.config)

    def write(self, tile: Tile) -> tuple[int, int]:
        """Write the tile region by region (archive chunks, or shards), every region in one
        computation so they share their input chunks; (regions written, skipped).

        On the area's own grid each region is recorded as it lands and a resumed run skips
        the recorded ones (keys name the time steps, so an appended period starts afresh)."""
        config, ts = self.config, self.time_slice
        out = self.output(tile)
        prefix = f"t{ts.start}-{ts.stop}:"
        window = {"y": tile.y, "x": tile.x}
        regions = list(window_regions(window, config.archive.write_unit))
        done = regions_done(config.output) if self.plan.own_grid else set()
        todo = [r for r in regions if prefix + region_key(r) not in done]

        def region_write(region: dict[str, slice]) -> Any:
            local = {d: slice(r.start - window[d].start, r.stop - window[d].start)
                     for d, r in region.items()}  # fmt: skip
            return tile_write(
                out.isel(local), config.output, {"time": ts, **region}, config.archive,
                extent=self.plan.grid.shape,
            )  # fmt: skip

        def finished(keys: list[str]) -> None:
            if self.plan.own_grid:
                record_regions_done(config.output, [prefix + k for k in keys], config.archive)

        write_regions(todo, region_write, finished, client=self.client)
        return len(todo), len(regions) - len(todo)

    def write_overviews(self, tile: Tile) -> None:
        """The tile's overview blocks, from what landed in the store (one computation)."""
        from pipeline.overviews import write_region_overviews

        size = self.plan.region_size(self.config.archive)
        writes = [
            write
            for block in window_regions({"y": tile.y, "x": tile.x}, size)
            for write in write_region_overviews(
                self.config.output, {"time": self.time_slice, **block}, region_size=size,
                compute=False,
            )
        ]  # fmt: skip
        self._compute(*writes)

    def __call__(self, tile: Tile) -> TileResult:
        started = time.perf_counter()
        attempts = 1 + self.config.tiling.retries
        error, last = "", None
        for attempt in range(1, attempts + 1):
            try:
                written, skipped = self.write(tile)
                if self.config.overviews:
                    self.write_overviews(tile)
                region = {"time": self.time_slice, "y": tile.y, "x": tile.x}
                no_valid = region_sum(self.config.output, "no_valid_observation", region)
                return TileResult(
                    tile.key, True, attempt, no_valid, seconds=time.perf_counter() - started,
                    regions_written=written, regions_skipped=skipped,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - a tile's failure must not stop the others
                last = exc
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # one line
                log.warning(
                    "tile %s failed (attempt %d of %d): %s", tile.key, attempt, attempts, error
                )
                log.debug("tile %s traceback", tile.key, exc_info=True)
        return TileResult(
            tile.key, False, attempts, error=error, seconds=time.perf_counter() - started,
            exception=last,
        )  # fmt: skip

    def _compute(self, *values: Any) -> tuple:
        if self.client is not None:
            return tuple(self.client.compute(list(values), sync=True))
        return dask.compute(*values)


# --------------------------------------------------------------------------- store


@dataclass
class StoreState:
    """Where this run writes on the time axis, and which tiles are already there."""

    time_slice: slice
    done: np.ndarray  # (rows, cols) bool
    appended: int = 0
    created: bool = False


def _template(grid: GridSpec, axis: pd.DatetimeIndex, schema: OutputSchema) -> xr.Dataset:
    from odc.geo.xr import xr_coords

    shape = (len(axis), *grid.shape)
    data_vars = {
        name: xr.DataArray(
            da.empty(shape, dtype=dtype, chunks=shape), dims=("time", "y", "x"), attrs=attrs
        )
        for name, (dtype, attrs) in schema.variables.items()
    }
    coords: dict[Any, Any] = dict(xr_coords(grid.geobox, crs_coord_name="spatial_ref"))
    coords["time"] = axis
    sizes = {"time": len(axis), "band": len(schema.bands)}
    for name, (dims, attrs) in schema.per_date.items():  # NaN until the scene state lands
        dshape = tuple(sizes[d] for d in dims)
        data_vars[name] = xr.DataArray(
            da.full(dshape, np.nan, dtype=np.float32, chunks=dshape), dims=dims, attrs=attrs
        )
    if schema.per_date:
        coords["band"] = list(schema.bands)
    ds = xr.Dataset(data_vars, coords=coords)
    return ds.rio.write_crs(grid.crs, grid_mapping_name="spatial_ref")


def prepare_store(
    config: RunConfig, plan: TilePlan, schema: OutputSchema, attrs: dict[str, Any]
) -> StoreState:
    """Step 4: create the store, or check it and append this run's new time steps."""
    store, archive = config.output, config.archive
    grid = plan.grid
    fingerprint, parts = run_fingerprint(config, grid)
    exists = check_destination(store, archive)
    tile_grid = (grid.rows, grid.cols)
    run_attrs = {
        **attrs,
        FINGERPRINT_ATTR: fingerprint,
        RUN_CONFIG_ATTR: parts,
        GRID_ATTR: grid.to_json(),
    }
    if not exists or archive.mode == "overwrite":
        write_tiled_template(
            _template(grid, plan.axis, schema), store, archive, tile_grid=tile_grid, attrs=run_attrs
        )
        return StoreState(slice(0, len(plan.axis)), np.zeros(tile_grid, bool), created=True)

    stored_attrs, stored_times = store_record(store)
    if stored_attrs.get(FINGERPRINT_ATTR) != fingerprint:
        stored_parts = stored_attrs.get(RUN_CONFIG_ATTR) or {}
        if isinstance(stored_parts, str):
            stored_parts = json.loads(stored_parts)
        raise ArchiveMismatchError(
            f"cannot resume {store}: it was written by a run with a different configuration "
            f"(differs in: {_describe_mismatch(stored_parts, parts)}). Rerun with the original "
            "area, grid, bands, prior and mode, or write a new store (or --overwrite)."
        )
    first = stored_times.searchsorted(plan.axis[0])
    known = plan.axis[plan.axis.isin(stored_times)]
    new = plan.axis[~plan.axis.isin(stored_times)]
    if len(known) and not stored_times[first : first + len(known)].equals(known):
        raise ArchiveMismatchError(
            f"cannot resume {store}: its time axis does not hold this run's steps in order"
        )
    if len(new):
        if config.mode == "dates":
            raise ArchiveMismatchError(
                f"cannot resume {store}: the search now finds dates the store does not hold "
                f"({', '.join(str(t.date()) for t in new[:5])}); the catalog changed since the "
                "first run. Write a new store (or --overwrite)."
            )
        if len(stored_times) and new[0] <= stored_times[-1]:
            raise ArchiveMismatchError(
                f"cannot append {new[0].date()} to {store}: periods are appended in time order "
                f"and the store already ends at {stored_times[-1].date()}"
            )
        append_time_steps(_template(grid, new, schema), store, archive, tile_grid=tile_grid)
    start = int(first) if len(known) else len(stored_times)
    time_slice = slice(start, start + len(plan.axis))
    return StoreState(time_slice, tiles_done(store, time_slice), appended=len(new))


# --------------------------------------------------------------------------- the run


def _in_flight(config: RunConfig, client: Any) -> int:
    if config.tiling.tiles_in_flight is not None:
        return config.tiling.tiles_in_flight
    if client is not None:
        return max(2, len(client.scheduler_info().get("workers", {})))
    return 1


class _FailureLedger:
    """Read failures per tile: by the failure's ``context`` (the tile id), else by its href."""

    def __init__(self, client: Any) -> None:
        from pipeline._reading import collect_read_failures

        self._collect = collect_read_failures
        self._client = client
        self._seen: set[Any] = set()
        self.by_tile: dict[str, list[str]] = {}

    def forget_older(self) -> None:
        """Drop failures recorded before this run (by earlier runs on a reused cluster)."""
        self.update({}, attribute=False)

    def update(self, candidates: dict[str, set[str]], *, attribute: bool = True) -> None:
        """Attribute new failures to their tile: the failure's ``context`` when it has one,
        else every tile in ``candidates`` (key -> asset hrefs, the tiles in flight) that reads
        the failed asset."""
        try:
            found = self._collect(self._client)
        except Exception as exc:  # noqa: BLE001 - e.g. a worker dying mid-call: ask again later
            log.warning("could not collect read failures now (%s); will ask again", exc)
            return
        for failure in found:
            if failure in self._seen:
                continue
            self._seen.add(failure)
            if not attribute:
                continue
            context = getattr(failure, "context", "")
            keys = (
                [context]
                if context
                else [k for k, hrefs in candidates.items() if failure.href in hrefs]
            )
            for key in keys or ["(unattributed)"]:
                self.by_tile.setdefault(key, []).append(failure.describe())


def process_tiles(
    worker: TileWorker,
    todo: Sequence[Tile],
    state: StoreState,
    *,
    in_flight: int,
    progress: bool,
    skipped: int,
) -> tuple[list[TileResult], _FailureLedger]:
    """Step 5: compute the tiles, a few at a time; record each as done once written."""
    from tqdm.auto import tqdm

    config = worker.config
    ledger = _FailureLedger(worker.client)
    ledger.forget_older()
    results: list[TileResult] = []
    running: dict[concurrent.futures.Future, Tile] = {}
    hrefs: dict[str, set[str]] = {}
    bar = tqdm(
        total=len(todo) + skipped, initial=skipped, desc="tiles", unit="tile", disable=not progress
    )
    queue = list(todo)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="tile")
    interrupted = False
    try:
        while queue or running:
            while queue and len(running) < in_flight:
                tile = queue.pop(0)
                hrefs[tile.key] = item_hrefs(worker.index.intersecting(tile))
                running[pool.submit(worker, tile)] = tile
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                tile = running.pop(future)
                result = future.result()
                if result.ok:
                    # Recorded by this thread only, after the data are in: a crash before
                    # this line means the tile is recomputed, never skipped half-written.
                    mark_tile_done(
                        config.output, tile.row, tile.col, state.time_slice, config.archive
                    )
                results.append(result)
                ledger.update(hrefs)
                hrefs.pop(tile.key, None)
                bar.update(1)
                bar.set_postfix(failed=sum(not r.ok for r in results))
    except BaseException:
        # Ctrl-C or a failure to record: stop now; tiles in flight are not recorded and a
        # rerun with --resume computes them again.
        interrupted = True
        raise
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        bar.close()
    return results, ledger


def run_area(
    config: RunConfig,
    *,
    progress: bool = True,
    items: list | None = None,
    geobox: Any = None,
    client: Any = None,
    in_process: bool = False,
) -> RunSummary:
    """Run ``config`` into one store (see the module docstring for the steps).

    ``items`` skips the search; ``geobox`` (odc-geo) makes the output grid exactly that
    GeoBox (one tile); ``client`` reuses a connected ``distributed.Client`` (else one is
    started from ``config.cluster``); ``in_process`` uses this process's dask scheduler
    instead of a cluster (single-process runs, debugging).
    """
    from pipeline._reading import configure_gdal

    started = time.perf_counter()
    check_destination(config.output, config.archive)  # refuse before any work, not after
    if items is None:  # step 1
        items = search(dataclasses.replace(config.search, sign=False))
    grid, area_tiles, own_grid = plan_run(config, items, geobox)  # step 2
    if not own_grid:
        config = with_tile_shards(config)
    index = ItemIndex(items)
    axis, edges = time_axis(config, items, own_grid=own_grid)  # step 3
    plan = TilePlan(grid, tuple(area_tiles), axis, edges, own_grid=own_grid)
    schema = output_schema(config)
    attrs = provenance(config, items, schema)
    attrs["tile_size"] = grid.tile_size
    attrs["time_axis"] = (
        "solar days of all items"
        if config.mode == "dates"
        else ("periods holding a date" if own_grid else "period starts")
    )
    state = prepare_store(config, plan, schema, attrs)  # step 4
    region_size = plan.region_size(config.archive)
    if config.overviews:  # empty levels (or their new time steps), filled as tiles land
        from pipeline.overviews import ensure_overview_arrays

        ensure_overview_arrays(
            config.output, config.archive, region_size=region_size,
            min_size=config.overview_min_size,
        )  # fmt: skip
    todo = [t for t in area_tiles if not state.done[t.row, t.col]]
    skipped = [t for t in area_tiles if state.done[t.row, t.col]]
    if not todo:
        what = (
            f"period(s) {', '.join(str(t.date()) for t in axis)}"
            if config.mode == "composite"
            else "all tiles"
        )
        log.info("nothing to do: %s already complete in %s", what, config.output)

    with _client_or_local(config, client, in_process) as active:  # step 5
        if todo:
            configure_gdal(active)
            worker = TileWorker(config, plan, schema, index, state.time_slice, active)
            # one scene state for the whole area: tiles restore as the area would in one piece
            if items and (config.tiling.seamless or own_grid):
                worker.scene = _area_scene_state(config, grid, items, active)
            if worker.scene is not None and schema.per_date:  # the run's gamma and airlight
                per_date = scene_variables(worker.scene.scene)
                write_time_steps(
                    config.output, {n: per_date[n].values for n in schema.per_date},
                    state.time_slice, config.archive,
                )  # fmt: skip
            worker.validation = validation = _validate_tiles(worker, config, area_tiles)
            results, ledger = process_tiles(
                worker,
                todo,
                state,
                in_flight=_in_flight(config, active),
                progress=progress,
                skipped=len(skipped),
            )
        else:
            results, ledger = [], _FailureLedger(active)
            validation = None
        dashboard = active.dashboard_link if active is not None else ""

    failed = {r.key: f"{r.error} (after {r.attempts} attempt(s))" for r in results if not r.ok}
    if own_grid and failed:  # the whole area failed: its error, as a one-piece call gives it
        (error,) = [r.exception for r in results if not r.ok]
        log.error("the run failed; rerun with --resume to finish it (written regions are kept)")
        raise error if error is not None else RuntimeError(next(iter(failed.values())))
    if config.overviews and todo:  # the levels coarser than a block, from the blocks' levels
        from pipeline.overviews import finish_overviews

        finish_overviews(config.output, config.archive, region_size=region_size)
    if not failed:  # step 6
        _mark_complete_if_done(config, plan)
    tiles = TileSummary(
        total=len(area_tiles),
        written=sum(r.ok for r in results),
        skipped=len(skipped),
        failed=failed,
        read_failures=ledger.by_tile,
        appended_steps=state.appended,
        nothing_to_do=not todo,
    )
    read_failures = [f for fs in ledger.by_tile.values() for f in fs]
    for failure in read_failures:
        log.warning("read failure: %s", failure)
    unit = config.archive.write_unit
    return RunSummary(
        store=config.output,
        items=len(items),
        dates=len(axis),
        shape=grid.shape,
        regions_written=sum(r.regions_written for r in results),
        regions_skipped=sum(r.regions_skipped for r in results)
        + sum(len(list(window_regions({"y": t.y, "x": t.x}, unit))) for t in skipped),
        read_failures=read_failures,
        no_valid_pixels=sum(r.no_valid_pixels for r in results),
        seconds=time.perf_counter() - started,
        dashboard=dashboard,
        tiles=None if own_grid else tiles,
        validation=validation,
    )


def run_tiled(config: RunConfig, **options: Any) -> RunSummary:
    """``run_area`` on the tile lattice even when the area fits one tile (unless
    ``config.tiled`` says otherwise): what the tiled benchmarks and tests measure."""
    if config.tiled is None:
        config = dataclasses.replace(config, tiled=True)
    return run_area(config, **options)


def with_tile_shards(config: RunConfig) -> RunConfig:
    """Zarr 3 tiled runs shard by tile unless told otherwise: a tile is written whole by one
    task, so one object per tile, variable and date instead of one per chunk."""
    archive = config.archive
    if archive.zarr_format != 3 or archive.shard_size is not None or not config.shard_by_tile:
        return config
    shards = dataclasses.replace(archive, shard_size=config.tiling.tile_size)
    return dataclasses.replace(config, archive=shards)


def _stored_validation(config: RunConfig) -> Any:
    """The ``ValidationResult`` an earlier run recorded in the store (resume), or None."""
    from pipeline.validation import ValidationResult

    if config.archive.mode != "resume":
        return None
    try:
        attrs, _ = store_record(config.output)
    except Exception:  # noqa: BLE001 - no store yet: nothing to reuse
        return None
    raw = attrs.get(VALIDATION_ATTR)
    return ValidationResult.from_json(raw) if raw else None


def _validate_tiles(worker: TileWorker, config: RunConfig, todo: list) -> Any:
    """Self-validation on windows drawn from tiles spread over the area (up to one tile per
    window, evenly through the plan), recorded in the store before any tile is written: its
    error model calibrates every tile's error layer, and its per-tile table names the tiles
    (on the area's own grid: windows drawn from the one tile, the area).

    A resumed run reuses the validation recorded by the run it continues, so every tile's
    error layer comes from one calibration."""
    if not config.validation.enabled or not todo:
        return None
    stored = _stored_validation(config)
    if stored is not None:
        log.info("self-validation: reusing the calibration recorded in %s", config.output)
        return stored
    step = max(1, math.ceil(len(todo) / config.validation.windows))
    cubes, labels, origins, tiles = [], [], [], []
    for tile in todo[::step]:
        cube = worker.cube(tile, purpose="validation")
        if cube is not None:
            cubes.append(cube)
            labels.append(str(tile.key))
            origins.append((tile.y.start, tile.x.start))
            tiles.append(tile)
    if not cubes:
        return None
    # the windows restore with the area's scene state, placed in the area's grid, as the
    # tiles themselves do (without one, each window estimates its own)
    placed: dict[str, Any] = {"read_window": _window_reader(worker, config, tiles)}
    if worker.scene is not None:
        placed.update(scene=worker.scene, grid_shape=worker.plan.grid.shape)
    if worker.plan.own_grid:  # the area in one piece: its windows are the area's, unlabelled
        validation = validation_step(cubes[0], config, origins=origins[:1], **placed)
    else:
        validation = validation_step(cubes, config, labels=labels, origins=origins, **placed)
    # its read failures (a window it skipped) are not the tiles': drop them from the ledgers
    from pipeline._reading import collect_read_failures

    collect_read_failures(worker.client)
    if validation is not None:
        record_attrs(config.output, {VALIDATION_ATTR: validation.to_json()}, config.archive)
    return validation


def _window_reader(worker: TileWorker, config: RunConfig, tiles: list) -> Any:
    """``read_window(k, ys, xs)`` for the self-validation: the pixels of tile k's cube that a
    window needs, read as one chunk of exactly that extent. Sliced from the tile's cube, a
    window would read every chunk it touches: up to four of the run's (1024 px by default)
    for a window of a few hundred px."""

    def read_window(k: int, ys: slice, xs: slice) -> xr.Dataset:
        tile = tiles[k]
        side = max(ys.stop - ys.start, xs.stop - xs.start, 64)
        own = dataclasses.replace(config, cube=dataclasses.replace(config.cube, chunk_size=side))
        return load_step(
            worker.index.intersecting(tile),
            own,
            geobox=tile.geobox[ys, xs],
            read_context=f"validation:{tile.key}",
        )

    return read_window


def _area_scene_state(config: RunConfig, grid: GridSpec, items: list, client: Any) -> Any:
    """The run area's scene state, or None when its sample cannot be read (a broken asset):
    each tile then estimates its own, and the tiles that read the broken asset fail and are
    reported as usual, instead of the whole run failing before any tile."""
    from pipeline._reading import collect_read_failures

    try:
        return scene_state_step(
            items, config, grid.geobox, dates_axis(items).as_unit("ns"), client=client,
            read_context="scene",
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - fall back to per-tile scene parameters
        log.warning(
            "the scene parameters of the run area could not be estimated (%s): each tile "
            "estimates its own, so values may step at tile edges; rerun once the data read",
            " ".join(str(exc).split())[:300],
        )
        collect_read_failures(client)  # the sample's failures are not the tiles'
        return None


def _mark_complete_if_done(config: RunConfig, plan: TilePlan) -> None:
    """COMPLETE_ATTR once every area tile holds every time step of the store (written only
    when it changes, so a run with nothing to do leaves the store untouched)."""
    attrs, times = store_record(config.output)
    done = tiles_done(config.output, slice(0, len(times)))
    if attrs.get(COMPLETE_ATTR) is not True and all(done[t.row, t.col] for t in plan.tiles):
        record_attrs(config.output, {COMPLETE_ATTR: True}, config.archive)


@contextlib.contextmanager
def _client_or_local(config: RunConfig, client: Any, in_process: bool) -> Iterator[Any]:
    """The caller's client; None (this process's dask scheduler) for ``in_process``; else a
    client of a cluster started from ``config.cluster`` and closed after the run."""
    if client is not None or in_process:
        yield client
        return
    with dask_client(config.cluster) as started:
        yield started


__all__ = [
    "OutputSchema",
    "TilePlan",
    "TileResult",
    "TileWorker",
    "output_schema",
    "plan_grid",
    "prepare_store",
    "process_tiles",
    "plan_run",
    "run_area",
    "run_fingerprint",
    "run_tiled",
    "time_axis",
]
