"""``phyvlm-cr benchmark memory``: peak memory per worker as the number of dates grows.

A year of synthetic 10-band dates (COGs + STAC items, ``pipeline.bench._dates_sweep``) is
written once into the work folder. The real flow (``flows.run.run``) then restores the first
T dates (12, 36, 73, 146) of a small area in dates mode with a time window, each run on a
fresh local cluster, and a sampler thread in each worker (``pipeline.bench._speed_sampler``)
records its peak RSS. Beside each figure the memory calculator's (``pipeline.memory``). A
last run makes the year's monthly composites of a 1024 px area.

Claims it checks: peak RSS per worker is flat in T (at most 1.2 x the 12-date figure), and
the yearly monthly composite of a 1024 px area finishes on the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HELP = "peak memory per worker at 12, 36, 73 and 146 dates, and a yearly monthly composite"
DESCRIPTION = (
    "Write a year of synthetic 10-band dates (COGs + STAC items, once, cached in --workdir), run "
    "the flow in dates mode with a time window over the first 12, 36, 73, 146 dates of a "
    "--size px area, each on a fresh local cluster, and print per run the peak RSS of the "
    "workers, its ratio to the first run's and the memory calculator's figure; then make the "
    "monthly composites of all dates over a --composite-size px area. Targets: peak flat "
    "(<= 1.2 x the first run's), composite finished. Defaults take about 17 minutes on 2 cores "
    "(4 for the sweep, 13 for the composite; plus 5 to write the catalog the first time). '--dates 3,6 --size 64 "
    "--chunk-size 64 --composite-size 64 --composite-chunk-size 64 --bands 4' is a smoke test."
)

_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12", "B05", "B06", "B07", "B8A")
#: Most a worker may grow over the first run's peak as the dates grow.
FLAT_TARGET = 1.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dates",
        default="12,36,73,146",
        help="numbers of dates T of the sweep, comma separated (default 12,36,73,146)",
    )
    p.add_argument("--bands", type=int, default=10, help="bands B, 1..10 (default 10)")
    p.add_argument(
        "--size", type=int, default=256, help="side of the sweep's area, px (default 256)"
    )
    p.add_argument(
        "--chunk-size", type=int, default=256, help="the sweep's chunk, px (default 256)"
    )
    p.add_argument(
        "--time-window-dates",
        type=int,
        default=2,
        help="references from at most N dates on each side (default 2)",
    )
    p.add_argument(
        "--time-block",
        type=int,
        default=5,
        help="target dates per time block of the sweep (default 5: with the window a task "
        "holds 9 dates, and so does one of the 12-date run)",
    )
    p.add_argument(
        "--composite-size",
        type=int,
        default=1024,
        help="side of the composite's area, px (default 1024; 0: no composite run)",
    )
    p.add_argument(
        "--composite-chunk-size",
        type=int,
        default=512,
        help="the composite run's chunk, px (default 512)",
    )
    p.add_argument(
        "--composite-time-block",
        type=int,
        default=12,
        help="target dates per time block of the composite run (default 12)",
    )
    p.add_argument(
        "--composite-dates",
        type=int,
        default=None,
        help="dates of the composite run (default: the sweep's largest)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument(
        "--memory-limit",
        default=None,
        help="memory limit per worker, e.g. 8GiB (default: the machine's memory / workers)",
    )
    p.add_argument(
        "--no-validation",
        dest="validation",
        action="store_false",
        help="skip the self-validation (by default each run validates itself, as real runs "
        "do: its window tasks hold a segment of three run tasks' dates, so they stay flat too)",
    )
    p.add_argument(
        "--workdir",
        "-o",
        default="/tmp/phyvlm-bench-memory",
        help="folder for the cached catalog, the stores and memory.json "
        "(default /tmp/phyvlm-bench-memory)",
    )


def _check(args: argparse.Namespace) -> list[int]:
    try:
        dates = sorted({int(v) for v in str(args.dates).split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--dates {args.dates!r}: give whole numbers, e.g. 12,36,73,146") from None
    if not dates or dates[0] < 2:
        raise ValueError(f"--dates {args.dates!r}: each run needs at least 2 dates")
    if not 1 <= args.bands <= len(_BANDS):
        raise ValueError(f"--bands must be 1..{len(_BANDS)}, got {args.bands}")
    for flag in ("size", "chunk_size", "composite_chunk_size"):
        if getattr(args, flag) < 64:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 64 px")
    if args.composite_size and args.composite_size < 64:
        raise ValueError("--composite-size must be at least 64 px (or 0: no composite run)")
    return dates


def _measure(
    args: argparse.Namespace,
    items: list,
    catalog: Path,
    *,
    dates: int,
    size: int,
    chunk: int,
    time_block: int,
    composite: bool,
    store: Path,
) -> dict[str, Any]:
    """One run of the flow over the first ``dates`` items of a ``size`` px area on a fresh
    cluster: its wall time, every worker's idle and peak RSS, the driver's, the calculator's."""
    from distributed import Client

    from flows.run import RunConfig, run
    from flows.steps import restore_halo
    from pipeline.archive import ArchiveConfig
    from pipeline.bench._dates_sweep import area_geobox, calculator_figures
    from pipeline.bench._speed_sampler import ProcessPeak, WorkerMemory, peak_figures
    from pipeline.catalog import SearchParams
    from pipeline.cluster import ClusterConfig, make_cluster
    from pipeline.cube import CubeConfig
    from pipeline.tiling import resolve_period
    from pipeline.validation import ValidationConfig

    chosen = items[:dates]
    first, last = chosen[0].datetime.date(), chosen[-1].datetime.date()
    bands = _BANDS[: args.bands]
    # A fresh cluster per run: each figure starts from idle workers, none inherits the
    # caches and freed-but-kept memory of the run before. The flow attaches to it by address,
    # the way a run joins a running scheduler, so the samplers started here see its tasks.
    own = ClusterConfig(
        n_workers=args.workers,
        threads_per_worker=args.threads,
        memory_limit=args.memory_limit,
        dashboard_address="127.0.0.1:0",
    )
    with make_cluster(own) as cluster, Client(cluster) as client:
        memory = WorkerMemory(client)
        config = RunConfig(
            search=SearchParams(datetime=f"{first}/{last}", catalog=str(catalog)),
            output=str(store),
            cube=CubeConfig(bands=bands, chunk_size=chunk),
            archive=ArchiveConfig(chunk_size=chunk, mode="overwrite"),
            cluster=ClusterConfig(kind="address", address=cluster.scheduler_address),
            mode="composite" if composite else "dates",
            period=resolve_period("monthly") if composite else None,
            validation=ValidationConfig(enabled=bool(args.validation)),
            time_window_dates=args.time_window_dates,
            time_block=time_block,
        )
        memory.reset()
        driver = ProcessPeak()
        driver.start()
        started = time.perf_counter()
        summary = run(config, progress=False, items=chosen, geobox=area_geobox(size))
        seconds = time.perf_counter() - started
        driver.stop.set()
        driver.join()
        peaks = memory.read()
        nthreads = max(client.nthreads().values())
    idle = max(p["baseline"] for p in peaks.values())
    row: dict[str, Any] = {
        "dates": dates,
        "size_px": size,
        "chunk_px": chunk,
        "time_block": time_block,
        "mode": config.mode,
        "output_steps": summary.dates,
        "read_failures": len(summary.read_failures),
        "seconds": round(seconds, 1),
        **peak_figures(peaks, driver),
    }
    row.update(
        calculator_figures(
            area=size,
            chunk_size=chunk,
            dates=dates,
            bands=len(bands),
            halo=restore_halo(config),
            window_dates=args.time_window_dates,
            time_block=time_block,
            threads_per_worker=nthreads,
            worker_baseline_bytes=idle,
        )
    )
    row["measured_over_calculator"] = round(
        row["max_worker_peak_mib"] / max(row["calculator_worker_mib"], 1), 2
    )
    return row


def main(args: argparse.Namespace) -> int:
    from pipeline.bench._dates_sweep import (
        CatalogSpec,
        format_table,
        read_year_catalog,
        target_lines,
        write_year_catalog,
    )

    sweep = _check(args)
    composite_dates = args.composite_dates or sweep[-1]
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = CatalogSpec(
        size=max(args.size, args.composite_size),
        dates=max(sweep[-1], composite_dates if args.composite_size else 0),
        bands=_BANDS[: args.bands],
    )
    started = time.perf_counter()
    # written in a child process: the generator's arrays would stay in this process's RSS
    # (freed, not returned to the system) and inflate the driver's figures
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        catalog = pool.submit(write_year_catalog, workdir, spec).result()
    items = read_year_catalog(catalog)
    print(f"catalog: {len(items)} dates of {spec.size} px in {time.perf_counter() - started:.0f} s")

    rows: list[dict[str, Any]] = []
    for dates in sweep:
        row = _measure(
            args,
            items,
            catalog,
            dates=dates,
            size=args.size,
            chunk=args.chunk_size,
            time_block=args.time_block,
            composite=False,
            store=workdir / f"dates{dates}.zarr",
        )
        row["ratio"] = (
            round(row["max_worker_peak_mib"] / rows[0]["max_worker_peak_mib"], 2) if rows else 1.0
        )
        rows.append(row)
        print(
            f"{dates} dates: {row['seconds']:.0f} s, peak RSS per worker "
            f"{sorted(row['worker_peak_mib'].values())} MiB (idle "
            f"{sorted(row['worker_idle_mib'].values())}), calculator "
            f"{row['calculator_worker_mib']} MiB, driver {row['driver_peak_mib']} MiB"
        )
    yearly = None
    if args.composite_size:
        try:
            yearly = _measure(
                args,
                items,
                catalog,
                dates=composite_dates,
                size=args.composite_size,
                chunk=args.composite_chunk_size,
                time_block=args.composite_time_block,
                composite=True,
                store=workdir / f"composite{composite_dates}.zarr",
            )
            yearly["finished"] = True
        except Exception as exc:  # noqa: BLE001 - a failure is the figure reported
            yearly = {"dates": composite_dates, "finished": False, "error": repr(exc)}

    worst = max(r["ratio"] for r in rows)
    targets = {
        "flat": {
            "passed": worst <= FLAT_TARGET,
            "detail": f"largest peak {worst:.2f} x the {rows[0]['dates']}-date run's, "
            f"target <= {FLAT_TARGET}",
        }
    }
    if yearly is not None:
        targets["composite_finished"] = {
            "passed": bool(yearly["finished"]),
            "detail": (
                f"{yearly['dates']} dates, {args.composite_size} px, "
                f"{yearly.get('output_steps', 0)} monthly composites"
                if yearly["finished"]
                else yearly["error"]
            ),
        }
    setting = {
        "catalog": spec.as_dict(),
        "bands": list(_BANDS[: args.bands]),
        "size_px": args.size,
        "chunk_px": args.chunk_size,
        "time_window_dates": args.time_window_dates,
        "time_block": args.time_block,
        "composite_size_px": args.composite_size,
        "composite_chunk_px": args.composite_chunk_size,
        "composite_time_block": args.composite_time_block,
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "memory_limit": args.memory_limit,
        "validation": bool(args.validation),
    }
    report = {"setting": setting, "sweep": rows, "composite": yearly, "targets": targets}
    out = workdir / "memory.json"
    out.write_text(json.dumps(report, indent=1))

    print("\n".join(format_table(rows)))
    if yearly is not None and yearly["finished"]:
        print(
            f"monthly composite: {yearly['dates']} dates of {args.composite_size} px in "
            f"{args.composite_chunk_size} px chunks -> {yearly['output_steps']} months in "
            f"{yearly['seconds']:.0f} s; peak worker {yearly['max_worker_peak_mib']} MiB "
            f"(calculator {yearly['calculator_worker_mib']} MiB, a task holds "
            f"{yearly['task_dates']} dates), driver {yearly['driver_peak_mib']} MiB"
        )
    elif yearly is not None:
        print(f"monthly composite of {yearly['dates']} dates FAILED: {yearly['error']}")
    print("\n".join(target_lines(targets)))
    print(f"setting: {setting}; figures in {out}")
    return 0 if all(t["passed"] for t in targets.values()) else 1
