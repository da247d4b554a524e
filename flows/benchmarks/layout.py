"""``phyvlm-cr benchmark layout``: objects and write time of an archive, with and without
Zarr 3 sharding.

A restored archive's variables (bands + quality layers, float32, with the spatial structure
and NaN holes of real output) over an area of ``--tiles`` x ``--tiles`` tiles are written
tile by tile, as a tiled run writes them, once per layout; the table gives the objects in
the store, the write time and the store size. The default layout of a tiled run is the
measured winner (README, "Archive layout").
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

HELP = "objects and write time of an archive: one object per chunk vs Zarr 3 shards"
DESCRIPTION = (
    "Write the same synthetic restored archive (11 float32 layers + 1 uint8 over --tiles x "
    "--tiles tiles of --tile-size px, --dates dates) tile by tile with each layout: Zarr 2, "
    "Zarr 3 one object per chunk, Zarr 3 sharded by tile; print objects, seconds and MB. "
    "'--tiles 2 --tile-size 512 --chunk-size 256' takes a few seconds."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiles", type=int, default=3, help="n of the n x n tiles (default 3)")
    p.add_argument("--tile-size", type=int, default=2048, help="tile side, px (default 2048)")
    p.add_argument("--chunk-size", type=int, default=512, help="archive chunk, px (default 512)")
    p.add_argument("--dates", type=int, default=2, help="dates (default 2)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")


def _tile(size: int, dates: int, seed: int) -> Any:
    import numpy as np
    import xarray as xr

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    smooth = (0.1 + 0.05 * np.sin(6 * xx) * np.cos(4 * yy)).astype("float32")
    layers: dict[str, Any] = {}
    names = [f"B{i:02d}" for i in (2, 3, 4, 5, 6, 7, 8, 11, 12)] + ["confidence", "gate"]
    for k, name in enumerate(names):
        data = smooth[None] * (1 + 0.1 * k) + rng.normal(0, 0.01, (dates, size, size))
        data[:, : size // 8, : size // 8] = np.nan  # a hole: no valid observation
        layers[name] = (("time", "y", "x"), data.astype("float32"))
    nvo = np.zeros((dates, size, size), dtype="uint8")
    nvo[:, : size // 8, : size // 8] = 1
    layers["no_valid_observation"] = (("time", "y", "x"), nvo)
    return xr.Dataset(layers)


def measure(
    tiles: int, tile_size: int, chunk_size: int, dates: int, zarr_format: int, shard: int | None
) -> dict[str, Any]:
    import dask.array as da
    import numpy as np
    import pandas as pd
    import xarray as xr

    from pipeline.archive import ArchiveConfig
    from pipeline.store_objects import count_objects
    from pipeline.tiled_archive import tile_write

    config = ArchiveConfig(zarr_format=zarr_format, chunk_size=chunk_size, shard_size=shard)  # type: ignore[arg-type]
    side = tiles * tile_size
    sample = _tile(16, dates, 0)
    template = xr.Dataset(
        {
            n: (("time", "y", "x"), da.empty((dates, side, side), dtype=v.dtype, chunks=-1))
            for n, v in sample.data_vars.items()
        },
        coords={
            "time": pd.date_range("2024-05-01", periods=dates, freq="5D"),
            "y": 5_000_000.0 - 10.0 * np.arange(side),
            "x": 500_000.0 + 10.0 * np.arange(side),
        },
    ).rio.write_crs("EPSG:32633")
    from pipeline.archive import prepare_for_zarr

    folder = Path(tempfile.mkdtemp(prefix="phyvlm-layout-"))
    store = folder / "archive.zarr"
    try:
        prepared, encoding = prepare_for_zarr(template, config, rechunk_dask=False)
        prepared.to_zarr(
            store,
            mode="w",
            compute=False,
            encoding=encoding,
            zarr_format=zarr_format,
            consolidated=False,
        )
        started = time.perf_counter()
        for row in range(tiles):
            for col in range(tiles):
                part = _tile(tile_size, dates, row * tiles + col)
                region = {
                    "time": slice(0, dates),
                    "y": slice(row * tile_size, (row + 1) * tile_size),
                    "x": slice(col * tile_size, (col + 1) * tile_size),
                }
                tile_write(part, store, region, config).compute()
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        return {"objects": count_objects(store), "seconds": round(seconds, 2), "mb": size / 1e6}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    layouts = [
        ("zarr 2, one object per chunk", 2, None),
        ("zarr 3, one object per chunk", 3, None),
        (f"zarr 3, shards of {args.tile_size} px (a tile)", 3, args.tile_size),
    ]
    results = []
    print(
        f"{args.tiles}x{args.tiles} tiles of {args.tile_size} px, chunks {args.chunk_size} px, "
        f"{args.dates} dates, 12 layers"
    )
    print(f"{'layout':42s} {'objects':>8s} {'write s':>8s} {'MB':>8s}")
    for name, fmt, shard in layouts:
        figures = measure(args.tiles, args.tile_size, args.chunk_size, args.dates, fmt, shard)
        results.append({"layout": name, **figures})
        print(f"{name:42s} {figures['objects']:8d} {figures['seconds']:8.2f} {figures['mb']:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0
