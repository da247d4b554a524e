"""The main job: search -> lazy cube -> restore on Dask -> Zarr archive.

A flow names its steps and owns no science; every step is a library call. Areas larger
than one tile (``RunConfig.tiling``) go to ``flows.tiled``: the same steps, tile by tile,
into one resumable store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

import pipeline
from pipeline._search import SearchParams, is_planetary_computer, search
from pipeline.archive import ArchiveConfig, check_destination, open_archive, write_archive
from pipeline.cluster import ClusterConfig, dask_client
from pipeline.cube import CubeConfig, load_cube, load_scene_sample
from pipeline.tiling import TilingConfig, area_fits_one_tile, area_geometry
from pipeline.validation import VALIDATION_ATTR, ValidationConfig, ValidationResult

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
    #: keywords of the prior (e.g. {"model": "/models/Qwen2.5-VL-3B-Instruct"} for "vlm")
    prior_options: Mapping[str, Any] = field(default_factory=dict)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    #: None: tiled when the area is larger than one tile; True/False forces either way.
    tiled: bool | None = None
    #: self-validation: held-out clear pixels under simulated cloud (pipeline.validation)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    #: overview levels (1/2, 1/4, ... until the area fits overview_min_size px) in the store
    overviews: bool = True
    overview_min_size: int = 256
    #: write a STAC Collection (and Items) describing the archive beside it
    stac: bool = True
    #: tiled runs in Zarr 3 without an explicit archive.shard_size: one shard per tile
    #: (``phyvlm-cr benchmark layout``: 3.5x fewer objects, the same write time)
    shard_by_tile: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("dates", "composite"):
            raise ValueError(f"mode must be 'dates' or 'composite', not {self.mode!r}")
        if self.period is not None and self.mode != "composite":
            raise ValueError("--period is for --mode composite (one composite per period)")

    def use_tiles(self) -> bool:
        """Whether this run goes tile by tile (``flows.tiled``)."""
        if self.tiled is not None:
            return self.tiled
        s = self.search
        if s.bbox is None and s.intersects is None:
            return False
        tiling = self.grid_tiling()
        return not area_fits_one_tile(
            area_geometry(s.bbox, s.intersects), tiling, self.cube.resolution
        )

    def grid_tiling(self) -> TilingConfig:
        """The tiling with the grid CRS resolved: tiling.crs, else cube.crs, else automatic."""
        return dataclasses.replace(self.tiling, crs=self.tiling.crs or self.cube.crs)


@dataclass
class TileSummary:
    """What a tiled run did, tile by tile."""

    total: int
    written: int
    skipped: int
    failed: dict[str, str]  # tile key -> last error
    read_failures: dict[str, list[str]]  # tile key -> failures (describe())
    appended_steps: int = 0
    nothing_to_do: bool = False

    def lines(self) -> list[str]:
        out = [
            f"tiles            {self.total} in the area: {self.written} written, "
            f"{self.skipped} skipped (already done), {len(self.failed)} failed",
        ]
        if self.appended_steps:
            out.append(f"appended         {self.appended_steps} time step(s)")
        if self.nothing_to_do:
            out.append("nothing to do    every tile of these time steps is already in the store")
        for key, error in sorted(self.failed.items()):
            out.append(f"  failed {key}: {error}")
        for key, failures in sorted(self.read_failures.items()):
            out.append(f"  read failures {key}: {len(failures)}")
        if self.failed:
            out.append("rerun the same command with --resume to finish the failed tiles")
        return out


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
    tiles: TileSummary | None = None
    validation: ValidationResult | None = None
    stac: str = ""
    overview_factors: list[int] = field(default_factory=list)
    objects: int | None = None

    @property
    def failed_tiles(self) -> int:
        return len(self.tiles.failed) if self.tiles is not None else 0

    def lines(self) -> list[str]:
        progress = (
            self.tiles.lines()
            if self.tiles is not None
            else [
                f"regions          {self.regions_written} written, {self.regions_skipped} skipped (resume)"
            ]
        )
        return [
            f"store            {self.store}",
            f"items / dates    {self.items} / {self.dates}",
            f"grid             {self.shape[0]} x {self.shape[1]} px",
            *progress,
            f"read failures    {len(self.read_failures)}",
            f"no valid obs.    {self.no_valid_pixels} pixel-dates",
            *([f"self-validation  {self.validation.line()}"] if self.validation else []),
            *(
                [f"overviews        {', '.join(f'1/{f}' for f in self.overview_factors)}"]
                if self.overview_factors
                else []
            ),
            *([f"objects          {self.objects} in the store"] if self.objects is not None else []),
            *([f"STAC collection  {self.stac}"] if self.stac else []),
            f"time             {self.seconds:.1f} s",
            *(
                [f"dask dashboard   {self.dashboard} (closed with the run)"]
                if self.dashboard
                else []
            ),
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


def prior_of(config: RunConfig) -> Any:
    """The configured prior (a small, picklable object; models load on the workers)."""
    return pipeline.priors.get_prior(config.prior, **dict(config.prior_options))


def restore_step(cube: Any, config: RunConfig, scene_sample: Any = None) -> Any:
    """Restore (and composite) a cube as ``config`` asks: the one place both flows call.

    ``scene_sample`` (``pipeline.cube.load_scene_sample``) spares the second read of the cube
    that a strided scene sample of a lazy cube costs.
    """
    return pipeline.restore(
        cube,
        prior=prior_of(config),
        mode=config.mode,
        period=config.period,
        scene_sample=scene_sample,
    )


def validation_step(cube: Any, config: RunConfig) -> ValidationResult | None:
    """Self-validation of ``cube`` with the run's prior and options (None when disabled)."""
    if not config.validation.enabled:
        return None
    from pipeline.validation import self_validate

    prior = prior_of(config)
    log.info("self-validation on held-out clear pixels (%s)", config.validation)
    return self_validate(cube, prior=prior, config=config.validation)


def run(
    config: RunConfig, *, progress: bool = True, items: list | None = None, geobox: Any = None
) -> RunSummary:
    """Run the whole pipeline for ``config``.

    ``items`` skips the search (replays, the demo); ``geobox`` (odc-geo) fixes the output grid
    exactly instead of deriving it from the search area, CRS and resolution. Areas larger
    than one tile (and ``config.tiled=True``) run tile by tile (``flows.tiled.run_tiled``).
    """
    from pipeline._reading import collect_read_failures, configure_gdal, planetary_computer_signer

    if geobox is None and config.use_tiles():
        from .tiled import run_tiled

        return publish_step(run_tiled(config, progress=progress, items=items), config)
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
        validation = validation_step(cube, config)  # step 2b: how good will it be?
        # scene parameters from the COGs' overviews, not from a second read of every chunk
        sample = load_scene_sample(items, config.cube, cube.odc.geobox, signer=signer)
        restored = restore_step(cube, config, sample)
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
