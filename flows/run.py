"""The main job: search -> lazy cube -> restore on Dask -> Zarr archive -> STAC.

``run(config)`` is the one entry point of a run (the CLI, the demo and the scheduled jobs
call it). Every run takes the one run path, ``flows.tiled.run_area``: it decides how the
area is cut (one tile on the area's own grid, or the tiles of the lattice), then loads,
stamps dates, restores, validates and writes every tile the same way (``flows.steps``,
``pipeline.tiled_archive``). ``run`` adds the last step, ``publish_step``. A flow names its
steps and owns no science.
"""

from __future__ import annotations

from typing import Any

from .config import Mode, RunConfig, RunSummary, TileSummary
from .tiled import run_area

__all__ = [
    "Mode",
    "RunConfig",
    "RunSummary",
    "TileSummary",
    "publish_step",
    "run",
]


def run(
    config: RunConfig,
    *,
    progress: bool = True,
    items: list | None = None,
    geobox: Any = None,
    client: Any = None,
) -> RunSummary:
    """Run the whole pipeline for ``config``.

    ``items`` skips the search (replays, the demo); ``geobox`` (odc-geo) fixes the output grid
    exactly instead of deriving it from the search area, CRS and resolution; ``client`` runs
    on a connected ``distributed.Client`` instead of a cluster from ``config.cluster``. An
    area that fits one tile (or a ``geobox``) is one tile on its own grid; a larger one (or
    ``config.tiled=True``) goes tile by tile on the lattice (``flows.tiled``).
    """
    summary = run_area(config, progress=progress, items=items, geobox=geobox, client=client)
    return publish_step(summary, config)


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
