"""The main job: search -> lazy cube -> restore on Dask -> Zarr archive.

``run(config)`` is the one entry point of a run (the CLI, the demo and the scheduled jobs
call it). It decides how the area is cut: an area that fits one tile (or an exact ``geobox``)
is one grid written region by region into one store (``pipeline.archive``); a larger one goes
tile by tile into one resumable store (``flows.tiled``, ``pipeline.tiled_archive``). Both
load, stamp dates, restore and validate through the same steps (``flows.steps``), so a small
area gives the same data whichever way it goes. A flow names its steps and owns no science.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from pipeline.archive import check_destination, open_archive, write_archive
from pipeline.catalog import search
from pipeline.cluster import dask_client
from pipeline.validation import VALIDATION_ATTR

from .config import Mode, RunConfig, RunSummary, TileSummary
from .steps import (
    error_layer_step,
    load_step,
    prior_of,
    provenance,
    restore_step,
    scene_state_step,
    validation_step,
    wants_error_layer,
)
from .tiled import run_tiled

log = logging.getLogger(__name__)

__all__ = [
    "Mode",
    "RunConfig",
    "RunSummary",
    "TileSummary",
    "prior_of",
    "provenance",
    "restore_step",
    "run",
    "validation_step",
]


def run(
    config: RunConfig, *, progress: bool = True, items: list | None = None, geobox: Any = None
) -> RunSummary:
    """Run the whole pipeline for ``config``.

    ``items`` skips the search (replays, the demo); ``geobox`` (odc-geo) fixes the output grid
    exactly instead of deriving it from the search area, CRS and resolution. Areas larger
    than one tile (and ``config.tiled=True``) run tile by tile (``flows.tiled.run_tiled``).
    """
    if geobox is None and config.use_tiles():
        return publish_step(run_tiled(config, progress=progress, items=items), config)
    return publish_step(
        _run_one_grid(config, progress=progress, items=items, geobox=geobox), config
    )


def _run_one_grid(
    config: RunConfig, *, progress: bool, items: list | None, geobox: Any
) -> RunSummary:
    """One grid, one store, written region by region (resumable per region)."""
    from pipeline._reading import collect_read_failures, configure_gdal

    started = time.perf_counter()
    check_destination(config.output, config.archive)  # refuse before any work, not after
    if items is None:
        # step 1: catalog search + item hygiene. Hrefs stay unsigned in the graph: the
        # reader signs each one at read time on the worker (tokens expire after ~45 min).
        items = search(dataclasses.replace(config.search, sign=False))
    with dask_client(config.cluster) as client:
        configure_gdal(client)
        collect_read_failures(client)  # drop stale events from an earlier run on this cluster
        cube = load_step(items, config, geobox=geobox)  # step 2: lazy datacube
        validation = validation_step(cube, config)  # step 2b: how good will it be?
        # scene parameters from the COGs' overviews, not from a second read of every chunk,
        # estimated on a worker (the same step gives a tiled run its one scene state)
        state = scene_state_step(items, config, cube.odc.geobox, cube["time"].values, client=client)
        restored = restore_step(cube, config, scene=state)
        if wants_error_layer(config):  # calibrated on the validation just run
            restored = error_layer_step(restored, validation)
        attrs = provenance(config, items, restored)
        if validation is not None:
            attrs[VALIDATION_ATTR] = validation.to_json()
        written = write_archive(  # step 3: restore + write, region by region
            restored,
            config.output,
            config.archive,
            attrs=attrs,
            progress=progress,
            client=client,
        )
        failures = [f.describe() for f in collect_read_failures(client)]
        dashboard = client.dashboard_link
        if config.overviews:  # step 4: overviews, region by region (the area is one tile)
            from pipeline.overviews import build_overviews

            build_overviews(config.output, config.archive, min_size=config.overview_min_size)
    archive = open_archive(config.output)
    no_valid = int(np.asarray(archive["no_valid_observation"].sum().compute()))
    summary = RunSummary(
        store=config.output,
        items=len(items),
        dates=archive.sizes["time"],
        shape=(archive.sizes["y"], archive.sizes["x"]),
        regions_written=written["regions_written"],
        regions_skipped=written["regions_skipped"],
        read_failures=failures,
        no_valid_pixels=no_valid,
        seconds=time.perf_counter() - started,
        dashboard=dashboard,
        validation=validation,
    )
    for failure in failures:
        log.warning("read failure: %s", failure)
    return summary


def publish_step(summary: RunSummary, config: RunConfig) -> RunSummary:
    """The last step of every run: the STAC description, the overview levels and the count of
    objects in the store, recorded in the summary."""
    from pipeline.overviews import overview_levels
    from pipeline.store_objects import count_objects

    if config.stac:
        from pipeline.archive_stac import write_archive_stac

        summary.stac = write_archive_stac(config.output)
    summary.overview_factors = [level.factor for level in overview_levels(config.output)]
    summary.objects = count_objects(config.output)
    return summary
