"""Seamless tiles: a tiled run equals a single-grid run of the same area, seams included.

The demo generator's stack (256 x 256 px, 20 m bands among the 10 m ones) is written as COGs
and STAC items; the same area runs once tile by tile (2 x 2 tiles of 128 px, chunks of 64 px)
and once as one grid on the tiled run's own grid. Each tile is read with a halo covering
every window of the prior and the fusion, and every tile restores with the scene state
estimated once for the run area, so the two stores must agree to float32 rounding,
everywhere, and in particular in the 64 px band on either side of every tile edge.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pyproj import Transformer

from flows.run import RunConfig, run
from flows.tiled import plan_grid, run_tiled
from pipeline.archive import ArchiveConfig
from pipeline.catalog import SearchParams
from pipeline.cluster import ClusterConfig
from pipeline.cube import CubeConfig
from pipeline.synthetic import make_stack, write_stac_items
from pipeline.validation import ERROR_LAYER, ValidationConfig

BANDS = ("B02", "B03", "B04", "B08", "B11")
DATES = "2024-03-01/2024-04-30"
TILE, CHUNK, SIZE = 128, 64, 256
# Upper-left corner on the 1280 m lattice of 128-px tiles: the stack is exactly 2 x 2 tiles.
ORIGIN = (1280 * 282.0, 1280 * 4180.0)
SEAM_BAND = 64
TOLERANCE = 1e-4  # reflectance (and the 0..1 quality layers)


def _lonlat_bbox(crs: str, west: float, south: float, east: float, north: float) -> tuple:
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    xs, ys = to_lonlat.transform([west, east, west, east], [south, south, north, north])
    return (min(xs), min(ys), max(xs), max(ys))


# 150 m inside the stack, so the area's UTM extent stays within its 2 x 2 tiles.
AREA = _lonlat_bbox(
    "EPSG:32633",
    ORIGIN[0] + 150,
    ORIGIN[1] - SIZE * 10 + 150,
    ORIGIN[0] + SIZE * 10 - 150,
    ORIGIN[1] - 150,
)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seamless-catalog")
    stack = make_stack((4, SIZE, SIZE), bands=BANDS, origin=ORIGIN, start="2024-03-11", seed=5)
    write_stac_items(stack, out)
    return out


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


def _config(catalog: Path, store: Path, client) -> RunConfig:
    return RunConfig(
        search=SearchParams(bbox=AREA, datetime=DATES, catalog=str(catalog)),
        output=str(store),
        cube=CubeConfig(bands=BANDS, chunk_size=CHUNK),
        archive=ArchiveConfig(chunk_size=CHUNK),
        cluster=ClusterConfig(kind="address", address=client.scheduler.address),
        tiling=dict_tiling(),
        # the error layer is calibrated on windows drawn differently by the two paths
        # (the self-validation's own choice): compared here are the bands and quality layers
        validation=ValidationConfig(enabled=False),
        overviews=False,
        stac=False,
    )


def dict_tiling():
    from pipeline.tiling import TilingConfig

    return TilingConfig(tile_size=TILE, tiles_in_flight=2)


@pytest.fixture(scope="module")
def stores(catalog, client, tmp_path_factory) -> tuple[xr.Dataset, xr.Dataset, int]:
    out = tmp_path_factory.mktemp("seamless")
    tiled_config = _config(catalog, out / "tiled.zarr", client)
    grid, tiles = plan_grid(tiled_config)
    summary = run_tiled(tiled_config, progress=False, client=client)
    assert (
        summary.tiles is not None
        and summary.tiles.written == len(tiles)
        and not summary.tiles.failed
    )
    one_config = dataclasses.replace(tiled_config, output=str(out / "one.zarr"), tiled=False)
    one = run(one_config, progress=False, geobox=grid.geobox)
    assert one.tiles is None and one.regions_written > 0
    tiled = xr.open_zarr(out / "tiled.zarr", decode_coords="all").load()
    single = xr.open_zarr(out / "one.zarr", decode_coords="all").load()
    return tiled, single, len(tiles)


def _compared(ds: xr.Dataset) -> list[str]:
    return [
        str(n)
        for n, v in ds.data_vars.items()
        if set(v.dims) == {"time", "y", "x"} and n != ERROR_LAYER
    ]


def _seam_band(size: int) -> np.ndarray:
    """(size,) True within SEAM_BAND px of an inner tile edge."""
    edges = np.arange(TILE, size, TILE)
    idx = np.arange(size)
    return (np.abs(idx[:, None] - edges[None, :] + 0.5) < SEAM_BAND).any(axis=1)


def test_a_tiled_run_equals_a_single_grid_run_at_the_seams(stores):
    tiled, single, n_tiles = stores
    assert n_tiles >= 4
    for dim in ("time", "y", "x"):
        assert tiled.sizes[dim] == single.sizes[dim]
    assert tiled.sizes["y"] == tiled.sizes["x"] == SIZE
    np.testing.assert_array_equal(tiled["time"].values, single["time"].values)
    names = _compared(single)
    assert set(BANDS) <= set(names) and "confidence" in names and "gate" in names
    assert set(names) <= set(tiled.data_vars)
    band_y, band_x = _seam_band(tiled.sizes["y"]), _seam_band(tiled.sizes["x"])
    seams = band_y[:, None] | band_x[None, :]
    assert seams.any() and not seams.all()
    worst: dict[str, float] = {}
    worst_all: dict[str, float] = {}
    for name in names:
        a = np.asarray(tiled[name].values, dtype=np.float64)
        b = np.asarray(single[name].values, dtype=np.float64)
        # the same pixels are observed (and restored) in both: a NaN on one side only is
        # an infinite difference
        diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
        diff = np.where(np.isnan(diff), np.inf, diff)
        worst[name] = float(diff[:, seams].max())
        worst_all[name] = float(diff.max())
    print("max |tiled - single grid| within the seam bands:", worst)
    print("max |tiled - single grid| over all pixels:", worst_all)
    assert max(worst.values()) <= TOLERANCE, worst
    assert max(worst_all.values()) <= TOLERANCE, worst_all
    # real restored data, not two empty templates
    assert np.isfinite(tiled["B04"].values).mean() > 0.9
    assert float(tiled["gate"].values.min()) < 0.9  # some pixels were restored, not passed


def test_a_part_restored_with_the_areas_scene_state_and_a_halo_equals_the_whole():
    # the library contract the tiled run rests on, in memory: a window of the cube read
    # with the restore halo and restored with the whole cube's scene state gives the
    # whole cube's pixels exactly
    from pipeline import restore
    from pipeline.kernels import FusionConfig
    from pipeline.priors import get_prior
    from pipeline.restore import estimate_scene_state

    stack = make_stack((4, 96, 96), bands=BANDS, seed=11)
    cube = stack.observed
    whole = restore(cube)
    state = estimate_scene_state(cube)
    halo = get_prior("physics+stack").halo + FusionConfig().halo
    y0, y1, x0, x1 = 40, 72, 8, 40
    py, px = slice(max(0, y0 - halo), y1 + halo), slice(max(0, x0 - halo), x1 + halo)
    part = restore(
        cube.isel(y=py, x=px), scene=state, origin=(py.start, px.start), grid_shape=(96, 96)
    )
    assert part.attrs["scene_sample"] == "scene state"
    own = part.isel(y=slice(y0 - py.start, y1 - py.start), x=slice(x0 - px.start, x1 - px.start))
    for name in (*BANDS, "confidence", "gate", "transmission", "cloud_probability"):
        np.testing.assert_allclose(
            own[name].values, whole[name].values[:, y0:y1, x0:x1], rtol=0, atol=1e-6, err_msg=name
        )
    # and without the area's state (its own sample) the same window restores differently
    alone = restore(cube.isel(y=py, x=px))
    assert not np.allclose(alone["gamma"].values, whole["gamma"].values)


def test_a_scene_state_without_the_cubes_dates_is_refused():
    from pipeline import restore
    from pipeline.restore import estimate_scene_state

    stack = make_stack((4, 32, 32), bands=BANDS, seed=2)
    state = estimate_scene_state(stack.observed.isel(time=[0, 1, 2]))
    with pytest.raises(ValueError, match="no parameters for the cube's date"):
        restore(stack.observed, scene=state)
    # a subset of the state's dates is fine: a tile outside an orbit's swath
    part = restore(stack.observed.isel(time=[0, 2]), scene=state)
    np.testing.assert_array_equal(part["gamma"].values, state.scene.gamma[[0, 2]])
