"""Zarr archive: CRS round trip in both formats, chunk alignment, refuse/resume/overwrite."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr
import zarr

from pipeline.archive import (
    COMPLETE_ATTR,
    DONE_ATTR,
    ArchiveConfig,
    ArchiveExistsError,
    ArchiveMismatchError,
    open_archive,
    write_archive,
)


def _dataset(ny=50, nx=70, nt=3, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    x = 359135.0 + 10 * np.arange(nx)
    y = 5352335.0 - 10 * np.arange(ny)
    time = pd.date_range("2024-05-01", periods=nt, freq="10D")
    ds = xr.Dataset(
        {
            "B04": (("time", "y", "x"), rng.random((nt, ny, nx), dtype="float32")),
            "confidence": (("time", "y", "x"), rng.random((nt, ny, nx), dtype="float32")),
            "no_valid_observation": (
                ("time", "y", "x"),
                (rng.random((nt, ny, nx)) > 0.9).astype("uint8"),
            ),
            "gamma": (("time",), np.array([0.5, 1.0, 1.5], dtype="float32")),
        },
        coords={"time": time, "y": y, "x": x},
        attrs={"prior": "physics", "prior_params": {"t_min": 0.1}},
    )
    ds["B04"][0, :3, :3] = np.nan
    return ds.rio.write_crs("EPSG:32633")


@pytest.mark.parametrize("fmt", [2, 3])
def test_round_trip_keeps_data_crs_and_attrs(tmp_path, fmt):
    ds = _dataset().chunk({"time": -1, "y": 20, "x": 30})
    store = tmp_path / f"out{fmt}.zarr"
    summary = write_archive(
        ds,
        store,
        ArchiveConfig(zarr_format=fmt, chunk_size=32),
        attrs={"item_ids": ("a", "b")},
        progress=False,
    )
    assert summary["regions_written"] == 2 * 3
    back = open_archive(store)
    assert back.rio.crs.to_epsg() == 32633
    assert back["B04"].encoding["chunks"] == (1, 32, 32)
    xr.testing.assert_equal(back["B04"].load(), ds["B04"].load())
    np.testing.assert_array_equal(
        back["no_valid_observation"].values, ds["no_valid_observation"].values
    )
    np.testing.assert_array_equal(back["gamma"].values, ds["gamma"].values)
    assert back.attrs["item_ids"] == ["a", "b"]
    assert back.attrs[COMPLETE_ATTR] is True
    assert '"t_min": 0.1' in back.attrs["prior_params"]
    group = zarr.open_group(str(store), mode="r")
    assert group.metadata.zarr_format == fmt
    codec = str(group["B04"].compressors[0]).lower()
    assert "zstd" in codec and "blosc" in codec
    # rioxarray sees the same grid
    assert back.rio.transform() == ds.rio.transform()


def test_existing_store_is_refused_and_left_untouched(tmp_path):
    store = tmp_path / "out.zarr"
    write_archive(_dataset(), store, ArchiveConfig(chunk_size=32), progress=False)
    before = open_archive(store)["B04"].load()
    with pytest.raises(ArchiveExistsError, match="--resume.*--overwrite"):
        write_archive(_dataset(seed=1), store, ArchiveConfig(chunk_size=32), progress=False)
    xr.testing.assert_equal(open_archive(store)["B04"].load(), before)


def test_overwrite_replaces(tmp_path):
    store = tmp_path / "out.zarr"
    write_archive(_dataset(), store, ArchiveConfig(chunk_size=32), progress=False)
    new = _dataset(seed=7)
    write_archive(new, store, ArchiveConfig(chunk_size=32, mode="overwrite"), progress=False)
    xr.testing.assert_equal(open_archive(store)["B04"].load(), new["B04"])


def test_resume_skips_done_regions_and_equals_uninterrupted(tmp_path):
    ds = _dataset().chunk({"y": 32, "x": 32})
    full = tmp_path / "full.zarr"
    write_archive(ds, full, ArchiveConfig(chunk_size=32), progress=False)

    # An interrupted run: a callback that dies after the first batch of regions.
    partial = tmp_path / "partial.zarr"

    class Boom(RuntimeError):
        pass

    def die(done, total):
        raise Boom

    with pytest.raises(Boom):
        write_archive(ds, partial, ArchiveConfig(chunk_size=32), progress=die)
    attrs = zarr.open_group(str(partial), mode="r").attrs
    assert attrs[COMPLETE_ATTR] is False
    first_done = list(attrs[DONE_ATTR])
    assert 0 < len(first_done) < 6

    seen = []
    summary = write_archive(
        ds,
        partial,
        ArchiveConfig(chunk_size=32, mode="resume"),
        progress=lambda d, t: seen.append(d),
    )
    assert summary["regions_skipped"] == len(first_done)
    assert summary["regions_written"] == 6 - len(first_done)
    a, b = open_archive(full).load(), open_archive(partial).load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


def test_resume_of_another_run_is_refused(tmp_path):
    store = tmp_path / "out.zarr"
    write_archive(_dataset(), store, ArchiveConfig(chunk_size=32), progress=False)
    with pytest.raises(ArchiveMismatchError, match="same area, dates and bands"):
        write_archive(
            _dataset(nx=90), store, ArchiveConfig(chunk_size=32, mode="resume"), progress=False
        )


# --------------------------------------------------------------------------- on a cluster


def _smooth(block, block_info=None, fail_block=None):
    if fail_block is not None and tuple(block_info[None]["chunk-location"]) == fail_block:
        raise RuntimeError("region failed")
    return block * 2.0


def _halo_dataset(fail_block: tuple | None = None) -> xr.Dataset:
    """A lazy dataset whose every output chunk reads a halo from its neighbours' input chunks
    (as ``restore`` does); the block ``fail_block`` of the halo step raises."""
    import dask.array as da

    raw = da.ones((3, 64, 96), chunks=(3, 32, 32), dtype="float32")
    smooth = functools.partial(_smooth, fail_block=fail_block)
    out = raw.map_overlap(smooth, depth={0: 0, 1: 4, 2: 4}, boundary="none", dtype="float32")
    ds = _dataset(ny=64, nx=96).drop_vars(["confidence", "no_valid_observation"])
    return ds.assign(B04=(("time", "y", "x"), out))


@contextlib.contextmanager
def _local_client(threads: int):
    """An in-process cluster on loopback TCP (the task stream sees every task)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            processes=False,
            n_workers=1,
            threads_per_worker=threads,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_a_cluster_write_reads_every_input_chunk_once(tmp_path):
    """Regions share the chunks their halos read: each COG chunk is read once, not per region."""
    from distributed import get_task_stream

    from pipeline.cube import CubeConfig, load_cube
    from pipeline.restore import restore
    from pipeline.synthetic import make_stack, write_stac_items

    stack = make_stack((3, 128, 128), bands=("B04", "B08"), seed=2)
    items = write_stac_items(stack, tmp_path / "cogs", blocksize=64)
    config = CubeConfig(bands=("B04", "B08"), chunk_size=64, include_scl=True)
    with _local_client(threads=1) as client:
        restored = restore(load_cube(items, config))  # 2 x 2 chunks, each reading all 4 (halo)
        with get_task_stream(client) as stream:
            write_archive(
                restored,
                tmp_path / "r.zarr",
                ArchiveConfig(chunk_size=64),
                progress=False,
                client=client,
            )
    reads = [t["key"] for t in stream.data if str(t["key"][0]).split("-")[0] == "B04"]
    assert len(reads) == len(set(reads)) == 3 * 4  # dates x chunks
    assert np.isfinite(open_archive(tmp_path / "r.zarr")["B04"].values).mean() > 0.9


def test_a_failed_region_on_a_cluster_keeps_the_landed_ones_and_resume_completes(tmp_path):
    store = tmp_path / "p.zarr"
    with _local_client(threads=1) as client:
        with pytest.raises(RuntimeError, match="region failed"):
            write_archive(
                _halo_dataset(fail_block=(0, 1, 2)),
                store,
                ArchiveConfig(chunk_size=32),
                progress=False,
                client=client,
            )
        attrs = zarr.open_group(str(store), mode="r").attrs
        assert attrs[COMPLETE_ATTR] is False
        assert "y32_x64" not in attrs[DONE_ATTR]  # the failed region (block (1, 2)) is not recorded
        summary = write_archive(
            _halo_dataset(),
            store,
            ArchiveConfig(chunk_size=32, mode="resume"),
            progress=False,
            client=client,
        )
        assert summary["regions_skipped"] == len(attrs[DONE_ATTR])
        assert summary["regions_skipped"] + summary["regions_written"] == 6
        full = tmp_path / "full.zarr"
        write_archive(
            _halo_dataset(), full, ArchiveConfig(chunk_size=32), progress=False, client=client
        )
    xr.testing.assert_identical(
        open_archive(full).load().drop_attrs(), open_archive(store).load().drop_attrs()
    )
