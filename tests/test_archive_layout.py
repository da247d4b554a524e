"""Zarr 3 sharding: the same data in fewer objects, region writes aligned to shards, tiled runs
sharded by tile by default; the object count the run summary prints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import xarray as xr

from flows.run import RunConfig
from flows.tiled import with_tile_shards
from pipeline.archive import ArchiveConfig, write_archive
from pipeline.catalog import SearchParams
from pipeline.store_objects import count_objects
from pipeline.tiling import TilingConfig

from .test_archive import _dataset


def _chunk_files(store: Path, name: str) -> int:
    return sum(1 for p in (store / name).rglob("*") if p.is_file() and p.name != "zarr.json")


def test_a_sharded_archive_holds_the_same_data_in_fewer_objects(tmp_path):
    ds = _dataset(ny=50, nx=70, nt=3).chunk({"y": 25, "x": 35})
    plain, sharded = tmp_path / "plain.zarr", tmp_path / "sharded.zarr"
    write_archive(ds, plain, ArchiveConfig(chunk_size=16), progress=False)
    summary = write_archive(
        ds, sharded, ArchiveConfig(chunk_size=16, shard_size=64), progress=False
    )
    assert summary["regions_written"] == 2  # one region per shard: (50/64 -> 1) x (70/64 -> 2)
    # per spatial variable: one object per date and chunk (4 x 5) vs per date and shard (1 x 2)
    assert _chunk_files(plain, "B04") == 3 * 4 * 5
    assert _chunk_files(sharded, "B04") == 3 * 1 * 2
    assert _chunk_files(sharded, "confidence") == 3 * 1 * 2
    for store in (plain, sharded):
        assert count_objects(store) == sum(1 for p in store.rglob("*") if p.is_file())
    assert count_objects(sharded) < count_objects(plain) / 4
    meta = json.loads((sharded / "B04" / "zarr.json").read_text())
    (codec,) = [c for c in meta["codecs"] if c["name"] == "sharding_indexed"]
    assert codec["configuration"]["chunk_shape"] == [1, 16, 16]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 64, 64]
    a = xr.open_zarr(plain, decode_coords="all").load()
    b = xr.open_zarr(sharded, decode_coords="all").load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert b.rio.crs.to_epsg() == 32633


def test_shard_settings_are_checked():
    with pytest.raises(ValueError, match="needs zarr_format 3"):
        ArchiveConfig(zarr_format=2, chunk_size=256, shard_size=1024)
    with pytest.raises(ValueError, match="multiple of chunk_size 256"):
        ArchiveConfig(chunk_size=256, shard_size=600)


def test_tiled_zarr_3_runs_shard_by_tile_unless_told_otherwise():
    base = RunConfig(
        search=SearchParams(bbox=(13, 48, 13.1, 48.1), datetime="2024-05"),
        output="x.zarr",
        archive=ArchiveConfig(chunk_size=512),
        tiling=TilingConfig(tile_size=2048),
    )
    assert with_tile_shards(base).archive.shard_size == 2048
    assert (
        with_tile_shards(dataclasses.replace(base, shard_by_tile=False)).archive.shard_size is None
    )
    v2 = dataclasses.replace(base, archive=ArchiveConfig(zarr_format=2, chunk_size=512))
    assert with_tile_shards(v2).archive.shard_size is None
    own = dataclasses.replace(base, archive=ArchiveConfig(chunk_size=512, shard_size=1024))
    assert with_tile_shards(own).archive.shard_size == 1024


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard-size", "2048", "--no-shards"], "contradict"),
        (["--shard-size", "2048", "--zarr-format", "2"], "needs --zarr-format 3"),
        (["--shard-size", "1000"], "multiple of chunk_size 1024"),
    ],
)
def test_bad_shard_flags_exit_2_naming_the_fix(flags, message, capsys):
    from flows.cli import EXIT_USAGE, main

    argv = ["-q", "run", "--bbox", "13,48,13.1,48.1", "--datetime", "2024-05", "-o", "x.zarr"]
    assert main([*argv, *flags]) == EXIT_USAGE
    assert message in capsys.readouterr().err
