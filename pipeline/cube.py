"""Lazy Sentinel-2 L2A datacubes with odc-stac, scaled to float32 reflectance.

The cube contract (DESIGN.md section 4): an ``xarray.Dataset`` with dims ``(time, y, x)``,
one float32 variable per band named by its asset key, reflectance after scaling, NaN for
nodata, CRS through odc-geo (``spatial_ref``), dask-chunked over y/x. ``SCL`` (uint8, 0 =
nodata) is added when asked for.

Scaling is decided per item from ``s2:processing_baseline`` (+1000 DN from baseline 04.00),
or the ``_Nxxyy_`` of ``s2:product_uri`` where the property is missing, never from the date;
a Sentinel-2 item with neither is refused with a message naming the fix. Items of one solar day are fused into one time step; items of one day
that need different offsets (a reprocessing campaign between tiles) are loaded as separate
steps, scaled, then fused, so no pixel is scaled with another item's offset.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pystac
import xarray as xr

from ._bands import DEFAULT_BANDS as _DEFAULT_BANDS
from ._bands import NATIVE_RESOLUTION_M, QUANTIFICATION, SCL_BAND, check_bands
from ._reading import AccountingRioDriver, ReadErrorPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CubeConfig:
    """How to turn STAC items into a datacube.

    bands: reflectance asset keys (any subset of the L2A bands).
    resolution: output pixel size in units of ``crs`` (metres for UTM).
    crs: output CRS ("EPSG:32633"); None takes the most common EPSG of the items.
    chunk_size: spatial chunk (pixels); chunks follow the output grid.
    include_scl: also load SCL (nearest resampling, uint8) as evidence for the prior.
    on_read_error: "raise" (default) or "count" (nodata written, failure reported).
    max_read_attempts, read_backoff_s: a failed band read is tried this many times in all,
        waiting about read_backoff_s, then twice that, ... (see ``_reading.ReadRetry``).
    """

    bands: tuple[str, ...] = _DEFAULT_BANDS
    resolution: float = 10.0
    crs: str | None = None
    chunk_size: int = 1024
    include_scl: bool = True
    on_read_error: ReadErrorPolicy = "raise"
    max_read_attempts: int = 3
    read_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        check_bands(self.bands)
        if SCL_BAND in self.bands:
            raise ValueError("list SCL through include_scl=True, not in bands")
        if not self.bands:
            raise ValueError("no bands requested: give at least one reflectance band, e.g. B04")
        if not (self.resolution > 0):
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if self.chunk_size < 64:
            raise ValueError(f"chunk_size {self.chunk_size} is too small: use 256..4096 pixels")


def _item_lon(item: pystac.Item) -> float:
    if item.bbox:
        return (item.bbox[0] + item.bbox[2]) / 2.0
    return 0.0


def _solar_date(item: pystac.Item) -> dt.date:
    """The local solar date of an acquisition: UTC shifted by longitude/15 hours."""
    when = item.datetime
    if when is None:
        raise ValueError(f"item {item.id} has no datetime")
    return (when + dt.timedelta(hours=_item_lon(item) / 15.0)).date()


def _offset_dn(item: pystac.Item) -> float:
    """The item's BOA offset in DN, by the careful rule of the search: ``s2:processing_baseline``,
    else the ``_Nxxyy_`` of ``s2:product_uri``; a Sentinel-2 item with neither is refused
    (ItemMetadataError) rather than scaled with a guessed offset (0 would bias baseline >= 04.00
    data by +0.1 reflectance)."""
    from .catalog import reflectance_offset

    return round(reflectance_offset(item) * QUANTIFICATION)


def _group_key(item: pystac.Item) -> tuple[dt.date, float]:
    return (_solar_date(item), _offset_dn(item))


def _choose_crs(items: Sequence[pystac.Item]) -> str:
    from .catalog import item_epsg

    codes = [item_epsg(it) for it in items]
    values, counts = np.unique(codes, return_counts=True)
    return f"EPSG:{int(values[np.argmax(counts)])}"


def _resampling(bands: Sequence[str], resolution: float) -> dict[str, str]:
    """Bilinear when upsampling (20 m -> 10 m), average when downsampling; nearest for SCL."""
    out = {}
    for band in bands:
        native = NATIVE_RESOLUTION_M.get(band, 10)
        out[band] = "average" if resolution > native else "bilinear"
    out[SCL_BAND] = "nearest"
    return out


def _check_assets(items: Sequence[pystac.Item], wanted: Sequence[str]) -> None:
    for item in items:
        missing = [b for b in wanted if b not in item.assets]
        if missing:
            raise ValueError(
                f"item {item.id} has no asset(s) {missing} (it has {sorted(item.assets)}); "
                "choose bands the items carry (--bands) or drop that item from the search"
            )


def load_cube(
    items: Sequence[pystac.Item],
    config: CubeConfig | None = None,
    *,
    bbox: tuple[float, float, float, float] | None = None,
    geopolygon: Any = None,
    geobox: Any = None,
    signer: Callable[[str], str] | None = None,
    read_context: str = "",
    resampling: str | None = None,
) -> xr.Dataset:
    """Load items into a lazy, scaled datacube (nothing is read until compute).

    bbox is lon/lat (EPSG:4326); geopolygon any odc-geo geometry or GeoJSON dict; geobox an
    odc-geo GeoBox that fixes the grid exactly (tiled runs use it). ``signer`` signs each
    href at read time on the worker (``planetary_computer_signer`` for Planetary Computer).
    ``read_context`` labels the read failures of this load (a tile id) in the run's report.
    ``resampling`` overrides the per-band choice (bilinear up, average down) for the bands.
    """
    import odc.stac

    config = config or CubeConfig()
    items = list(items)
    if not items:
        raise ValueError("no items to load: the search found nothing; widen the area or dates")
    wanted = list(config.bands) + ([SCL_BAND] if config.include_scl else [])
    _check_assets(items, wanted)

    keys = {it.id: _group_key(it) for it in items}
    steps = sorted(set(keys.values()))
    driver = AccountingRioDriver(
        signer=signer,
        on_error=config.on_read_error,
        max_attempts=config.max_read_attempts,
        backoff_s=config.read_backoff_s,
        context=read_context,
    )
    grid: dict[str, Any]
    if geobox is not None:
        grid = {"geobox": geobox}
    else:
        grid = {"crs": config.crs or _choose_crs(items), "resolution": config.resolution}
        if geopolygon is not None:
            grid["geopolygon"] = geopolygon
        elif bbox is not None:
            grid["bbox"] = bbox
    chunks = {"time": 1, "y": config.chunk_size, "x": config.chunk_size}
    common = dict(
        groupby=lambda item, parsed, idx: keys[item.id],
        chunks=chunks,
        driver=driver,
        fail_on_error=True,  # the driver applies the on_read_error policy itself
        **grid,
    )
    raw = odc.stac.load(
        items,
        bands=list(config.bands),
        dtype="float32",  # nodata (0) becomes NaN
        resampling=resampling or _resampling(config.bands, config.resolution),
        **common,
    )
    if raw.sizes["time"] != len(steps):
        raise RuntimeError(
            f"odc-stac made {raw.sizes['time']} time steps from {len(steps)} groups; "
            "this odc-stac version groups differently, please report it"
        )
    offsets = xr.DataArray(np.array([k[1] for k in steps], dtype="float32"), dims="time")
    cube = xr.Dataset(coords=raw.coords, attrs={})
    for band in config.bands:
        scaled = (raw[band] + offsets) / np.float32(QUANTIFICATION)
        scaled = scaled.astype("float32")
        scaled.attrs = {"units": "1", "long_name": f"{band} surface reflectance", "nodata": np.nan}
        cube[band] = scaled
    if config.include_scl:
        scl = odc.stac.load(items, bands=[SCL_BAND], dtype="uint8", resampling="nearest", **common)[
            SCL_BAND
        ]
        scl.attrs = {"long_name": "Sen2Cor scene classification", "nodata": 0}
        cube[SCL_BAND] = scl
    cube = _fuse_same_day(cube, [k[0] for k in steps])
    cube.attrs["item_ids"] = [it.id for it in items]
    cube.attrs["collection"] = items[0].collection_id or ""
    log.info(
        "cube: %d dates x %d bands x %d x %d px (%s), chunks %d px",
        cube.sizes["time"],
        len(config.bands),
        cube.sizes["y"],
        cube.sizes["x"],
        f"EPSG:{cube.odc.crs.epsg}"
        if cube.odc.crs is not None and cube.odc.crs.epsg
        else cube.odc.crs,
        config.chunk_size,
    )
    return cube


def load_scene_sample(
    items: Sequence[pystac.Item],
    config: CubeConfig,
    geobox: Any,
    *,
    sample_pixels: int | None = None,
    signer: Callable[[str], str] | None = None,
    read_context: str = "",
    compute: bool = True,
) -> xr.Dataset:
    """The cube of ``items`` on ``geobox`` zoomed out to about ``sample_pixels`` per date, in memory
    (``compute=False``: lazy, for a caller that estimates from it on a worker). By default
    ``pipeline.restore.scene_sample_stride`` of the items' solar days: fewer pixels per date
    for a series longer than 12 dates, so the sample and the estimation's memory stay those
    of a 12-date search.

    It is what ``pipeline.restore(cube, scene_sample=...)`` estimates the scene parameters
    from: the zoom factor is the stride of the strided sample, and odc-stac reads such a
    coarse grid from the COGs' overviews (nearest neighbour, like the strided sample: no
    mixing of cloud and clear pixels), a small fraction of the cube's bytes, where the
    strided sample of a lazy cube decodes every chunk in full.
    """
    from .restore import scene_sample_stride

    dates = len({_solar_date(it) for it in items})
    stride = scene_sample_stride(tuple(geobox.shape), dates, sample_pixels)
    coarse = geobox.zoom_out(stride) if stride > 1 else geobox
    whole = max(64, *coarse.shape)  # one chunk: the sample is small by construction
    sample = load_cube(
        items,
        replace(config, chunk_size=whole),
        geobox=coarse,
        signer=signer,
        read_context=read_context,
        resampling="nearest",
    )
    log.info("scene sample: %d x %d px per date (1/%d of the grid)", *coarse.shape, stride)
    return sample.compute() if compute else sample


def _fuse_same_day(cube: xr.Dataset, days: list[dt.date]) -> xr.Dataset:
    """Fuse steps of one solar day (split only by their offsets), first valid pixel wins."""
    if len(set(days)) == len(days):
        return cube
    log.info("fusing items of one day that carry different processing baselines")
    parts = []
    day_index = np.array([np.datetime64(d) for d in days])
    for day in dict.fromkeys(day_index):
        sel = np.flatnonzero(day_index == day)
        part = cube.isel(time=sel)
        fused = part.isel(time=0)
        for i in range(1, len(sel)):
            other = part.isel(time=i)
            for name in fused.data_vars:
                if name == SCL_BAND:
                    fused[name] = fused[name].where(fused[name] != 0, other[name])
                else:
                    fused[name] = fused[name].fillna(other[name])
        parts.append(fused)
    return xr.concat(parts, dim="time", data_vars="all", coords="minimal", compat="override")
