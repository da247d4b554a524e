"""The library calls a run is made of, configured from a ``RunConfig`` in one place.

The run path (``flows.tiled``) loads, restores, validates and describes its output through
these functions, so every tile (the one tile of a small area, or a continent's) reads its
data, stamps its dates and restores with the same settings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

import xarray as xr

import pipeline
from pipeline.catalog import is_planetary_computer
from pipeline.cube import load_cube, load_scene_sample
from pipeline.tiling import dates_axis
from pipeline.validation import ValidationResult

from .config import RunConfig

log = logging.getLogger(__name__)

__all__ = [
    "load_step",
    "prior_of",
    "provenance",
    "restore_step",
    "restore_halo",
    "scene_sample_step",
    "scene_state_step",
    "signer_of",
    "error_layer_step",
    "fusion_of",
    "validation_step",
    "wants_error_layer",
]


def signer_of(config: RunConfig) -> Any:
    """The read-time href signer: Planetary Computer SAS signing for its catalog, else None."""
    if is_planetary_computer(config.search.catalog):
        from pipeline._reading import planetary_computer_signer

        return planetary_computer_signer
    return None


def load_step(
    items: list,
    config: RunConfig,
    *,
    geobox: Any = None,
    read_context: str = "",
) -> xr.Dataset:
    """The lazy input cube of ``items``, one step per solar day, stamped with that day.

    ``geobox`` fixes the grid (a tile's, or the caller's); without it the grid follows the
    search area, ``config.cube.crs`` and ``config.cube.resolution``. Every run stamps its
    dates the same way: the solar day (midnight) that ``load_cube`` groups acquisitions by,
    which is also the time axis a tiled store shares between tiles.
    """
    cube = load_cube(
        items,
        config.cube,
        bbox=None if geobox is not None else config.search.bbox,
        geopolygon=None if geobox is not None else config.search.intersects,
        geobox=geobox,
        signer=signer_of(config),
        read_context=read_context,
    )
    days = dates_axis(items).as_unit("ns")
    if cube.sizes["time"] != len(days):
        where = f"{read_context}: " if read_context else ""
        raise RuntimeError(
            f"{where}the cube has {cube.sizes['time']} dates but its items span {len(days)} "
            "solar days; load_cube grouped them differently, please report it"
        )
    return cube.assign_coords(time=days)


def scene_sample_step(
    items: list, config: RunConfig, cube: xr.Dataset, *, read_context: str = ""
) -> xr.Dataset:
    """Scene parameters' sample of ``cube`` from the COGs' overviews (not a second full read),
    stamped with the cube's dates."""
    sample = load_scene_sample(
        items, config.cube, cube.odc.geobox, signer=signer_of(config), read_context=read_context
    )
    return sample.assign_coords(time=cube["time"])


def scene_state_step(
    items: list,
    config: RunConfig,
    geobox: Any,
    time: Any,
    *,
    client: Any = None,
    read_context: str = "",
) -> Any:
    """The scene state of the run area (``pipeline.restore.estimate_scene_state``): estimated
    once, from the COGs' overviews over ``geobox`` (the whole run area), and handed to every
    restore of the run, so tiles share one set of scene parameters with the area as one grid.

    The sample is read and the state estimated in one task on a worker (``client``, else the
    current dask scheduler): a prior whose scene estimate runs a model loads it there, and
    only the small state (a few arrays of T x T x B floats) comes back to this process.
    ``time``: the run's dates (the cube's time coordinate), stamped on the sample.
    """
    import dask

    from pipeline.restore import estimate_scene_state

    sample = load_scene_sample(
        items,
        config.cube,
        geobox,
        signer=signer_of(config),
        read_context=read_context,
        compute=False,
    ).assign_coords(time=time)
    task = dask.delayed(estimate_scene_state, pure=True)(
        sample, prior_of(config), fusion_of(config), coarse=True
    )
    if client is not None:
        return client.compute(task, sync=True)
    return dask.compute(task)[0]


def fusion_of(config: RunConfig) -> Any:
    """The fusion settings ``restore_step`` restores with (the time window, else defaults)."""
    from pipeline.kernels import FusionConfig

    return FusionConfig(time_window_dates=config.time_window_dates)


def restore_halo(config: RunConfig) -> int:
    """Pixels a restored pixel depends on around it: every window of the prior and the
    fusion (``restore`` overlaps its chunks by the same depth). A part of the area read with
    this halo restores its own pixels exactly as the whole area does."""
    return prior_of(config).halo + fusion_of(config).halo


def provenance(config: RunConfig, items: list, restored: Any) -> dict[str, Any]:
    """Archive attributes: software, search, items, prior and its parameters."""
    s = config.search
    return {
        "software": "phyvlm-cr",
        "software_version": pipeline.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "catalog": s.catalog,
        "collection": s.collection,
        "search_bbox": list(s.bbox) if s.bbox else "",
        "search_intersects": json.dumps(s.intersects) if s.intersects else "",
        "search_datetime": s.datetime,
        "search_max_cloud_cover": s.max_cloud_cover if s.max_cloud_cover is not None else "",
        "search_mgrs_tile": s.mgrs_tile or "",
        "item_ids": [it.id for it in items],
        "mode": config.mode,
        "period": config.period or "",
        "cube_config": json.dumps(asdict(config.cube)),
        "prior": restored.attrs.get("prior", config.prior),
        "prior_params": restored.attrs.get("prior_params", "{}"),
        "fusion_params": restored.attrs.get("fusion_params", "{}"),
        "Conventions": "CF-1.8",
    }


def prior_of(config: RunConfig) -> Any:
    """The configured prior (a small, picklable object; models load on the workers)."""
    return pipeline.priors.get_prior(config.prior, **dict(config.prior_options))


def restore_step(
    cube: Any,
    config: RunConfig,
    scene_sample: Any = None,
    *,
    scene: Any = None,
    origin: tuple[int, int] | None = None,
    grid_shape: tuple[int, int] | None = None,
) -> Any:
    """Restore (and composite) a cube as ``config`` asks: the one place a run restores.

    ``scene`` (``scene_state_step``): the run area's scene state, so that a part of the area
    (a tile, at ``origin`` in a grid of ``grid_shape``) restores as the whole area does.
    Else ``scene_sample`` (``pipeline.cube.load_scene_sample``) spares the second read of
    the cube that a strided scene sample of a lazy cube costs.
    """
    prior = prior_of(config)
    return pipeline.restore(
        cube,
        prior=prior,
        mode=config.mode,
        period=config.period,
        scene_sample=scene_sample,
        scene=scene,
        origin=origin,
        grid_shape=grid_shape,
        **time_options(cube, config, prior),
    )


def _workers_memory() -> tuple[int, int] | None:
    """(smallest memory limit, most threads) over the connected cluster's workers, or None
    without a distributed client (or without a limit)."""
    try:
        from distributed import get_client

        workers = get_client().scheduler_info()["workers"].values()
    except (ImportError, ValueError):
        return None
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    if not limits or min(limits) <= 0:
        return None
    return min(limits), max(int(w.get("nthreads") or 1) for w in workers)


def time_options(cube: Any, config: RunConfig, prior: Any) -> dict[str, Any]:
    """``restore``'s time window and block, sized from the memory calculator and the workers'
    memory limit (``pipeline.memory.plan_time_block``); refuses what cannot fit, naming the
    setting that would."""
    import dask.array as da

    from pipeline.kernels import FusionConfig
    from pipeline.memory import block_dates, plan_time_block

    window = config.time_window_dates
    options: dict[str, Any] = {}
    if window is not None:
        options["time_window_dates"] = window
    block = config.time_block
    bands = [v for v in cube.data_vars if v != "SCL"]
    workers = _workers_memory()
    if workers is not None and bands and isinstance(cube[bands[0]].data, da.Array):
        limit, threads = workers
        chunks = cube[bands[0]].data.chunks
        plan = plan_time_block(
            max(max(chunks[1]), max(chunks[2])),
            cube.sizes["time"],
            len(bands),
            halo=prior.halo + FusionConfig(time_window_dates=window).halo,
            memory_limit=limit,
            window_dates=window,
            threads_per_worker=threads,
            has_scl="SCL" in cube.data_vars,
        )
        log.info(
            "memory plan: %s dates per task, about %.1f GiB per worker of %.1f GiB",
            plan.block_dates,
            plan.estimate.worker_bytes / 2**30,
            limit / 2**30,
        )
        if block is None:
            block = plan.time_block
        elif block_dates(cube.sizes["time"], block, window) > plan.block_dates:
            raise ValueError(
                f"--time-block {block} does not fit the workers' memory limit "
                f"({limit / 2**30:.1f} GiB); fix: --time-block {plan.time_block} or less"
            )
    if block is not None and window is not None:
        options["time_block"] = block
    return options


def validation_step(
    cube: Any,
    config: RunConfig,
    labels: list[str] | None = None,
    *,
    scene: Any = None,
    origins: list[tuple[int, int]] | None = None,
    grid_shape: tuple[int, int] | None = None,
    read_window: Any = None,
) -> ValidationResult | None:
    """Self-validation of ``cube`` (or of one cube per tile, named by ``labels``) with the
    run's prior and options (None when disabled). ``scene`` (the run's ``SceneState``),
    ``origins`` (each cube's first row and column in the run's grid) and ``grid_shape``
    restore the windows as the run restores its chunks; ``read_window`` reads a window's
    extent on its own (``self_validate``). Its windows run as tasks on the run's cluster."""
    if not config.validation.enabled:
        return None
    from pipeline.validation import self_validate

    prior = prior_of(config)
    # the run's own time window and block (a window restores in the run's time blocks, so
    # its memory is a run task's, whatever the length of the series)
    options: dict[str, Any] = {}
    if config.time_window_dates is not None:
        options["time_window_dates"] = config.time_window_dates
        if config.time_block is not None:
            options["time_block"] = config.time_block
    log.info("self-validation on held-out clear pixels (%s)", config.validation)
    return self_validate(
        cube,
        prior=prior,
        config=config.validation,
        labels=labels,
        scene=scene,
        origins=origins,
        grid_shape=grid_shape,
        read_window=read_window,
        **options,
    )


#: attrs of the error layer of a run without a calibration (and of a tiled store's template)
UNCALIBRATED_ERROR_ATTRS = {
    "long_name": "estimated error of the restored reflectance (no calibration)"
}


def wants_error_layer(config: RunConfig) -> bool:
    """The per-pixel error layer is written for restored dates (not composites) of a run that
    validates itself: it is calibrated on that validation."""
    return config.validation.enabled and config.mode == "dates"


def error_layer_step(restored: Any, validation: ValidationResult | None) -> Any:
    """``restored`` with ``error_estimate`` from the validation's calibrated error model (NaN
    where the validation found no pixels to calibrate on), lazily."""
    from pipeline.validation import ERROR_LAYER

    model = validation.error_model if validation is not None else None
    if model is not None:
        return restored.assign({ERROR_LAYER: model.apply(restored)})
    nan = restored["confidence"].where(restored["confidence"] < -1).astype("float32")
    nan.attrs = dict(UNCALIBRATED_ERROR_ATTRS)
    return restored.assign({ERROR_LAYER: nan})
