"""Block kernels on tiny numpy arrays: physics, scene estimators, harmonisation, composite."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline._bands import WAVELENGTH_NM
from pipeline.kernels import (
    FusionConfig,
    band_transmission,
    box_mean_nan,
    composite_block,
    estimate_airlight,
    estimate_dark_object,
    estimate_gamma,
    forward_model,
    fuse_dates,
    harmonise_local,
    invert,
    min_filter_nan,
    pair_gain_offset,
    snow_score,
    temporal_dark_object,
    wavelengths_of,
)
from pipeline.kernels._common import max_filter_nan

BANDS6 = ("B02", "B03", "B04", "B08", "B11", "B12")

# Endmember reflectance spectra (vegetation, bare soil, water) at the S-2 bands.
_ENDMEMBERS = {
    "veg": dict(
        B01=0.03,
        B02=0.04,
        B03=0.07,
        B04=0.04,
        B05=0.10,
        B06=0.25,
        B07=0.30,
        B08=0.33,
        B8A=0.34,
        B09=0.30,
        B11=0.20,
        B12=0.10,
    ),
    "soil": dict(
        B01=0.08,
        B02=0.10,
        B03=0.14,
        B04=0.18,
        B05=0.20,
        B06=0.22,
        B07=0.24,
        B08=0.26,
        B8A=0.27,
        B09=0.27,
        B11=0.32,
        B12=0.28,
    ),
    "water": dict(
        B01=0.06,
        B02=0.05,
        B03=0.04,
        B04=0.02,
        B05=0.02,
        B06=0.01,
        B07=0.01,
        B08=0.01,
        B8A=0.01,
        B09=0.01,
        B11=0.005,
        B12=0.003,
    ),
}


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (Gaussian-filtered white noise)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / f.std()


def make_surface(bands, ny: int, nx: int, seed: int = 0) -> np.ndarray:
    """(B, Y, X) float32 surface reflectance: smooth mixture of vegetation, soil and water."""
    rng = np.random.default_rng(seed)
    ab = np.exp(np.stack([2.0 * smooth_field(rng, (ny, nx), 6) for _ in _ENDMEMBERS]))
    ab /= ab.sum(0)
    spec = np.array([[_ENDMEMBERS[e][b] for b in bands] for e in _ENDMEMBERS])
    return np.einsum("eb,eyx->byx", spec, ab).astype(np.float32)


def cloud_airlight(bands, n_dates: int) -> np.ndarray:
    wl = wavelengths_of(bands)
    return np.tile(np.interp(wl, [490, 2190], [0.9, 0.5])[None], (n_dates, 1)).astype(np.float32)


# ----------------------------------------------------------------------------- physics


def test_inversion_recovers_surface_exactly_with_true_t_and_a():
    rng = np.random.default_rng(0)
    surface = np.broadcast_to(make_surface(BANDS6, 20, 24), (2, 6, 20, 24)).astype(np.float32)
    airlight = cloud_airlight(BANDS6, 2)
    t_ref = rng.uniform(0.15, 1.0, size=(2, 20, 24)).astype(np.float32)
    t_b = band_transmission(t_ref, wavelengths_of(BANDS6), np.array([1.5, 0.0], np.float32))
    observed = forward_model(surface, airlight, t_b)
    restored = invert(observed, airlight, t_b, t_min=0.1)
    np.testing.assert_allclose(restored, surface, atol=2e-5)


def test_band_transmission_increases_with_wavelength_for_positive_gamma():
    bands = ("B02", "B03", "B04", "B05", "B08", "B11", "B12")
    wl = wavelengths_of(bands)
    t_ref = np.full((2, 3, 3), 0.4, np.float32)
    t_b = band_transmission(t_ref, wl, np.array([1.3, 0.0], np.float32))
    hazy = t_b[0, :, 1, 1]
    assert np.all(np.diff(hazy) > 0), hazy
    assert hazy[0] == pytest.approx(0.4, abs=1e-6)  # B02 is the reference band
    np.testing.assert_allclose(t_b[1, :, 1, 1], 0.4, atol=1e-6)  # grey cloud


def test_snow_is_not_cloud_but_haze_over_vegetation_is_not_snow():
    bands = ("B02", "B03", "B04", "B08", "B11")
    snow = np.array([0.85, 0.85, 0.83, 0.75, 0.05], np.float32)
    cloud = np.array([0.9, 0.88, 0.86, 0.8, 0.6], np.float32)
    veg = np.array([0.04, 0.07, 0.04, 0.33, 0.2], np.float32)
    t_b = band_transmission(
        np.full((1, 1, 1), 0.3, np.float32), wavelengths_of(bands), np.array([1.5], np.float32)
    )[0, :, 0, 0]
    hazy_veg = veg * t_b + cloud * (1 - t_b)
    obs = np.stack([snow, cloud, hazy_veg])[None, :, :, None].transpose(0, 2, 1, 3)  # (1,B,3,1)
    score = snow_score(obs, bands)[0, :, 0]
    assert score[0] > 0.9 and score[1] < 0.05 and score[2] < 0.05


def test_temporal_dark_object_skips_flat_shadow_and_keeps_bright_static_surface():
    bands = ("B02", "B04", "B08")
    soil = np.array([0.2, 0.35, 0.4], np.float32)
    obs = np.stack([soil, soil * 0.35, soil * 1.0 + 0.3])[:, :, None, None]  # clear, shadow, cloud
    dark = temporal_dark_object(obs, wavelengths_of(bands), np.zeros(3, np.float32), cap=0.5)
    np.testing.assert_allclose(dark[:, 0, 0], soil, atol=1e-6)


def test_filters_ignore_out_of_array_pixels_so_blocks_match_whole_array():
    rng = np.random.default_rng(3)
    a = rng.random((2, 30, 40))
    a[0, 5:9, 7:12] = np.nan
    r = 3
    whole = (box_mean_nan(a, r), min_filter_nan(a, r), max_filter_nan(a, r))
    sub = a[:, 4:25, 10:40]  # interior block with a halo >= r on the top, left and bottom
    part = (box_mean_nan(sub, r), min_filter_nan(sub, r), max_filter_nan(sub, r))
    for w, p in zip(whole, part, strict=True):
        np.testing.assert_allclose(p[:, r:-r, r:], w[:, 4 + r : 25 - r, 10 + r :], atol=1e-12)


# ----------------------------------------------------------------------------- scene


def _hazy_stack(gamma: float, seed: int = 1):
    """3 dates over a static surface: clear, thin haze + opaque patch, opaque patch only."""
    ny, nx = 64, 64
    rng = np.random.default_rng(seed)
    surface = make_surface(BANDS6, ny, nx, seed)
    airlight = np.array([0.92, 0.9, 0.87, 0.8, 0.62, 0.48], np.float32)
    t = np.ones((3, ny, nx), np.float32)
    t[1] = np.clip(0.65 + 0.2 * smooth_field(rng, (ny, nx), 8), 0.3, 1.0)
    t[1, 5:15, 40:55] = 0.0
    t[2, 30:45, 10:30] = 0.0
    gammas = np.array([1.0, gamma, 0.0], np.float32)
    t_b = band_transmission(t, wavelengths_of(BANDS6), gammas)
    obs = forward_model(
        np.broadcast_to(surface, (3,) + surface.shape), np.tile(airlight, (3, 1)), t_b
    )
    return obs, surface, airlight, t


@pytest.mark.parametrize("gamma", [0.6, 1.4, 2.0])
def test_gamma_and_airlight_recovered_on_forward_model_data(gamma):
    obs, _, airlight, _ = _hazy_stack(gamma)
    sample = obs.reshape(3, len(BANDS6), -1)
    wl = wavelengths_of(BANDS6)
    a_est = estimate_airlight(sample, wl)
    np.testing.assert_allclose(a_est[1], airlight, atol=0.02)
    np.testing.assert_allclose(a_est[2], airlight, atol=0.02)
    dark = estimate_dark_object(sample)
    g_est = estimate_gamma(sample, a_est, wl, dark, default=1.0)
    assert g_est[1] == pytest.approx(gamma, abs=0.1)
    assert g_est[0] == pytest.approx(1.0)  # clear date: no hazy pixel -> default
    assert np.all((g_est >= 0) & (g_est <= 2.5))


def test_airlight_of_a_thin_haze_only_date_falls_back_to_cloudy_dates():
    obs, _, airlight, _ = _hazy_stack(1.2)
    obs = obs.copy()
    obs[1, :, 5:15, 40:55] = obs[0, :, 5:15, 40:55]  # remove the opaque patch of date 1
    a_est = estimate_airlight(obs.reshape(3, 6, -1), wavelengths_of(BANDS6))
    np.testing.assert_allclose(a_est[1], airlight, atol=0.02)


def test_single_date_gamma_stays_in_bounds():
    obs, *_ = _hazy_stack(1.2)
    sample = obs[1:2].reshape(1, 6, -1)
    wl = wavelengths_of(BANDS6)
    a_est = estimate_airlight(sample, wl)
    g = estimate_gamma(sample, a_est, wl, estimate_dark_object(sample))
    assert 0.0 <= float(g[0]) <= 2.5


# ----------------------------------------------------------------------------- harmonisation


def test_local_harmonisation_recovers_known_gain_offset():
    rng = np.random.default_rng(5)
    src = rng.uniform(0.02, 0.4, size=(3, 40, 40))  # textured: the gain is well determined
    gain = np.array([1.2, 0.9, 1.05])
    offset = np.array([0.03, -0.01, 0.0])
    tgt = gain[:, None, None] * src + offset[:, None, None]
    weight = np.ones((40, 40))
    weight[:, 30:] = 0.0  # no clear pixel here: shrink toward the prior (identity)
    g, o = harmonise_local(tgt, src, weight, 6, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(
        g[:, :, :20], np.broadcast_to(gain[:, None, None], (3, 40, 20)), atol=0.02
    )
    np.testing.assert_allclose(
        o[:, :, :20], np.broadcast_to(offset[:, None, None], (3, 40, 20)), atol=0.005
    )
    np.testing.assert_allclose(g[:, :, 37:], 1.0)
    np.testing.assert_allclose(o[:, :, 37:], 0.0)


def test_global_pair_gain_offset_maps_each_date_onto_each_other():
    src = make_surface(("B02", "B04"), 30, 30, 2).reshape(2, -1)
    sample = np.stack([src, 1.1 * src + 0.02])
    gain, off = pair_gain_offset(sample, np.ones((2, src.shape[1])))
    np.testing.assert_allclose(gain[1, 0], 1.1, atol=0.01)
    np.testing.assert_allclose(off[1, 0], 0.02, atol=0.002)
    np.testing.assert_allclose(gain[0, 1], 1 / 1.1, atol=0.01)
    np.testing.assert_allclose(gain[0, 0], 1.0)


def test_the_pair_map_weighs_the_target_by_its_clearness_and_the_source_by_its_surface():
    """A source hazy over the whole scene (its evidence weight ~0) is still mapped onto a
    clear target when its own side of the fit is weighed by how much surface it shows; with
    the evidence on both sides the map had no support and stayed the identity."""
    src = make_surface(("B02", "B04"), 40, 40, 3).reshape(2, -1)
    hazy = 0.7 * src + 0.09  # the target's surface under haze (t 0.7, path radiance 0.09)
    sample = np.stack([src, hazy])
    evidence = np.stack([np.ones(src.shape[1]), np.full(src.shape[1], 0.002)])
    g_sym, o_sym = pair_gain_offset(sample, evidence)
    np.testing.assert_allclose(g_sym[0, 1], 1.0, atol=1e-6)  # shrunk to the identity
    g, o = pair_gain_offset(sample, evidence, source_weight=np.ones_like(evidence))
    np.testing.assert_allclose(g[0, 1], 1 / 0.7, atol=0.02)
    np.testing.assert_allclose(o[0, 1], -0.09 / 0.7, atol=0.003)
    # the hazy date as the target keeps its evidence weight: no map onto it is fitted
    np.testing.assert_allclose(g[1, 0], 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- fusion


def test_fuse_dates_fills_thick_cloud_from_clear_date_and_flags_no_observation():
    bands = ("B02", "B04")
    surf = make_surface(bands, 20, 20, 4)
    obs = np.stack([surf, surf]).copy()
    t_ref = np.ones((2, 20, 20), np.float32)
    conf = np.ones((2, 20, 20), np.float32)
    t_ref[0, 5:12, 5:12] = 0.0
    conf[0, 5:12, 5:12] = 0.0
    obs[0, :, 5:12, 5:12] = 0.9  # the cloud, surface hidden
    obs[:, :, 0, 0] = np.nan  # never observed
    surface_phys = obs.copy()
    res = fuse_dates(
        obs,
        surface_phys,
        t_ref,
        conf,
        np.array([0.0, 12.0]),
        np.ones((2, 2, 2), np.float32),
        np.zeros((2, 2, 2), np.float32),
        FusionConfig(harmonise_radius=3),
    )
    np.testing.assert_allclose(res.output[0][:, 5:12, 5:12], surf[:, 5:12, 5:12], atol=1e-5)
    assert np.all(res.gate[0, 5:12, 5:12] < 0.01)
    assert np.all(res.reference_days[0, 5:12, 5:12] == 12.0)
    assert res.no_valid_observation[:, 0, 0].tolist() == [1, 1]
    assert np.isnan(res.output[:, :, 0, 0]).all()
    assert res.no_valid_observation.sum() == 2


def test_a_hazy_reference_is_harmonised_onto_the_target():
    """The only reference is under haze over the whole scene, thicker to the east (an affine
    map per band that varies across the scene), and the evidence says so. The target's clear
    pixels around its thick cloud still fit the local map from the reference, so the cloud
    is filled with the surface. Failed while the local fit took only pixels clear on both
    dates by the evidence: it had none, and the scene map alone left the haze's local excess
    in the cloud."""
    bands = ("B02", "B04")
    n = 128
    surf = make_surface(bands, n, n, 5)
    east = np.linspace(0.0, 1.0, n, dtype=np.float32)[None, None, :]
    t = 0.85 - 0.2 * east  # the haze's transmission, 0.85 in the west, 0.65 in the east
    light = np.array([0.3, 0.25], np.float32)[:, None, None]
    obs = np.stack([surf, surf * t + light * (1 - t)]).copy()
    cloud = (slice(50, 78), slice(90, 118))
    obs[0, :, cloud[0], cloud[1]] = 0.9
    t_ref = np.ones((2, n, n), np.float32)
    conf = np.ones((2, n, n), np.float32)
    t_ref[0][cloud], conf[0][cloud] = 0.0, 0.0
    p_cloud = np.zeros((2, n, n))
    p_cloud[0][cloud] = 1.0
    p_cloud[1] = 0.95  # the evidence sees the haze
    # the scene map of the reference onto the target: the mean haze (t = 0.75) undone
    gain = np.ones((2, 2, 2), np.float32)
    off = np.zeros((2, 2, 2), np.float32)
    gain[0, 1] = 1 / 0.75
    off[0, 1] = -light[:, 0, 0] * 0.25 / 0.75
    res = fuse_dates(
        obs,
        obs.copy(),
        t_ref,
        conf,
        np.array([0.0, 10.0]),
        gain,
        off,
        FusionConfig(),
        evidence=(p_cloud, None),
    )
    inner = (slice(55, 73), slice(95, 113))
    err = np.abs(res.output[0][:, inner[0], inner[1]] - surf[:, inner[0], inner[1]]).mean()
    scene_map = gain[0, 1][:, None, None] * obs[1] + off[0, 1][:, None, None]
    err_scene = np.abs(scene_map[:, inner[0], inner[1]] - surf[:, inner[0], inner[1]]).mean()
    assert err < 0.6 * err_scene, (err, err_scene)  # 0.46 now; 1.0 with the old weights


def test_reference_departure_is_the_observations_distance_from_its_reference():
    """A patch that darkens on the target while the evidence calls it clear is kept (gate 1)
    and its departure from the reference is the darkening; elsewhere the reference agrees."""
    bands = ("B02", "B04")
    surf = make_surface(bands, 24, 24, 4)
    obs = np.stack([surf, surf]).copy()
    obs[0, :, 10:14, 10:14] -= 0.05  # a small change: the local harmonisation cannot absorb it
    ones = np.ones((2, 24, 24), np.float32)
    res = fuse_dates(
        obs,
        obs.copy(),
        ones,
        ones,
        np.array([0.0, 10.0]),
        np.ones((2, 2, 2), np.float32),
        np.zeros((2, 2, 2), np.float32),
        FusionConfig(harmonise_radius=6),
        evidence=(np.zeros((2, 24, 24)), None),
    )
    dep = res.reference_departure
    assert dep.shape == (2, 24, 24) and dep.dtype == np.float32
    np.testing.assert_allclose(res.output[0], obs[0], atol=1e-5)  # kept as observed
    np.testing.assert_allclose(dep[0, 11:13, 11:13], 0.05, atol=0.01)
    assert np.nanmax(dep[0, :6, :6]) < 0.005


def test_reference_departure_is_nan_without_a_reference():
    bands = ("B02", "B04")
    surf = make_surface(bands, 12, 12, 4)[None]
    ones = np.ones((1, 12, 12), np.float32)
    res = fuse_dates(
        surf, surf.copy(), ones, ones, np.array([0.0]),
        np.ones((1, 1, 2), np.float32), np.zeros((1, 1, 2), np.float32), FusionConfig(),
    )  # fmt: skip
    assert np.isnan(res.reference_departure).all()


# ----------------------------------------------------------------------------- composite


def test_composite_block_weights_quality_rejects_outlier_and_flags_empty():
    vals = np.full((4, 2, 3, 3), 0.1, np.float32)
    vals[3] = 0.8  # an outlier date (e.g. residual cloud) with middling quality
    conf = np.ones((4, 3, 3), np.float32)
    conf[3] = 0.5
    gate = np.ones((4, 3, 3), np.float32)
    vals[:, :, 2, 2] = np.nan
    res = composite_block(vals, conf, gate)
    assert res.values.shape == (2, 3, 3) and res.values.dtype == np.float32
    assert abs(float(res.values[0, 0, 0]) - 0.1) < 0.03
    assert res.observation_count[0, 0] == 4 and res.direct_count[0, 0] == 4
    assert res.no_valid_observation[2, 2] == 1 and np.isnan(res.values[:, 2, 2]).all()
    assert res.observation_count.dtype == np.uint16


def test_wavelength_table_is_the_shared_one():
    assert wavelengths_of(("B02", "B8A")).tolist() == [WAVELENGTH_NM["B02"], WAVELENGTH_NM["B8A"]]
