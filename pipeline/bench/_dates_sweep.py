"""The memory benchmark's parts that need no flow: a year of synthetic dates as COGs + STAC
items (written once, cached), the memory calculator's figures for a run, and the table.

``phyvlm-cr benchmark memory`` (``flows.benchmarks.memory``) runs the real flow on these
items at growing numbers of dates and measures each worker's peak RSS beside what
``pipeline.memory.estimate_memory`` predicts.

The year is written in batches of ``BATCH_DATES`` dates (``make_stack`` holds a batch's
truth and observation in memory: 146 dates of 1024 px x 10 bands at once would be 12 GB).
Every batch uses the same seed, so the landscape is the same all year (its phenology follows
the day of year) and the cloud cover pattern repeats from batch to batch: what the benchmark
measures is memory, and a surface that jumps every batch would not be a year of one place.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..memory import block_dates, effective_halo, estimate_memory

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_DATES",
    "INTERVAL_DAYS",
    "ORIGIN",
    "RESOLUTION_M",
    "CatalogSpec",
    "calculator_figures",
    "format_table",
    "read_year_catalog",
    "target_lines",
    "write_year_catalog",
]

#: Days between dates: 146 dates span a year (two satellites, overlapping orbits).
INTERVAL_DAYS = 2.5
#: Dates per ``make_stack`` call: 30 days, so every batch starts at midnight of a whole day.
BATCH_DATES = 12
#: Upper-left corner of the synthetic area (UTM 33N, Austria) and its pixel size.
ORIGIN = (360_000.0, 5_350_000.0)
RESOLUTION_M = 10.0
CRS = "EPSG:32633"
START = pd.Timestamp("2024-01-01")
_SETTINGS_FILE = "catalog.json"


class CatalogSpec:
    """What a cached catalog holds: its side (px), dates, bands and seed."""

    def __init__(self, size: int, dates: int, bands: Sequence[str], seed: int = 0) -> None:
        if size < 64:
            raise ValueError(f"the synthetic area must be at least 64 px, got {size}")
        if dates < 2:
            raise ValueError(f"the benchmark needs at least 2 dates, got {dates}")
        self.size, self.dates, self.bands, self.seed = int(size), int(dates), tuple(bands), seed

    def as_dict(self) -> dict[str, Any]:
        return {
            "size_px": self.size,
            "dates": self.dates,
            "bands": list(self.bands),
            "seed": self.seed,
            "interval_days": INTERVAL_DAYS,
            "batch_dates": BATCH_DATES,
        }

    def folder(self, workdir: Path) -> Path:
        return workdir / f"catalog-{self.size}px-{self.dates}d-{len(self.bands)}b-s{self.seed}"


def write_year_catalog(workdir: str | Path, spec: CatalogSpec) -> Path:
    """COGs + STAC items of ``spec`` under ``workdir`` (reused when already written with the
    same settings); return the ``items.json`` holding every date's item."""
    from ..synthetic import make_stack, write_stac_items

    folder = spec.folder(Path(workdir).resolve())
    settings = folder / _SETTINGS_FILE
    collection = folder / "items.json"
    if settings.exists() and collection.exists():
        if json.loads(settings.read_text()) == spec.as_dict():
            log.info("reusing the synthetic catalog in %s", folder)
            return collection
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    features: list[dict[str, Any]] = []
    batches = math.ceil(spec.dates / BATCH_DATES)
    for k in range(batches):
        n = min(BATCH_DATES, spec.dates - k * BATCH_DATES)
        start = START + pd.Timedelta(days=k * BATCH_DATES * INTERVAL_DAYS)
        stack = make_stack(
            (n, spec.size, spec.size),
            bands=spec.bands,
            start=str(start.date()),
            interval_days=INTERVAL_DAYS,
            seed=spec.seed,
            crs=CRS,
            origin=ORIGIN,
            resolution=RESOLUTION_M,
        )
        items = write_stac_items(stack, folder / f"batch{k:03d}")
        features += [it.to_dict(transform_hrefs=False) for it in items]
        del stack
        log.info(
            "synthetic catalog: %d of %d dates written (%.0f s)",
            len(features),
            spec.dates,
            time.perf_counter() - started,
        )
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    settings.write_text(json.dumps(spec.as_dict()))  # last: marks the catalog complete
    return collection


def read_year_catalog(collection: Path) -> list[Any]:
    """The catalog's items through the search a run uses (a local catalog), in date order."""
    from ..catalog import SearchParams, search

    features = json.loads(Path(collection).read_text())["features"]
    boxes = np.array([f["bbox"] for f in features], dtype=float)
    west, south = (float(v) for v in boxes[:, :2].min(axis=0))
    east, north = (float(v) for v in boxes[:, 2:].max(axis=0))
    days = sorted(f["properties"]["datetime"][:10] for f in features)
    found = search(
        SearchParams(
            bbox=(west, south, east, north),
            datetime=f"{days[0]}/{days[-1]}",
            catalog=str(collection),
        )
    )
    return sorted(found, key=lambda it: it.datetime)


def area_geobox(size: int) -> Any:
    """The ``size`` px square at the catalog's upper-left corner (odc-geo GeoBox)."""
    from odc.geo.geobox import GeoBox

    x0, y0 = ORIGIN
    side = size * RESOLUTION_M
    return GeoBox.from_bbox((x0, y0 - side, x0 + side, y0), crs=CRS, resolution=RESOLUTION_M)


def calculator_figures(
    *,
    area: int,
    chunk_size: int,
    dates: int,
    bands: int,
    halo: int,
    window_dates: int | None,
    time_block: int | None,
    threads_per_worker: int,
    worker_baseline_bytes: int,
) -> dict[str, Any]:
    """What ``pipeline.memory`` predicts for a run: the dates a task holds, the bytes of one
    task and of one worker (with the measured idle RSS as the worker's baseline)."""
    held = block_dates(dates, time_block, window_dates)
    est = estimate_memory(
        min(chunk_size, area),
        held,
        bands,
        halo=effective_halo(area, chunk_size, halo),
        threads_per_worker=threads_per_worker,
        worker_baseline_bytes=worker_baseline_bytes,
    )
    return {
        "task_dates": held,
        "calculator_task_mib": round(est.task_bytes / 2**20),
        "calculator_worker_mib": round(est.worker_bytes / 2**20),
    }


_COLUMNS = (
    ("dates", "dates", "{}"),
    ("task dates", "task_dates", "{}"),
    ("peak worker MiB", "max_worker_peak_mib", "{}"),
    ("x first run", "ratio", "{:.2f}"),
    ("calculator worker MiB", "calculator_worker_mib", "{}"),
    ("measured/calc", "measured_over_calculator", "{:.2f}"),
    ("driver peak MiB", "driver_peak_mib", "{}"),
    ("seconds", "seconds", "{:.0f}"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The sweep's rows as aligned text lines (the header first)."""
    widths = [max(len(title), 7) for title, _, _ in _COLUMNS]
    lines = ["  ".join(f"{title:>{w}}" for (title, _, _), w in zip(_COLUMNS, widths, strict=True))]
    for row in rows:
        cells = []
        for (_, key, fmt), w in zip(_COLUMNS, widths, strict=True):
            value = row.get(key)
            cells.append(f"{'-' if value is None else fmt.format(value):>{w}}")
        lines.append("  ".join(cells))
    return lines


def target_lines(targets: dict[str, dict[str, Any]]) -> list[str]:
    """One 'PASS'/'FAIL' line per target."""
    return [
        f"target {name}: {'PASS' if t['passed'] else 'FAIL'} ({t['detail']})"
        for name, t in targets.items()
    ]
