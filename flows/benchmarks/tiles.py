"""``phyvlm-cr benchmark tiles``: peak memory per worker of tiled runs as the area grows.

One synthetic tile (COGs + STAC items) is written ``n x n`` times side by side; tiled runs of
1 x 1, 2 x 2, ... of those tiles then go through ``flows.tiled.run_tiled`` on one local
cluster. A sampler thread in each worker (``pipeline.bench._speed_sampler``) records its
peak RSS during each run, and one in this process records the driver's. Flat peaks as the
tile count grows are the claim this measures: each tile is its own small graph.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

HELP = "peak memory per worker of tiled runs at growing areas (1, 4, 9 tiles)"
DESCRIPTION = (
    "Write one synthetic tile of --tile-size px (COGs + STAC items) side by side n x n times, run "
    "the tiled pipeline over 1x1, 2x2, ... of them on a local cluster and print, per area, the "
    "peak RSS of every worker and of the driver process. Defaults: 2048 px tiles in 1024 px "
    "chunks, 4 dates, 4 bands, grids 1,2,3, 2 workers x 1 thread. '--tile-size 256 --chunk-size "
    "128 --grids 1,2' is a smoke test of a few seconds."
)

_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12", "B05", "B06", "B07", "B8A")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile-size", type=int, default=2048, help="tile side, px (default 2048)")
    p.add_argument(
        "--chunk-size", type=int, default=1024, help="archive and cube chunk, px (default 1024)"
    )
    p.add_argument("--dates", type=int, default=4, help="dates T (default 4)")
    p.add_argument("--bands", type=int, default=4, help="bands B, 1..10 (default 4)")
    p.add_argument(
        "--grids", default="1,2,3", help="n of the n x n areas, comma separated (default 1,2,3)"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiles-in-flight", type=int, default=None, help="default: one per worker")
    p.add_argument(
        "--output",
        "-o",
        default="phyvlm-bench-tiles",
        help="folder for COGs, stores and tiles.json",
    )


def _write_catalog(
    out: Path, tile: int, n: int, dates: int, bands: tuple[str, ...]
) -> tuple[float, float]:
    """n x n copies of one synthetic tile, shifted by whole tiles; return the upper-left corner."""
    from pipeline.synthetic import make_stack, write_stac_items

    step = tile * 10.0
    origin = (step * round(360_000.0 / step), step * round(5_350_000.0 / step))
    stack = make_stack((dates, tile, tile), bands=bands, origin=origin, seed=0)
    for row in range(n):
        for col in range(n):
            shifted = stack.observed.assign_coords(
                x=stack.observed.x + col * step, y=stack.observed.y - row * step
            )
            copy = dataclasses.replace(stack, observed=shifted)
            # Distinct (made-up) MGRS names keep the item ids apart.
            name = f"33U{'UVWXYZ'[col % 6]}{'PQRSTU'[row % 6]}"
            write_stac_items(copy, out / f"r{row}c{col}", mgrs_tile=name)
    return origin


def _measure(
    args: argparse.Namespace,
    client: Any,
    memory: Any,
    catalog: Path,
    bands: tuple[str, ...],
    n: int,
    origin: tuple[float, float],
    to_lonlat: Any,
) -> dict[str, Any]:
    """One tiled run over n x n tiles; its wall time and peak RSS per worker and driver."""
    from flows.run import RunConfig
    from flows.tiled import run_tiled
    from pipeline.archive import ArchiveConfig
    from pipeline.bench._speed_sampler import ProcessPeak, peak_figures
    from pipeline.catalog import SearchParams
    from pipeline.cube import CubeConfig
    from pipeline.tiling import TilingConfig

    x0, y0 = origin
    step = args.tile_size * 10.0
    # The area: the n x n tiles' square 1 % in from its edges, as a lon/lat polygon (a
    # lon/lat box would stick out of the square: meridians converge).
    inset = 0.01 * step
    ring_x = [x0 + inset, x0 + n * step - inset, x0 + n * step - inset, x0 + inset]
    ring_y = [y0 - inset, y0 - inset, y0 - n * step + inset, y0 - n * step + inset]
    lons, lats = to_lonlat.transform(ring_x, ring_y)
    ring = [[lo, la] for lo, la in zip(lons, lats, strict=True)]
    polygon = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    config = RunConfig(
        search=SearchParams(intersects=polygon, datetime="2024-01-01/2024-12-31", catalog=str(catalog)),
        output=str(Path(args.output).resolve() / f"grid{n}.zarr"),
        cube=CubeConfig(bands=bands, chunk_size=args.chunk_size),
        archive=ArchiveConfig(chunk_size=args.chunk_size, mode="overwrite"),
        tiling=TilingConfig(tile_size=args.tile_size, tiles_in_flight=args.tiles_in_flight),
    )  # fmt: skip
    memory.reset()
    driver = ProcessPeak()
    driver.start()
    t0 = time.perf_counter()
    summary = run_tiled(config, progress=False, client=client)
    seconds = time.perf_counter() - t0
    driver.stop.set()
    driver.join()
    peaks = memory.read()
    assert summary.tiles is not None
    return {
        "tiles": summary.tiles.written,
        "failed": len(summary.tiles.failed),
        "seconds": round(seconds, 1),
        **peak_figures(peaks, driver),
    }


def main(args: argparse.Namespace) -> int:
    from distributed import Client, LocalCluster
    from pyproj import Transformer

    from pipeline.bench._speed_sampler import WorkerMemory
    from pipeline.cluster import SINGLE_THREADED_LIBS

    grids = [int(v) for v in str(args.grids).split(",") if v.strip()]
    bands = _BANDS[: max(1, min(args.bands, len(_BANDS)))]
    out = Path(args.output).resolve()
    catalog = out / "catalog"
    started = time.perf_counter()
    x0, y0 = _write_catalog(catalog, args.tile_size, max(grids), args.dates, bands)
    print(
        f"catalog: {max(grids) ** 2} tile copies written in {time.perf_counter() - started:.0f} s"
    )
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    rows: list[dict[str, Any]] = []
    for n in grids:
        # A fresh cluster per area: each figure starts from idle workers, none inherits
        # the caches and freed-but-kept memory of the run before.
        with (
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=args.threads,
                processes=True,
                dashboard_address="127.0.0.1:0",
                env=dict(SINGLE_THREADED_LIBS),
            ) as cluster,
            Client(cluster) as client,
        ):
            memory = WorkerMemory(client)
            rows.append(_measure(args, client, memory, catalog, bands, n, (x0, y0), to_lonlat))
            row = rows[-1]
            print(
                f"{n}x{n}: {row['tiles']} tiles in {row['seconds']:.0f} s, peak RSS per worker "
                f"{sorted(row['worker_peak_mib'].values())} MiB (idle "
                f"{sorted(row['worker_idle_mib'].values())}), driver "
                f"{row['driver_start_mib']} -> {row['driver_peak_mib']} MiB"
            )
    setting = {
        "tile_size": args.tile_size,
        "chunk_size": args.chunk_size,
        "dates": args.dates,
        "bands": list(bands),
        "workers": args.workers,
        "threads_per_worker": args.threads,
    }
    (out / "tiles.json").write_text(json.dumps({"setting": setting, "runs": rows}, indent=1))
    print(f"{'tiles':>6} {'seconds':>8} {'max worker peak MiB':>20} {'driver peak MiB':>16}")
    for row in rows:
        print(
            f"{row['tiles']:>6} {row['seconds']:>8} {row['max_worker_peak_mib']:>20} {row['driver_peak_mib']:>16}"
        )
    print(f"setting: {setting}; figures in {out / 'tiles.json'}")
    return 1 if any(r["failed"] for r in rows) else 0
