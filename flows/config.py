"""What a run is asked to do (``RunConfig``) and what it did (``RunSummary``).

Shared by the run's steps (``flows.steps``), the run path (``flows.tiled``) and the entry
point (``flows.run``); it imports none of them, so the flows have no import circle
(``config`` <- ``steps`` <- ``tiled`` <- ``run`` <- ``cli``, ``demo``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.archive import ArchiveConfig
from pipeline.catalog import SearchParams
from pipeline.cluster import ClusterConfig
from pipeline.cube import CubeConfig
from pipeline.priors import DEFAULT_PRIOR
from pipeline.tiling import TilingConfig, area_fits_one_tile, area_geometry
from pipeline.validation import ValidationConfig, ValidationResult

__all__ = ["Mode", "RunConfig", "RunSummary", "TileSummary"]

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
    prior: str = DEFAULT_PRIOR
    #: keywords of the prior (e.g. {"model": "/models/Qwen2.5-VL-3B-Instruct"} for "vlm")
    prior_options: Mapping[str, Any] = field(default_factory=dict)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    #: None: the tile lattice when the area is larger than one tile, else one tile on the
    #: area's own grid; True/False forces either way.
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
    #: a date's references come from at most this many dates on each side (None: unbounded);
    #: with it the series is restored in time blocks, so memory does not grow with the search
    time_window_dates: int | None = None
    #: target dates per time block (None: the largest that fits the workers' memory limit)
    time_block: int | None = None

    def __post_init__(self) -> None:
        for name in ("time_window_dates", "time_block"):
            value = getattr(self, name)
            if value is not None and value < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if self.mode not in ("dates", "composite"):
            raise ValueError(f"mode must be 'dates' or 'composite', not {self.mode!r}")
        if self.period is not None and self.mode != "composite":
            raise ValueError("--period is for --mode composite (one composite per period)")

    def use_tiles(self) -> bool:
        """Whether this run is cut on the tile lattice (else: one tile on the area's own
        grid; ``flows.tiled.plan_run``)."""
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

    def validation_cost(self) -> str:
        """The self-validation's seconds and what it adds to the rest of the run.

        Its windows run before the tiles, on the same workers, and nothing else waits on
        them, so its seconds are what the run would save without it (measured on the demo:
        a run without validation was shorter by its seconds to within this machine's
        run-to-run noise); the share is over the run's other seconds, not over a total
        that already holds them."""
        v = self.validation
        if v is None:
            return ""
        rest = self.seconds - v.seconds
        share = f"{100 * v.seconds / rest:.0f} % on top of the run's other {rest:.1f} s"
        return f"{v.seconds:.1f} s ({share})" if rest > 0 else f"{v.seconds:.1f} s"

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
            *([f"validation time  {self.validation_cost()}"] if self.validation else []),
            *(
                [f"overviews        {', '.join(f'1/{f}' for f in self.overview_factors)}"]
                if self.overview_factors
                else []
            ),
            *(
                [f"objects          {self.objects} in the store"]
                if self.objects is not None
                else []
            ),
            *([f"STAC collection  {self.stac}"] if self.stac else []),
            f"time             {self.seconds:.1f} s",
            *(
                [f"dask dashboard   {self.dashboard} (closed with the run)"]
                if self.dashboard
                else []
            ),
        ]
