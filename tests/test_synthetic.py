"""Synthetic L2A stacks: truth, cloud model, SCL, and the PC-like COG + STAC fixtures."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr

from pipeline._bands import SCL, WAVELENGTH_NM
from pipeline.synthetic import (
    T_OPAQUE,
    LandCover,
    make_stack,
    simulate_clouds,
    spectral_transmission,
    write_stac_items,
)

THIN = [0.0, 0.3, 0.2, 0.05]
THICK = [0.0, 0.1, 0.3, 0.0]


@pytest.fixture(scope="module")
def stack():
    return make_stack((4, 96, 128), seed=3, thin_cover=THIN, thick_cover=THICK)


@pytest.fixture(scope="module")
def scene():
    """A larger, default-schedule scene with every land-cover class."""
    return make_stack((6, 256, 256), seed=1, interval_days=15)


@pytest.fixture(scope="module")
def written(stack, tmp_path_factory):
    out = tmp_path_factory.mktemp("stac")
    items = write_stac_items(
        stack,
        out,
        baselines=["05.10", "02.12", "04.00", "05.11"],
        duplicate_first_with_baseline="04.00",
        use_proj_code=[False, True],
        blocksize=32,
    )
    return out, items


def _ndvi(ds):
    return (ds.B08 - ds.B04) / (ds.B08 + ds.B04)


def test_deterministic_for_a_seed():
    a = make_stack((2, 48, 64), seed=7)
    b = make_stack((2, 48, 64), seed=7)
    c = make_stack((2, 48, 64), seed=8)
    xr.testing.assert_identical(a.truth, b.truth)
    xr.testing.assert_identical(a.observed, b.observed)
    xr.testing.assert_identical(a.transmission, b.transmission)
    np.testing.assert_array_equal(a.gamma, b.gamma)
    assert not np.array_equal(a.truth.B04.values, c.truth.B04.values)


def test_layout_dtypes_and_crs(stack):
    bands = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    assert stack.bands == bands
    for ds in (stack.truth, stack.observed):
        assert ds.rio.crs.to_epsg() == 32633
        assert "spatial_ref" in ds.coords
        assert dict(ds.sizes) == {"time": 4, "y": 96, "x": 128}
        for b in bands:
            assert ds[b].dims == ("time", "y", "x") and ds[b].dtype == np.float32
    assert stack.observed.SCL.dtype == np.uint8
    # pixel centres of a 10 m grid from the upper-left origin
    assert float(stack.truth.x[0]) == 360005.0 and float(stack.truth.y[0]) == 5349995.0
    assert stack.truth.rio.resolution() == (10.0, -10.0)
    assert stack.truth.rio.transform().c == 360000.0
    assert np.all(np.diff(stack.truth.time.values) == np.timedelta64(10, "D"))
    for m in (stack.thin, stack.thick, stack.shadow, stack.snow):
        assert m.dims == ("time", "y", "x") and m.dtype == bool
    assert stack.transmission.dtype == np.float32
    assert stack.gamma.dims == ("time",) and stack.atmospheric_light.dims == ("time", "band")
    assert stack.landcover.dims == ("y", "x")
    assert set(stack.masks().data_vars) >= {"thin", "thick", "shadow", "transmission"}
    values = stack.truth.to_array()
    assert float(values.min()) > 0 and float(values.max()) < 1.2  # fresh snow may reach ~1


def test_cloud_cover_matches_request(stack):
    thin = stack.thin.mean(("y", "x")).values
    thick = stack.thick.mean(("y", "x")).values
    np.testing.assert_allclose(thick, THICK, atol=0.005)
    np.testing.assert_allclose(thin, THIN, atol=0.01)
    assert not (stack.thin & stack.thick).any()
    np.testing.assert_allclose(stack.cloud_cover, np.add(THIN, THICK), atol=0.01)


def test_default_schedule_has_clear_and_cloudy_dates(scene):
    cover = scene.cloud_cover.values
    assert cover.min() == 0.0  # fully clear dates
    assert cover.max() > 0.4
    assert scene.thick.any() and scene.shadow.any()
    a = scene.atmospheric_light.values
    assert 0.55 < a.min() and a.max() < 1.15
    assert (scene.gamma >= 0).all() and (scene.gamma <= 2).all()


def test_transmission_and_forward_model(stack):
    t = stack.transmission.values
    assert t.min() > 0 and t.max() <= 1
    thin, thick, shadow = stack.thin.values, stack.thick.values, stack.shadow.values
    assert np.all(t[~thin & ~thick] == 1) and np.all(t[thin] < 1) and np.all(t[thick] == T_OPAQUE)
    lam = [WAVELENGTH_NM[b] for b in stack.bands]
    for i in range(stack.truth.sizes["time"]):
        sel = thin[i] & ~shadow[i]
        if not sel.any():
            continue
        gamma = float(stack.gamma[i])
        t_b = spectral_transmission(t[i], lam, gamma)[:, sel].astype(np.float64)  # (B, N)
        if gamma > 0.05:
            assert np.all(np.diff(t_b, axis=0) >= 0)  # t_b rises with wavelength
            assert np.all(t_b[-1] > t_b[0])
        a = stack.atmospheric_light.values[i].astype(np.float64)[:, None]
        j = np.stack([stack.truth[b].values[i][sel] for b in stack.bands]).astype(np.float64)
        obs = np.stack([stack.observed[b].values[i][sel] for b in stack.bands])
        np.testing.assert_allclose(obs, j * t_b + a * (1 - t_b), atol=2e-6)
    clear = stack.clear.values
    for b in stack.bands:
        np.testing.assert_array_equal(stack.observed[b].values[clear], stack.truth[b].values[clear])
    # thick cloud: bright and near grey, whatever is below
    i = 2
    b02 = stack.observed.B02.values[i][thick[i]]
    b08 = stack.observed.B08.values[i][thick[i]]
    assert b02.min() > 0.45
    np.testing.assert_allclose(np.median(b08 / b02), 1.0, atol=0.1)
    # shadow darkens
    sh = shadow[i] & ~thin[i]
    assert sh.sum() > 20
    assert np.all(stack.observed.B08.values[i][sh] < stack.truth.B08.values[i][sh])


def test_spectra_are_plausible(scene):
    day = scene.truth.isel(time=-1)
    lc = scene.landcover.values
    ndvi = _ndvi(day).values
    for c in LandCover:
        assert (lc == c).sum() > 0, f"no {c.name} in the scene"
    veg = np.isin(lc, [LandCover.GRASSLAND, LandCover.DECIDUOUS, LandCover.CONIFER])
    assert np.median(ndvi[veg]) > 0.6
    assert np.median(ndvi[veg]) > np.median(ndvi[lc == LandCover.BARE_SOIL]) + 0.4
    assert np.median(ndvi[lc == LandCover.BARE_SOIL]) < 0.35
    water = lc == LandCover.WATER
    assert np.median(day.B08.values[water]) < 0.03 and np.median(day.B11.values[water]) < 0.01
    assert np.median(day.B03.values[water]) > np.median(day.B08.values[water])
    grass = lc == LandCover.GRASSLAND
    assert np.median(day.B05.values[grass]) < np.median(day.B07.values[grass])  # red edge
    assert np.median(day.B11.values[grass]) > np.median(day.B12.values[grass])
    # snow: bright visible, dark SWIR; sand bright everywhere incl. SWIR
    first = scene.truth.isel(time=0)
    snow = scene.snow.values[0]
    assert snow.sum() > 50
    assert np.median(first.B03.values[snow]) > 0.6 and np.median(first.B11.values[snow]) < 0.15
    sand = lc == LandCover.SAND
    assert np.median(first.B11.values[sand]) > 0.4
    # within-class texture
    assert np.std(day.B08.values[lc == LandCover.CONIFER]) > 0.003


def test_surface_changes_over_time(scene):
    ndvi = _ndvi(scene.truth).values
    lc = scene.landcover.values
    parcels = np.isin(lc, [LandCover.WINTER_CROP, LandCover.GRASSLAND, LandCover.FALLOW])
    series = ndvi[:, parcels]
    assert (
        series.max(axis=0) - series.min(axis=0) > 0.3
    ).mean() > 0.2  # green-up, mowing, ploughing
    # abrupt events: ploughing of catch crops, mowing
    step = -np.diff(ndvi, axis=0)[:, np.isin(lc, [LandCover.FALLOW, LandCover.GRASSLAND])]
    assert (step.max(axis=0) > 0.25).mean() > 0.1
    # snow melts in spring
    assert scene.snow.isel(time=0).sum() > scene.snow.isel(time=-1).sum()


def test_scl_is_a_weak_label(scene):
    scl = scene.observed.SCL.values
    used = set(np.unique(scl).tolist())
    assert {3, 4, 5, 6, 8, 9, 10, 11} <= used
    cloud_label = np.isin(scl, [SCL.CLOUD_MEDIUM, SCL.CLOUD_HIGH, SCL.THIN_CIRRUS])
    thin, thick = scene.thin.values, scene.thick.values
    assert (~cloud_label & thin).sum() > 0.05 * thin.sum()  # misses faint haze
    assert (cloud_label & thick).sum() > 0.9 * thick.sum()
    bright = np.isin(scene.landcover.values, [LandCover.SAND, LandCover.ROOF_BRIGHT])[None] & ~(
        thin | thick
    )
    assert (cloud_label & bright).sum() > 0.1 * bright.sum()  # bright surfaces taken for cloud
    strong_shadow = scene.shadow.values & ~thick
    assert 0 < ((scl == SCL.CLOUD_SHADOW) & strong_shadow).sum() < strong_shadow.sum()
    # 20 m blocks
    np.testing.assert_array_equal(scl[:, ::2, ::2], scl[:, 1::2, 1::2])


def test_nodata_dates():
    s = make_stack((2, 48, 48), seed=2, nodata_dates=[1])
    edge = s.observed.B02.isel(time=1).isnull().values
    assert 0 < edge.mean() < 0.6
    assert np.all(s.observed.SCL.isel(time=1).values[edge] == SCL.NO_DATA)
    assert not s.observed.B02.isel(time=0).isnull().any()


@pytest.mark.parametrize("kind", ["thin", "thick", "mixed", "shadow"])
def test_simulate_clouds_numpy(kind, stack):
    clear = np.stack([stack.truth[b].values[0] for b in stack.bands])  # (B, H, W)
    sim = simulate_clouds(clear, kind=kind, cover=0.3, seed=4, bands=stack.bands)
    assert sim.observed.shape == clear.shape and sim.observed.dtype == np.float32
    if kind == "thin":
        assert abs(sim.thin.mean() - 0.3) < 0.01 and not sim.thick.any()
    elif kind == "thick":
        assert abs(sim.thick.mean() - 0.3) < 0.005 and not sim.thin.any()
    elif kind == "mixed":
        assert abs((sim.thin | sim.thick).mean() - 0.3) < 0.01
    else:
        assert sim.shadow.mean() > 0.25 and not (sim.thin.any() or sim.thick.any())
        assert np.all(sim.observed[:, sim.shadow] < clear[:, sim.shadow])
    untouched = ~(sim.thin | sim.thick | sim.shadow)
    np.testing.assert_array_equal(sim.observed[:, untouched], clear[:, untouched])


def test_simulate_clouds_xarray(stack):
    clear = stack.truth.isel(time=0)  # (y, x), no time
    sim = simulate_clouds(clear, kind="thin", cover=0.4, seed=1, gamma=1.5, light_level=0.9)
    assert isinstance(sim.observed, xr.Dataset) and sim.observed.B02.dims == ("y", "x")
    assert sim.thin.dims == ("y", "x") and abs(float(sim.thin.mean()) - 0.4) < 0.01
    m = sim.thin.values
    assert float((sim.observed.B02 - clear.B02).values[m].mean()) > 0  # haze brightens
    # SWIR sees through haze with gamma 1.5
    d02 = np.abs(sim.observed.B02 - clear.B02).values[m].mean()
    d12 = np.abs(sim.observed.B12 - clear.B12).values[m].mean()
    assert d12 < 0.5 * d02
    series = simulate_clouds(stack.truth, kind="thick", cover=0.2, seed=1)
    assert series.thick.dims == ("time", "y", "x") and series.gamma.shape == (4,)


def test_cogs_are_valid_with_dn_offsets(stack, written):
    _, items = written
    clear = stack.clear.values
    for item in items[1:]:  # items[1] is the duplicate of date 0
        i = [str(t)[:19] for t in stack.truth.time.values].index(
            item.datetime.strftime("%Y-%m-%dT%H:%M:%S")
        )
        baseline = item.properties["s2:processing_baseline"]
        offset = 1000 if baseline >= "04.00" else 0
        for name in ("B02", "B08", "B05", "B11", "SCL"):
            href = item.assets[name].href
            assert href.startswith("file:///")
            with rasterio.open(href) as src:
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert src.block_shapes == [(32, 32)] and src.compression.name.lower() == "deflate"
                assert src.overviews(1), "no overviews"
                assert src.dtypes == ("uint16",) and src.nodata == 0 and src.crs.to_epsg() == 32633
                res = 20.0 if name in ("B05", "B11", "SCL") else 10.0
                assert src.res == (res, res)
                dn = src.read(1)
            if name == "SCL":
                np.testing.assert_array_equal(dn, stack.observed.SCL.values[i][::2, ::2])
            elif res == 10.0:
                refl = (dn.astype(np.float64) - offset) / 1e4
                truth = stack.truth[name].values[i]
                np.testing.assert_allclose(refl[clear[i]], truth[clear[i]], atol=0.51e-4)
                assert dn.min() >= 1
            else:
                obs = stack.observed[name].values[i].astype(np.float64)
                block = obs.reshape(48, 2, 64, 2).mean(axis=(1, 3))
                np.testing.assert_allclose((dn - offset) / 1e4, block, atol=0.51e-4)


def test_items_imitate_planetary_computer(stack, written, pc_items_dir):
    out, items = written
    real = json.loads(next(pc_items_dir.glob("S2B_MSIL2A_2024*.json")).read_text())
    assert len(items) == 5
    ids = [it.id for it in items]
    assert len(set(ids)) == 5
    for item in items:
        reloaded = pystac.Item.from_file(str(out / f"{item.id}.json"))
        assert reloaded.id == item.id and reloaded.collection_id == "sentinel-2-l2a"
        assert set(item.assets) == {*stack.bands, "SCL"}
        p = item.properties
        for key in (
            "platform",
            "constellation",
            "eo:cloud_cover",
            "s2:processing_baseline",
            "s2:mgrs_tile",
            "sat:relative_orbit",
            "s2:product_uri",
            "s2:high_proba_clouds_percentage",
        ):
            assert key in p and key in real["properties"]
        assert isinstance(p["s2:processing_baseline"], str) and p["s2:mgrs_tile"] == "33UUP"
        assert (
            item.id.startswith(p["platform"].replace("Sentinel-2", "S2"))
            and "_R022_T33UUP_" in item.id
        )
        for name, asset in item.to_dict()["assets"].items():
            ref = real["assets"][name]
            assert asset["type"] == ref["type"] and asset["roles"] == ["data"]
            assert set(ref) - {"href"} <= set(asset)
            assert asset["href"].startswith("file:///")
            if name != "SCL":
                assert asset["eo:bands"][0].keys() == ref["eo:bands"][0].keys()
                assert (
                    asset["eo:bands"][0]["center_wavelength"]
                    == ref["eo:bands"][0]["center_wavelength"]
                )
        west, south, east, north = item.bbox
        assert 12.5 < west < east < 13.5 and 48.0 < south < north < 48.5
    on_disk = [json.loads((out / f"{it.id}.json").read_text())["properties"] for it in items]
    assert [("proj:epsg" in p, "proj:code" in p) for p in on_disk] == [
        ("proj:epsg" in it.properties, "proj:code" in it.properties) for it in items
    ]
    epsg = [("proj:epsg" in it.properties, "proj:code" in it.properties) for it in items]
    assert epsg == [(True, False), (True, False), (False, True), (True, False), (False, True)]
    assert items[2].properties["proj:code"] == "EPSG:32633"
    assert any("projection/v2.0.0" in e for e in items[2].stac_extensions)
    # the duplicate: same acquisition and tile, older baseline, other id
    first, dup = items[0], items[1]
    assert dup.datetime == first.datetime and dup.id != first.id
    assert (
        dup.properties["s2:processing_baseline"]
        == "04.00"
        < first.properties["s2:processing_baseline"]
    )
    assert dup.properties["s2:generation_time"] < first.properties["s2:generation_time"]
    # eo:cloud_cover from the true cloud masks
    cover = stack.cloud_cover.values * 100
    assert items[0].properties["eo:cloud_cover"] == pytest.approx(cover[0], abs=1e-4)
    assert items[3].properties["eo:cloud_cover"] == pytest.approx(cover[2], abs=1e-4)
    collection = pystac.ItemCollection.from_file(str(out / "items.json"))
    assert [it.id for it in collection] == ids


def test_odc_stac_loads_the_items(stack, written):
    odc_stac = pytest.importorskip("odc.stac")
    _, items = written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = odc_stac.load(
            items[2:], bands=["B02", "B11", "SCL"], resolution=20, chunks={}
        ).compute()
    assert ds.sizes["time"] == 3 and ds.sizes["y"] == 48 and ds.sizes["x"] == 64
    assert ds.odc.crs.epsg == 32633
    np.testing.assert_array_equal(
        ds.SCL.isel(time=0).values, stack.observed.SCL.values[1][::2, ::2]
    )
    assert int(ds.B02.min()) >= 1
