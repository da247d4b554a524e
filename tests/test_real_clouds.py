"""Real cloud fields for the quality benchmark (``pipeline.bench._real_clouds``): taken from
the real scene with a reference mask in ``../shared/data/ukis-csmask-fixture``."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage

from pipeline.bench import _real_clouds as rc
from pipeline.cloud_simulator import simulate

BANDS_NM = np.array([490.0, 560.0, 665.0, 842.0, 1610.0, 2190.0])
#: a green canopy per band (B02 B03 B04 B08 B11 B12)
VEG = np.array([0.05, 0.08, 0.04, 0.40, 0.22, 0.11], "float32")


@pytest.fixture(scope="module", autouse=True)
def _scene():
    if not rc.fixture_path().exists():
        if os.environ.get("CI"):
            pytest.fail(f"{rc.fixture_path()} is missing under CI")
        pytest.skip(f"the real cloud scene is not at {rc.fixture_path()} (../shared/data)")


def _clear(dates=3, shape=(150, 210), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (VEG[None, :, None, None] * rng.uniform(0.8, 1.2, (dates, 6, *shape))).astype("float32")


def test_a_real_field_follows_the_haze_model_on_the_target_alone():
    clear = _clear()
    sim = rc.real_clouds(clear, BANDS_NM, target=1, cover=0.4, seed=3)
    np.testing.assert_array_equal(sim.cloudy[[0, 2]], clear[[0, 2]])
    t = sim.transmission.astype(np.float64)
    assert (t < 0.95).any() and (t == 1).any()
    # away from the shadow (its darkening is 1 there), I = J t + A (1 - t) per band
    far = ~ndimage.binary_dilation(sim.shadow, iterations=6)
    expect = clear[1] * t + sim.airlight[:, None, None] * (1 - t)
    np.testing.assert_allclose(sim.cloudy[1][:, far], expect[:, far], rtol=1e-5, atol=1e-6)
    # the classes: thick below the simulator's thinnest haze, thin up to its edge, one class
    # of cloud per pixel, and shadow only where a band is darkened beyond that edge
    np.testing.assert_array_equal(sim.thick, t < rc.THICK_BELOW)
    np.testing.assert_array_equal(sim.thin, (t < rc.THIN_BELOW) & ~sim.thick)
    assert not (sim.shadow & sim.thick).any()
    ratio = sim.cloudy[1] / clear[1]
    assert (ratio[:, sim.shadow & (t == 1)].min(axis=0) < rc.THIN_BELOW).all()


def test_the_window_is_drawn_for_the_cover_and_by_the_seed():
    clear = _clear(dates=2)
    for cover in (0.2, 0.4):
        for seed in (0, 1):
            sim = rc.real_clouds(clear, BANDS_NM, target=0, cover=cover, seed=seed)
            share = float((sim.thin | sim.thick | sim.shadow).mean())
            # the window's share is counted on 30 m cells, the masks on 10 m pixels
            assert abs(share - cover) < rc.COVER_TOLERANCE + 0.05, (cover, seed, share)
    again = rc.real_clouds(clear, BANDS_NM, target=0, cover=0.3, seed=5)
    same = rc.real_clouds(clear, BANDS_NM, target=0, cover=0.3, seed=5)
    other = rc.real_clouds(clear, BANDS_NM, target=0, cover=0.3, seed=6)
    np.testing.assert_array_equal(again.cloudy, same.cloudy)
    assert not np.array_equal(again.transmission, other.transmission)


def test_its_clouds_have_a_real_clouds_texture_and_fading_edges():
    """What the simulator's thick cores lack (module docstring): brightness that varies
    inside the cloud, and an edge that fades over several pixels instead of a cut."""
    clear = _clear(dates=2, shape=(300, 300))
    real = rc.real_clouds(clear, BANDS_NM, target=0, cover=0.4, seed=2)
    fractal = simulate(clear, BANDS_NM, target=0, kind="thick", cover=0.4, seed=2)
    for sim, textured in ((real, True), (fractal, False)):
        cloud = sim.thin | sim.thick
        blue = sim.cloudy[0, 0][cloud & ~sim.shadow]
        assert (blue.std() / blue.mean() > 0.1) == textured
        # the cloud's partly transparent pixels against its opaque ones
        assert (sim.thin.sum() > 0.5 * sim.thick.sum()) == textured


def test_bands_the_scene_lacks_are_interpolated_in_wavelength():
    values = np.arange(6, dtype=np.float64)[:, None] * np.ones((6, 2))
    out = rc._per_band(values, np.array([490.0, 705.0, 842.0, 865.0, 2400.0]))
    b05 = (705.0 - 665.0) / (842.0 - 665.0) + 2  # between B04 (2) and B08 (3)
    b8a = (865.0 - 842.0) / (1610.0 - 842.0) + 3
    np.testing.assert_allclose(out[:, 0], [0.0, b05, 3.0, b8a, 5.0])


def test_a_stack_larger_than_the_scene_is_refused_with_the_limit():
    with pytest.raises(ValueError, match="at most 1536 x 1536 px"):
        rc.real_clouds(np.zeros((2, 6, 1600, 40), "float32"), BANDS_NM, target=0, cover=0.3, seed=0)


def test_without_the_scene_the_error_says_where_it_belongs(monkeypatch, tmp_path):
    monkeypatch.setenv("PHYVLM_SHARED_DATA", str(tmp_path))
    rc._fields.cache_clear()
    try:
        with pytest.raises(rc.RealCloudsUnavailable, match="ukis-csmask-fixture"):
            rc.real_clouds(_clear(dates=2), BANDS_NM, target=0, cover=0.3, seed=0)
    finally:
        monkeypatch.undo()
        rc._fields.cache_clear()


def test_the_scene_evidence_is_counted_against_the_reference_mask(monkeypatch):
    """An evidence that is the reference mask itself reads every cloud and shadow pixel and
    no clear one; one that reads nothing, the opposite."""
    import sys

    import xarray as xr

    restore_module = sys.modules["pipeline.restore"]  # the package exports restore() by name
    with np.load(rc.fixture_path()) as f:
        mask = np.asarray(f["msk"])[..., 0]
    perfect = np.isin(mask, (rc.MASK_CLOUD, rc.MASK_SHADOW)).astype(np.float32)
    for reading, expect in ((perfect, (1.0, 1.0, 0.0)), (np.zeros_like(perfect), (0.0, 0.0, 0.0))):

        def fake(cube, prior, reading=reading):
            return xr.Dataset({"cloud_probability": (("time", "y", "x"), reading[None])})

        monkeypatch.setattr(restore_module, "cloud_evidence", fake)
        row = rc.evidence_on_the_real_scene(("physics",))["physics"]
        got = (
            row["cloud_read_not_clear"],
            row["shadow_read_not_clear"],
            row["clear_read_not_clear"],
        )
        assert got == expect
