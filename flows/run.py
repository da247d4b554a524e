"""The main job: search -> lazy cube -> restore on Dask -> Zarr archive.

A flow names its steps and owns no science; every step is a library call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

import pipeline
from pipeline._search import SearchParams, is_planetary_computer, search
from pipeline.archive import ArchiveConfig, check_destination, open_archive, write_archive
from pipeline.cluster import ClusterConfig, dask_client
from pipeline.cube import CubeConfig, load_cube

log = logging.getLogger(__name__)

Mode = Literal["dates", "composite"]


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, resolved in one place (the CLI builds it from flags)."""

    search: SearchParams
    output: str
    cube: CubeConfig = field(default_factory=CubeConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mode: Mode = "dates"
    period: str | None = None
    prior: str = "physics"

    def __post_init__(self) -> None:
        if self.mode not in ("dates", "composite"):
            raise ValueError(f"mode must be 'dates' or 'composite', not {self.mode!r}")


@dataclass
class RunSummary:
    store: str
    items: int
    dates: int
    shape: tuple[int, int]
    regions_written: int
    regions_skipped: int
    read_failures: list[str]
    no_valid_pixels: int
    seconds: float
    dashboard: str = ""

    def lines(self) -> list[str]:
        return [
            f"store            {self.store}",
            f"items / dates    {self.items} / {self.dates}",
            f"grid             {self.shape[0]} x {self.shape[1]} px",
            f"regions          {self.regions_written} written, {self.regions_skipped} skipped (resume)",
            f"read failures    {len(self.read_failures)}",
            f"no valid obs.    {self.no_valid_pixels} pixel-dates",
            f"time             {self.seconds:.1f} s",
            *([f"dask dashboard   {self.dashboard} (closed with the run)"] if self.dashboard else []),
        ]


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


def run(
    config: RunConfig, *, progress: bool = True, items: list | None = None, geobox: Any = None
) -> RunSummary:
    """Run the whole pipeline for ``config``.

    ``items`` skips the search (replays, the demo); ``geobox`` (odc-geo) fixes the output grid
    exactly instead of deriving it from the search area, CRS and resolution.
    """
    from pipeline._reading import collect_read_failures, configure_gdal, planetary_computer_signer

    started = time.perf_counter()
    check_destination(config.output, config.archive)  # refuse before any work, not after
    if items is None:
        # step 1: catalog search + item hygiene. Hrefs stay unsigned in the graph: the
        # reader signs each one at read time on the worker (tokens expire after ~45 min).
        items = search(dataclasses.replace(config.search, sign=False))
    signer = planetary_computer_signer if is_planetary_computer(config.search.catalog) else None
    with dask_client(config.cluster) as client:
        configure_gdal(client)
        collect_read_failures(client)  # drop stale events from an earlier run on this cluster
        cube = load_cube(  # step 2: lazy datacube
            items,
            config.cube,
            bbox=config.search.bbox,
            geopolygon=config.search.intersects,
            geobox=geobox,
            signer=signer,
        )
        restored = pipeline.restore(cube, prior=config.prior, mode=config.mode, period=config.period)
        written = write_archive(  # step 3: restore + write, region by region
            restored,
            config.output,
            config.archive,
            attrs=provenance(config, items, restored),
            progress=progress,
            client=client,
        )
        failures = [f.describe() for f in collect_read_failures(client)]
        dashboard = client.dashboard_link
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
    )
    for failure in failures:
        log.warning("read failure: %s", failure)
    return summary
