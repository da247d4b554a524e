"""Tiled runs end to end on synthetic COGs: cluster vs single process, a killed worker, a killed
run resumed, periodic composites appended, an area across two UTM zones, failed tiles.

Every run here writes a 128 x 128 px area as 2 x 2 tiles of 64 px (one chunk each: small, so
the whole module stays fast); the reference is the same run computed in this process by
dask's synchronous scheduler.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from pyproj import Transformer

from flows.cli import EXIT_FAILED, EXIT_OK, main
from flows.run import RunConfig
from flows.steps import load_step
from flows.tiled import TilePlan, output_schema, plan_grid, prepare_store, run_tiled, time_axis
from pipeline.archive import ArchiveConfig, ArchiveMismatchError
from pipeline.catalog import SearchParams
from pipeline.cluster import ClusterConfig
from pipeline.cube import CubeConfig
from pipeline.synthetic import make_stack, write_stac_items
from pipeline.tiled_archive import TILE_DONE_VAR
from pipeline.tiling import EQUAL_AREA_EUROPE, TilingConfig

ENTRY_POINT = Path(sys.executable).with_name("phyvlm-cr")
BANDS = ("B02", "B03", "B04", "B08")
DATES = "2024-03-01/2024-04-30"
TILE, CHUNK = 64, 64
# Upper-left corner on the 640 m lattice of 64-px tiles: the stack is exactly 2 x 2 tiles.
ORIGIN = (640 * 564.0, 640 * 8360.0)
SIZE = 128


def _lonlat_bbox(
    crs: str, west: float, south: float, east: float, north: float
) -> tuple[float, ...]:
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    xs, ys = to_lonlat.transform([west, east, west, east], [south, south, north, north])
    return (min(xs), min(ys), max(xs), max(ys))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """Four cloudy dates (03-11, 03-21, 03-31, 04-10) over 1.28 x 1.28 km in UTM 33N."""
    out = tmp_path_factory.mktemp("tiled-catalog")
    stack = make_stack((4, SIZE, SIZE), bands=BANDS, origin=ORIGIN, start="2024-03-11", seed=3)
    write_stac_items(stack, out)
    return out


# 200 m inside the stack, so the area's UTM extent stays within its 2 x 2 tiles.
AREA = _lonlat_bbox(
    "EPSG:32633",
    ORIGIN[0] + 200,
    ORIGIN[1] - SIZE * 10 + 200,
    ORIGIN[0] + SIZE * 10 - 200,
    ORIGIN[1] - 200,
)


def _config(
    catalog: Path, store: Path, *, mode="dates", period=None, datetime=DATES, resume=False, **tiling
) -> RunConfig:
    return RunConfig(
        search=SearchParams(bbox=AREA, datetime=datetime, catalog=str(catalog)),
        output=str(store),
        cube=CubeConfig(bands=BANDS, chunk_size=CHUNK),
        archive=ArchiveConfig(chunk_size=CHUNK, mode="resume" if resume else "create"),
        cluster=ClusterConfig(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0"),
        mode=mode,
        period=period,
        tiling=TilingConfig(tile_size=TILE, **{"tiles_in_flight": 1, **tiling}),
        overview_min_size=32,  # levels 1/2 (written per tile) and 1/4 (from 1/2 at the end)
    )


def _single_process(config: RunConfig):
    with dask.config.set(scheduler="synchronous"):
        return run_tiled(config, progress=False, in_process=True)


def _open(store: Path) -> xr.Dataset:
    return xr.open_zarr(store, decode_coords="all").load()


def _cli_args(catalog: Path, store: Path, scheduler: str, *extra: str) -> list[str]:
    """``phyvlm-cr run`` of the reference configuration, on the test's running cluster."""
    return [
        "-q", "run", f"--bbox={','.join(repr(v) for v in AREA)}", "--datetime", DATES,
        "--catalog", str(catalog), "--bands", ",".join(BANDS), "--output", str(store),
        "--chunk-size", str(CHUNK), "--tile-size", str(TILE), "--tiles-in-flight", "1",
        "--scheduler", scheduler, *extra,
    ]  # fmt: skip


def _done_tiles(store: Path) -> int:
    try:
        flags = np.asarray(zarr.open_group(str(store), mode="r")[TILE_DONE_VAR][:])
    except Exception:  # noqa: BLE001 - the store may not exist yet, or be half-created
        return 0
    return int(flags.astype(bool).all(axis=0).sum())


@pytest.fixture(scope="module")
def reference_store(catalog, tmp_path_factory) -> Path:
    """The uninterrupted single-process run every other run must reproduce exactly."""
    store = tmp_path_factory.mktemp("reference") / "ref.zarr"
    summary = _single_process(_config(catalog, store))
    assert summary.tiles is not None and summary.tiles.written == 4 and not summary.tiles.failed
    ds = _open(store)
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.sizes["time"] == 4 and ds.sizes["y"] == ds.sizes["x"] == SIZE
    assert ds[TILE_DONE_VAR].values.all()
    assert ds.attrs["phyvlm_cr_complete"] is True
    # Real restored data, not an empty template.
    assert np.isfinite(ds["B04"].values).mean() > 0.9
    return store


@pytest.fixture(scope="module")
def reference(reference_store) -> xr.Dataset:
    return _open(reference_store)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_cluster_run_equals_single_process_run(catalog, reference, client, tmp_path):
    store = tmp_path / "cluster.zarr"
    summary = run_tiled(_config(catalog, store, tiles_in_flight=2), progress=False, client=client)
    assert summary.tiles is not None
    assert (summary.tiles.written, summary.tiles.skipped, summary.tiles.failed) == (4, 0, {})
    assert summary.no_valid_pixels == int(reference["no_valid_observation"].sum())
    xr.testing.assert_equal(_open(store), reference)


def test_one_grid_and_tiles_stamp_the_same_dates(catalog, reference, client, tmp_path):
    # The two ways through an area stamp a date with its solar day, so a store written as one
    # grid and one written tile by tile share their time axis (and restore with the same
    # reference_days): the items' acquisition times are 10:05:59, the stamps midnight.
    from flows.run import run

    store = tmp_path / "one-grid.zarr"
    config = dataclasses.replace(
        _config(catalog, store),
        tiled=False,
        cluster=ClusterConfig(kind="address", address=client.scheduler.address),
    )
    summary = run(config, progress=False)
    assert summary.tiles is None and summary.regions_written > 0
    one_grid = xr.open_zarr(store)
    np.testing.assert_array_equal(one_grid["time"].values, reference["time"].values)
    assert (one_grid["time"].values == one_grid["time"].values.astype("datetime64[D]")).all()


def test_killed_worker_mid_run_gives_the_same_result(catalog, reference, client, tmp_path):
    store = tmp_path / "worker-killed.zarr"
    killed: dict[str, int] = {}

    def kill_a_worker_after_the_first_tile() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _done_tiles(store):
            time.sleep(0.02)
        killed["tiles_done_at_kill"] = _done_tiles(store)
        victim = sorted(client.scheduler_info()["workers"])[0]
        try:
            client.run(os._exit, 1, workers=[victim])  # the worker process dies at once
        except Exception:  # noqa: BLE001 - the reply never comes: the worker is gone
            pass
        killed["worker"] = 1

    killer = threading.Thread(target=kill_a_worker_after_the_first_tile)
    killer.start()
    summary = run_tiled(_config(catalog, store, tiles_in_flight=2), progress=False, client=client)
    killer.join()
    assert killed.get("worker") == 1
    assert 1 <= killed["tiles_done_at_kill"] < 4, "the worker must die while tiles are left"
    assert summary.tiles is not None and summary.tiles.written == 4 and not summary.tiles.failed
    xr.testing.assert_equal(_open(store), reference)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it


def test_killed_run_resumes_skipping_finished_tiles(catalog, reference, client, tmp_path, capsys):
    store = tmp_path / "killed.zarr"
    scheduler = client.scheduler.address
    assert ENTRY_POINT.exists(), "the console script is not installed: pip install -e ."
    # The run is a process of its own (its own session, so SIGKILL takes all of it) on the
    # test's cluster, as a scheduled job runs on a standing Kubernetes cluster.
    proc = subprocess.Popen(
        [str(ENTRY_POINT), *_cli_args(catalog, store, scheduler)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not _done_tiles(store):
            time.sleep(0.02)
        done_at_kill = _done_tiles(store)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 1 <= done_at_kill < 4
    partial = _done_tiles(store)
    assert partial < 4
    assert xr.open_zarr(store).attrs["phyvlm_cr_complete"] is False

    # Without --resume the store is refused; with it, finished tiles are skipped.
    assert main(_cli_args(catalog, store, scheduler)) != EXIT_OK
    assert "--resume" in capsys.readouterr().err
    assert main(_cli_args(catalog, store, scheduler, "--resume")) == EXIT_OK
    out = capsys.readouterr().out
    assert f"{4 - partial} written, {partial} skipped (already done), 0 failed" in out
    resumed = _open(store)
    assert resumed.attrs["phyvlm_cr_complete"] is True
    xr.testing.assert_equal(resumed, reference)


def test_resume_with_another_configuration_is_refused(catalog, reference_store):
    before = _files(reference_store)
    other = _config(catalog, reference_store, resume=True)
    other = dataclasses.replace(other, cube=CubeConfig(bands=BANDS[:3], chunk_size=CHUNK))
    with pytest.raises(ArchiveMismatchError, match="bands") as exc:
        _single_process(other)
    assert "--overwrite" in str(exc.value)
    assert _files(reference_store) == before


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def test_period_append_keeps_earlier_periods_and_repeats_are_no_ops(catalog, tmp_path):
    store = tmp_path / "monthly.zarr"
    march = _config(
        catalog, store, mode="composite", period="MS", datetime="2024-03-01/2024-03-31", resume=True
    )
    first = _single_process(march)  # --resume on a missing store creates it
    assert first.tiles is not None and first.tiles.written == 4
    ds = _open(store)
    assert [str(t)[:10] for t in ds.time.values] == ["2024-03-01"]
    assert ds["observation_count"].max() == 3  # 03-11, 03-21, 03-31
    before = _files(store)

    april = dataclasses.replace(
        march, search=dataclasses.replace(march.search, datetime="2024-04-01/2024-04-30")
    )
    second = _single_process(april)
    assert (
        second.tiles is not None and second.tiles.appended_steps == 1 and second.tiles.written == 4
    )
    ds = _open(store)
    assert [str(t)[:10] for t in ds.time.values] == ["2024-03-01", "2024-04-01"]
    assert ds["observation_count"].isel(time=1).max() == 1  # 04-10 only
    assert np.isfinite(ds["B04"].isel(time=1).values).mean() > 0.5
    after = _files(store)
    # Every chunk of March is byte for byte what it was; only metadata and the time
    # coordinate (one more value) were rewritten.
    changed = sorted(
        name for name, data in before.items()
        if after.get(name) != data and not name.endswith(("zarr.json", ".zmetadata")) and not re.search(r"(^|/)time/", name)
    )  # fmt: skip
    assert changed == []
    assert len(after) > len(before)

    # The same period again: nothing computed, nothing written.
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    third = _single_process(april)
    assert third.tiles is not None and third.tiles.nothing_to_do and third.tiles.written == 0
    assert third.tiles.skipped == 4
    assert _files(store) == after
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == stamps

    # An earlier period that is not in the store cannot be inserted (checked before any
    # tile is computed; February has no items here, so the plan is made by hand).
    february = dataclasses.replace(
        march, search=dataclasses.replace(march.search, datetime="2024-02-01/2024-02-29")
    )
    grid, tiles = plan_grid(february)
    labels, edges = time_axis(february, [])
    assert [str(t)[:10] for t in labels] == ["2024-02-01"]
    with pytest.raises(ArchiveMismatchError, match="time order"):
        prepare_store(
            february, TilePlan(grid, tuple(tiles), labels, edges), output_schema(february), {}
        )
    assert _files(store) == after


@pytest.fixture(scope="module")
def two_zone_catalog(tmp_path_factory) -> tuple[Path, dict]:
    """Two clear 128 x 128 px stacks of one acquisition day, one in UTM 32N and one in 33N,
    overlapping by about 560 m across the zone boundary at 12 E (as MGRS tiles do)."""
    out = tmp_path_factory.mktemp("two-zones")
    stacks = {}
    for zone, shift in (("32", -1000.0), ("33", -280.0)):
        crs = f"EPSG:326{zone}"
        x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(12.0, 48.0)
        origin = (round(x + shift, -1), round(y + 640.0, -1))
        stack = make_stack(
            (3, 128, 128), bands=BANDS, crs=crs, origin=origin, start="2024-06-01",
            thin_cover=0.0, thick_cover=0.0, shadows=False, seed=int(zone),
        )  # fmt: skip
        tile = "32UQU" if zone == "32" else "33UUP"
        write_stac_items(stack, out / zone, mgrs_tile=tile)
        stacks[crs] = (origin, 128 * 10.0)
    return out, stacks


def _two_zone_area(stacks: dict) -> tuple[float, float, float, float]:
    """Lon/lat box across both stacks (west of one to east of the other), just inside them."""
    boxes = [
        _lonlat_bbox(crs, x0, y0 - side, x0 + side, y0) for crs, ((x0, y0), side) in stacks.items()
    ]
    return (
        min(b[0] for b in boxes) + 0.001,
        max(b[1] for b in boxes) + 0.001,
        max(b[2] for b in boxes) - 0.001,
        min(b[3] for b in boxes) - 0.001,
    )


def test_area_across_two_utm_zones_lands_on_one_grid(two_zone_catalog, tmp_path):
    import shapely
    from odc.geo.geom import box

    from pipeline.catalog import search
    from pipeline.cube import load_cube

    catalog, stacks = two_zone_catalog
    area = _two_zone_area(stacks)
    tile = 2 * TILE  # 4 tiles of 128 px: fewer per-tile overheads
    store = tmp_path / "two-zones.zarr"
    config = RunConfig(
        search=SearchParams(bbox=area, datetime="2024-06-01/2024-06-30", catalog=str(catalog)),
        output=str(store),
        cube=CubeConfig(bands=BANDS, chunk_size=CHUNK),
        archive=ArchiveConfig(chunk_size=CHUNK),
        mode="composite",
        tiling=TilingConfig(tile_size=tile, tiles_in_flight=1),
    )
    assert config.use_tiles()
    summary = _single_process(config)
    assert summary.tiles is not None and not summary.tiles.failed and summary.tiles.written >= 4
    ds = _open(store)
    assert ds.rio.crs.to_string() == EQUAL_AREA_EUROPE
    assert ds.sizes["time"] == 1

    # Grid pixels whose centre lies in the area and in either stack (20 m in from its edge).
    footprints = [
        box(x0 + 20, y0 - side + 20, x0 + side - 20, y0 - 20, crs).to_crs(EQUAL_AREA_EUROPE)
        for crs, ((x0, y0), side) in stacks.items()
    ]
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    in_area = shapely.contains_xy(box(*area, "EPSG:4326").to_crs(EQUAL_AREA_EUROPE).geom, xx, yy)
    covered = shapely.contains_xy((footprints[0] | footprints[1]).geom, xx, yy) & in_area
    overlap = shapely.contains_xy((footprints[0] & footprints[1]).geom, xx, yy) & in_area
    assert covered.sum() > 15_000 and overlap.sum() > 2_000

    # No gaps: the three clear days, loaded onto the store's grid in one piece, cover every
    # such pixel, and the tiled output has all three observations there (the restoration
    # itself rejects a rare pixel: allow 1 in 100; a missing tile or a seam line of empty
    # pixels would cost far more).
    items = search(config.search)
    whole = load_cube(items, config.cube, geobox=ds.odc.geobox).compute()
    assert whole.sizes["time"] == 3  # the two zones' items of one day are one step
    assert np.isfinite(whole["B04"].values[:, covered]).all()
    count = ds["observation_count"].isel(time=0).values
    assert (count[covered] == 3).mean() > 0.99
    seams = np.zeros_like(covered)
    for edge in range(tile, max(covered.shape), tile):
        seams[edge - 1 : edge + 1, :] = True
        seams[:, edge - 1 : edge + 1] = True
    assert (count[covered & seams] == 3).mean() > 0.99
    # No double counting where the two zones' items overlap: each day counts once.
    assert count.max() == 3 and (count[overlap] == 3).mean() > 0.99
    # Outside both footprints nothing is invented.
    outside = ~shapely.contains_xy((footprints[0] | footprints[1]).buffer(40).geom, xx, yy)
    assert np.isnan(ds["B04"].isel(time=0).values[outside]).all()
    assert (ds["no_valid_observation"].isel(time=0).values[outside & in_area] == 1).all()


def test_failed_tile_is_retried_reported_and_the_rest_finish(
    two_zone_catalog, client, tmp_path, capsys
):
    catalog, stacks = two_zone_catalog
    broken = tmp_path / "catalog"
    import shutil

    shutil.copytree(catalog, broken)
    # Break every B04 COG of the UTM 33 stack: tiles that read it fail, the others do not.
    for tif in (broken / "33").rglob("*_B04_*.tif"):
        tif.write_bytes(b"not a tiff")
    for item_json in (broken / "33").rglob("*.json"):
        item_json.write_text(item_json.read_text().replace(str(catalog), str(broken)))
    # A strip across both zones, 200 m high: one or two rows of tiles (fewer tiles to fail).
    west, _, east, _ = _two_zone_area(stacks)
    area = (west, 47.999, east, 48.001)
    store = tmp_path / "broken.zarr"
    args = [
        "-q", "run", f"--bbox={','.join(repr(v) for v in area)}", "--datetime", "2024-06-01/2024-06-30",
        "--catalog", str(broken), "--bands", ",".join(BANDS), "--output", str(store), "--mode", "composite",
        "--chunk-size", str(CHUNK), "--tile-size", str(TILE), "--tile-retries", "1", "--tiles-in-flight", "2",
        "--scheduler", client.scheduler.address,
        # seamless tiles read a 33 px halo: with 64 px tiles every tile of this strip would
        # reach into the broken stack; without the halo a tile reads only its own pixels
        "--no-seamless-tiles",
    ]  # fmt: skip
    assert main(args) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "rerun the same command with --resume" in captured.err
    ds = xr.open_zarr(store)
    done = ds[TILE_DONE_VAR].values.all(axis=0)
    assert done.any() and not done.all(), "some tiles must fail and the others finish"
    assert ds.attrs["phyvlm_cr_complete"] is False
    lines = captured.out.splitlines()
    failed = [line for line in lines if line.strip().startswith("failed r")]
    assert len(failed) == int((~done).sum())
    assert all("B04" in line and "after 2 attempt(s)" in line for line in failed)  # 1 retry
    reported = [line for line in lines if "read failures r" in line]
    assert {line.split()[2].rstrip(":") for line in reported} == {
        line.split()[1].rstrip(":") for line in failed
    }


def test_tiled_store_has_overviews_per_tile_and_a_stac_item_per_tile(reference_store, reference):
    """Level 1/2 is written tile by tile as each lands, level 1/4 from it at the end; the
    STAC description has one Item per tile with its window and footprint."""
    import pystac

    from pipeline.archive_stac import write_archive_stac
    from pipeline.overviews import overview_levels

    levels = overview_levels(reference_store)
    assert [(lv.factor, lv.shape) for lv in levels] == [(2, (64, 64)), (4, (32, 32))]
    half = xr.open_zarr(reference_store, group="overviews/2", decode_coords="all").load()
    band = reference["B04"].values.astype("float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        expected = np.nanmean(band.reshape(4, 64, 2, 64, 2), axis=(2, 4))
        expected4 = np.nanmean(expected.reshape(4, 32, 2, 32, 2), axis=(2, 4))
    np.testing.assert_allclose(half["B04"].values, expected, rtol=2e-5)
    assert half.rio.crs.to_epsg() == 32633
    quarter = xr.open_zarr(reference_store, group="overviews/4").load()
    np.testing.assert_allclose(quarter["B04"].values, expected4, rtol=2e-5)

    collection = pystac.Collection.from_file(write_archive_stac(reference_store))
    items = {it.id.rsplit("-", 1)[1]: it for it in collection.get_items()}
    assert sorted(items) == ["r0c0", "r0c1", "r1c0", "r1c1"]
    assert items["r1c0"].properties["phyvlm:window"] == {"y": [64, 128], "x": [0, 64]}
    assert items["r1c0"].properties["proj:shape"] == [64, 64]


def test_the_validation_draws_pixels_from_every_tile_and_calibrates_the_error_layer(
    reference_store, reference
):
    """The self-validation of a tiled run holds out pixels in each of its 4 tiles (8 windows
    spread over them), and its error model gives every tile's error layer."""
    import json

    from pipeline.validation import ERROR_LAYER, FEATURES

    report = json.loads(reference.attrs["self_validation"])
    assert len(report["per_tile"]) == 4
    assert all(row["pixels"] > 0 for row in report["per_tile"].values())
    layer = reference[ERROR_LAYER].values
    valid = reference["no_valid_observation"].values == 0
    assert np.isfinite(layer[valid]).all() and (layer[valid] > 0).all()
    # one calibration for the whole store: the same layers give the same estimate in every tile
    model = report["error_model"]
    assert model["interval90"] > 0 and len(model["coefficients"]) == len(FEATURES)


def test_a_validation_window_reads_its_own_extent_with_the_tile_cube_values(catalog, tmp_path):
    """The self-validation reads each window (with its context) as one chunk of exactly its
    extent: the values are those of the tile's cube there, without reading the tile's chunks
    the window merely touches."""
    import types

    from flows.tiled import _window_reader
    from pipeline.catalog import search
    from pipeline.tiling import ItemIndex

    config = _config(catalog, tmp_path / "unused.zarr")
    config = dataclasses.replace(config, tiling=dataclasses.replace(config.tiling, tile_size=128))
    _, tiles = plan_grid(config)
    index = ItemIndex(search(config.search))
    worker = types.SimpleNamespace(index=index)
    tile = tiles[0]
    whole = load_step(index.intersecting(tile), config, geobox=tile.geobox)
    assert whole.sizes["y"] >= 100 and whole.sizes["x"] >= 86 and CHUNK == 64
    ys, xs = slice(30, 30 + 70), slice(20, 20 + 66)  # across the tile's chunks of 64 px
    window = _window_reader(worker, config, [tile])(0, ys, xs)
    assert window.sizes == {"time": whole.sizes["time"], "y": 70, "x": 66}
    assert {c for v in window.data_vars.values() for c in v.chunks[1:]} <= {(70,), (66,)}
    xr.testing.assert_equal(window.compute(), whole.isel(y=ys, x=xs).compute())
