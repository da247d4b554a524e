"""Compiled physics kernels against plain numpy statements of their formulas.

Each ``ref_*`` below states a documented formula of ``pipeline.kernels._transmission`` or
``pipeline.kernels._inversion`` as straightforward whole-array numpy (argsort, np.min over
bands, scipy.ndimage windows on the whole array); the kernels must agree with it on random data with NaN (scattered band
gaps, never-observed pixels, a date with nothing), at the edge cases named in the tests,
within float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline._bands import SCL
from pipeline.kernels import (
    band_transmission,
    dark_channel_haze,
    floor_transmission,
    hot_haze,
    inversion_confidence,
    pixel_haze_bound,
    snow_score,
    temporal_dark_object,
    transmission,
    wavelengths_of,
)
from pipeline.kernels._common import box_mean_nan_fit
from pipeline.kernels._inversion import SCL_CONFIDENCE_FACTOR
from pipeline.kernels._transmission import SCL_HAZE_EVIDENCE

F32 = np.float32
BANDS = ("B02", "B03", "B04", "B08", "B11")
WL = wavelengths_of(BANDS)
AIRLIGHT = np.array(
    [[0.80, 0.78, 0.75, 0.70, 0.60], [0.70, 0.69, 0.66, 0.64, 0.55], [0.9, 0.9, 0.9, 0.9, 0.9]]
)
GAMMA = np.array([1.3, 0.0, 0.7])


def _ramp(x, lo, hi):
    """The documented soft threshold: 0 below lo, 1 above hi, 3u^2 - 2u^3 between; NaN stays."""
    u = np.clip((np.asarray(x, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _observed(seed=0, shape=(3, 5, 13, 17)):
    """Reflectance with scattered band gaps, never-observed pixels and a date with nothing."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-0.02, 0.9, shape).astype(F32)
    obs[rng.random(shape) < 0.08] = np.nan
    obs[:, :, 2, 3] = np.nan
    obs[:, :, 4, :5] = np.nan
    obs[1, :, 7, 7] = np.nan
    return obs


def _close(expected, actual, tol=1e-12):
    e, a = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    assert e.shape == a.shape
    assert np.array_equal(np.isnan(e), np.isnan(a)), "NaN patterns differ"
    np.testing.assert_allclose(a, e, atol=tol, rtol=0, equal_nan=True)


# --------------------------------------------------------------------------------------
# Plain numpy statements of the formulas
# --------------------------------------------------------------------------------------


def ref_dark_object(obs, scene, cap=0.3, ratio_max=0.75, spread=0.25):
    """Darkest date in B02 (stable ties), the second on a flat darkening; scene if < 2 dates."""
    obs = obs.astype(np.float64)
    key = np.where(np.isnan(obs[:, 0]), np.inf, obs[:, 0])
    order = np.argsort(key, axis=0, kind="stable")
    first = np.take_along_axis(obs, order[None, None, 0].repeat(obs.shape[1], 1), 0)[0]
    second = np.take_along_axis(obs, order[None, None, 1].repeat(obs.shape[1], 1), 0)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = first / second
    finite = np.isfinite(ratio).all(0)
    r = np.where(finite, ratio, 0.0)
    flat = finite & (r.max(0) < ratio_max) & (r.max(0) - r.min(0) < spread)
    dark = np.where(flat, second, first)
    enough = np.isfinite(key).sum(0) >= 2
    dark = np.where(enough & np.isfinite(dark), dark, scene[:, None, None])
    return np.clip(dark, 0.0, cap)


def ref_haze_bound(obs, airlight, dark, gamma, max_nm=700.0):
    """min over observed visible b of 1 - (1 - clip((I-D)/max(A-D,1e-3),0,1))**((l_b/490)**g)."""
    vis = WL < max_nm
    o = obs[:, vis].astype(np.float64)
    a = airlight[:, vis, None, None]
    d = dark[vis][None] if dark.ndim == 3 else dark[vis][None, :, None, None]
    h_b = np.clip((o - d) / np.maximum(a - d, 1e-3), 0.0, 1.0)
    back = (WL[vis][None, :] / 490.0) ** gamma[:, None]
    h = 1.0 - (1.0 - h_b) ** back[:, :, None, None]
    h = np.where(np.isnan(o), np.inf, h).min(axis=1)
    return np.where(np.isinf(h), np.nan, h)


def ref_opening(h, r):
    """min(h, window-max(window-min(h))) ignoring NaN, windows cut at the array edge."""
    size = (1, 2 * r + 1, 2 * r + 1)
    lo = ndimage.minimum_filter(np.where(np.isnan(h), np.inf, h), size=size, mode="nearest")
    lo = np.where(np.isinf(lo), -np.inf, lo)
    hi = ndimage.maximum_filter(lo, size=size, mode="nearest")
    return np.fmin(h, np.where(np.isinf(hi), np.nan, hi))


def ref_box_mean(a, r):
    """Window mean of the finite values as (sum of values) / (count), windows cut at the edge."""
    fin = np.isfinite(a)
    k = np.ones((1, 2 * r + 1, 2 * r + 1))
    num = ndimage.convolve(np.where(fin, a, 0.0), k, mode="constant")
    den = ndimage.convolve(fin.astype(np.float64), k, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0.5, num / den, np.nan)


def ref_hot(obs, airlight, slope, intercept, r):
    """clip(HOT(I) / max(HOT(A), 1e-3), 0, 1), HOT = (s B02 - B04 + k) / sqrt(1 + s^2)."""
    s, k = slope[:, None, None], intercept[:, None, None]
    hot = (s * obs[:, 0].astype(np.float64) - obs[:, 2] + k) / np.sqrt(1 + s * s)
    hot_a = (slope * airlight[:, 0] - airlight[:, 2] + intercept) / np.sqrt(1 + slope**2)
    h = np.clip(hot / np.maximum(hot_a, 1e-3)[:, None, None], 0.0, 1.0)
    return (ref_box_mean(h, r) if r else h), _ramp(hot_a, 0.02, 0.06)


def ref_snow(obs, strict=False):
    """S(NDSI; .4, .6) S(NIR; .08, .12) [S(NIR/G; .6, .75) S(G; .25, .35)], 0 where unknown."""
    g, nir, sw = (obs[:, i].astype(np.float64) for i in (1, 3, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        score = _ramp((g - sw) / np.maximum(g + sw, 1e-6), 0.4, 0.6) * _ramp(nir, 0.08, 0.12)
        if strict:
            score = score * _ramp(nir / np.maximum(g, 1e-6), 0.6, 0.75) * _ramp(g, 0.25, 0.35)
    return np.where(np.isfinite(score), score, 0.0)


def ref_scl(scl, table, column, default):
    codes = np.clip(np.where(np.isnan(scl), 0, scl), 0, 255).astype(int)
    lut = np.full(256, default)
    for cls, v in table.items():
        lut[int(cls)] = v[column] if isinstance(v, tuple) else v
    return lut[codes]


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_dark_object_matches_stable_argsort_formulation():
    obs = _observed(1, (5, 5, 13, 17))
    obs[:, :, 0, 0] = np.nan
    obs[1:, :, 0, 1] = np.nan  # one date only: the scene value
    obs[:, 0, 1, 2] = 0.05  # every date ties in B02: the earliest wins
    obs[:, 1:, 1, 2] = np.arange(5)[:, None] * 0.1 + 0.2
    surface = np.array([0.2, 0.25, 0.3, 0.4, 0.3], F32)
    obs[0, :, 3, 3], obs[1, :, 3, 3], obs[2:, :, 3, 3] = surface * 0.5, surface, 0.8  # flat shadow
    obs[0, :, 3, 4], obs[1, :, 3, 4] = [0.1, 0.1, 0.1, 0.4, 0.3], surface  # not flat: kept
    obs[0, :, 3, 5], obs[1, :, 3, 5], obs[2:, :, 3, 5] = 0.0, 0.0, 0.9  # 0 / 0 ratio: not flat
    scene = np.array([0.01, 0.02, np.nan, -0.01, 0.5])
    expected = ref_dark_object(obs, scene)
    _close(expected, temporal_dark_object(obs, WL, scene), 0.0)
    _close(
        np.minimum(surface.astype(np.float64), 0.3),
        temporal_dark_object(obs, WL, scene)[:, 3, 3],
        0.0,
    )
    assert temporal_dark_object(obs, WL, scene)[1, 1, 2] == np.float32(0.2)  # date 0 of the tie
    # other thresholds and cap reach the kernel
    _close(
        ref_dark_object(obs, scene, 0.45, 0.9, 0.5),
        temporal_dark_object(obs, WL, scene, cap=0.45, shadow_ratio=0.9, shadow_spread=0.5),
        0.0,
    )


@pytest.mark.parametrize("per_pixel_dark", [False, True])
def test_haze_bound_matches_band_wise_formula(per_pixel_dark):
    obs = _observed(2)
    obs[0, :3, 5, 5] = 2.0  # brighter than the airlight: h_b = 1
    obs[1, :3, 5, 6] = -0.1  # below the dark object: h_b = 0
    rng = np.random.default_rng(3)
    dark = rng.uniform(0, 0.2, (5, 13, 17)) if per_pixel_dark else np.array([0.02, 0.03, 0.8, 0, 0])
    # band B04 with D > A (max(A - D, 1e-3) guard) when the dark object is per band
    expected = ref_haze_bound(obs, AIRLIGHT, dark, GAMMA)
    _close(expected, pixel_haze_bound(obs, AIRLIGHT, dark, WL, GAMMA), 1e-12)
    assert np.all(np.isnan(expected[:, 2, 3]))  # never observed
    # the shortest band alone when none is shorter than max_nm
    _close(
        ref_haze_bound(obs, AIRLIGHT, dark, GAMMA, max_nm=500.0),
        pixel_haze_bound(obs, AIRLIGHT, dark, WL, GAMMA, max_nm=400.0),
        1e-12,
    )


def test_haze_bound_nan_term_wins_like_np_min():
    obs = _observed(4)
    dark = np.array([0.02, np.nan, 0.03, 0.0, 0.0])  # a NaN dark object makes that term NaN
    expected = ref_haze_bound(obs, AIRLIGHT, dark, GAMMA)
    _close(expected, pixel_haze_bound(obs, AIRLIGHT, dark, WL, GAMMA))
    clean = ref_haze_bound(obs, AIRLIGHT, np.nan_to_num(dark), GAMMA)
    assert np.isnan(expected).sum() > np.isnan(clean).sum()


@pytest.mark.parametrize("radius", [1, 2, 5])
def test_dark_channel_opening_matches_scipy_windows(radius):
    h = np.random.default_rng(5).uniform(0, 1, (3, 14, 19))
    h[h > 0.9] = np.nan
    h[1, :6, :6] = np.nan  # a hole wider than the window
    _close(ref_opening(h, radius), dark_channel_haze(h, radius), 0.0)
    assert dark_channel_haze(h, 0) is h
    # float32 in, float32 out: the opening only selects values
    _close(ref_opening(h.astype(F32), radius), dark_channel_haze(h.astype(F32), radius), 0.0)
    assert dark_channel_haze(h.astype(F32), radius).dtype == F32


@pytest.mark.parametrize("radius", [1, 3])
def test_box_mean_ignores_nan_and_out_of_array_pixels(radius):
    a = np.random.default_rng(6).uniform(-1, 1, (2, 12, 15))
    a[a > 0.6] = np.nan
    a[0, 3, 4] = np.inf  # not finite: absent as NaN is
    a[1, :8, :8] = np.nan  # windows with nothing -> NaN
    out = np.empty_like(a)
    box_mean_nan_fit(a, radius, out)
    _close(ref_box_mean(a, radius), out, 1e-12)


@pytest.mark.parametrize("radius", [0, 2])
def test_hot_haze_matches_the_clear_line_distance(radius):
    obs = _observed(7)
    slope, icpt = np.array([1.2, np.nan, 0.9]), np.array([0.01, 0.5, -0.02])
    h, w = hot_haze(obs, AIRLIGHT, BANDS, slope, icpt, radius)
    ok = np.isfinite(slope)  # no clear line on date 1: slope 1, intercept 0, weight 0
    ref_h, ref_w = ref_hot(obs, AIRLIGHT, np.where(ok, slope, 1.0), np.where(ok, icpt, 0.0), radius)
    _close(ref_h, h, 1e-12)
    _close(ref_w * ok, w, 1e-12)
    assert hot_haze(obs, AIRLIGHT, BANDS, np.full(3, np.nan), icpt, radius) is None
    assert hot_haze(obs[:, 1:], AIRLIGHT[:, 1:], BANDS[1:], slope, icpt, radius) is None


@pytest.mark.parametrize("strict", [False, True])
def test_snow_score_matches_ndsi_ramps(strict):
    obs = _observed(8)
    obs[0, :, 1, 1] = [0.8, 0.8, 0.8, 0.75, 0.1]  # snow
    obs[0, :, 1, 2] = [0.0, 0.0, 0.0, 0.0, 0.0]  # G + SWIR = 0: guarded denominator
    expected = ref_snow(obs, strict)
    _close(expected, snow_score(obs, BANDS, strict=strict), 1e-12)
    assert expected[0, 1, 1] > 0.9
    # (T, B, N) layout as the scene step uses it, and no score without SWIR
    _close(expected[:, 3], snow_score(obs[:, :, 3], BANDS, strict=strict), 1e-12)
    assert snow_score(obs[:, :4], BANDS[:4]) is None


def test_band_transmission_is_the_angstrom_power():
    t = np.random.default_rng(9).uniform(-0.2, 1.2, (3, 6, 7)).astype(F32)
    t[0, 0, :4] = [0.0, 1.0, np.nan, 0.5]
    expo = (490.0 / WL[None, :]) ** GAMMA[:, None]
    expected = np.clip(t.astype(np.float64), 0, 1)[:, None] ** expo[:, :, None, None]
    got = band_transmission(t, WL, GAMMA)
    assert got.dtype == F32 and got.shape == (3, 5, 6, 7)
    _close(expected.astype(F32), got, 2e-7)
    _close(np.broadcast_to(np.clip(t[1:2], 0, 1), (1, 5, 6, 7)), got[1:2], 0.0)  # gamma 0: grey
    # an unknown gamma: 1 ** nan = 1 and 0 ** nan = nan, as for the power itself
    edge = band_transmission(np.array([[[0.0, 1.0]]]), np.array([560.0]), np.array([np.nan]))
    _close(np.array([[[[np.nan, 1.0]]]]), edge, 0.0)


def test_floor_in_place_equals_the_cap_formula():
    """``out=t_band`` (the prior's in-place floor) gives max(t_b, 1 - max(I, 0) / A) too."""
    obs = _observed(15)
    t_b = band_transmission(np.random.default_rng(16).uniform(0, 1, (3, 13, 17)), WL, GAMMA)
    with np.errstate(invalid="ignore"):
        cap = 1.0 - np.clip(obs.astype(np.float64), 0, None) / AIRLIGHT[:, :, None, None]
    expected = np.where(np.isfinite(cap), np.maximum(t_b, cap), t_b).astype(F32)
    result = floor_transmission(obs, AIRLIGHT, t_b, out=t_b)
    assert result is t_b
    _close(expected, t_b, 0.0)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        floor_transmission(obs, AIRLIGHT, t_b, out=t_b.astype(np.float64))


def test_inversion_confidence_matches_the_product_of_ramps():
    rng = np.random.default_rng(10)
    t = rng.uniform(-0.1, 1.1, (3, 9, 11))
    t[0, 0, 0] = np.nan
    surface = rng.uniform(-0.1, 1.4, (3, 4, 9, 11)).astype(F32)
    surface[rng.random(surface.shape) < 0.2] = np.nan
    surface[:, :, 1, 1] = np.nan  # nothing to invert: 0
    scl = rng.choice([0, 3, 4, 1, 2, 300, -4, np.nan, 3.7], size=(3, 9, 11))
    jmin = np.where(np.isnan(surface), np.inf, surface).min(1).astype(np.float64)
    jmin[np.isinf(jmin)] = np.nan
    jmax = np.where(np.isnan(surface), -np.inf, surface).max(1).astype(np.float64)
    for kw, use_scl in (
        ({}, True),
        ({"t_low": 0.1, "t_high": 0.3}, False),
        ({"scl_weight": 0.4}, True),
    ):
        lo, hi = kw.get("t_low", 0.25), kw.get("t_high", 0.6)
        c = _ramp(t, lo, hi) * _ramp(jmin, -0.05, 0.0) * (1 - _ramp(jmax, 1.0, 1.3))
        if use_scl:
            w = kw.get("scl_weight", 1.0)
            c = c * (1 - w * (1 - ref_scl(scl, SCL_CONFIDENCE_FACTOR, 0, 1.0)))
        expected = np.clip(np.where(np.isfinite(c) & np.isfinite(jmin), c, 0.0), 0, 1)
        got = inversion_confidence(t, surface, scl if use_scl else None, **kw)
        assert got.dtype == F32
        _close(expected.astype(F32), got, 1e-7)
    assert np.all(got[:, 1, 1] == 0.0)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_transmission_combines_the_cues_as_documented(radius):
    obs = _observed(11, (3, 5, 15, 16))
    obs[2, :, 6:12, 6:12] = 0.6  # bright in every visible band: opening and veto lifted
    dark = temporal_dark_object(obs, WL, np.full(5, 0.02))
    slope, icpt = np.array([1.1, 0.95, np.nan]), np.array([0.0, 0.01, 0.0])
    scl = np.random.default_rng(12).choice(
        [float(SCL.CLOUD_HIGH), float(SCL.VEGETATION), float(SCL.SNOW), 7.0, np.nan], (3, 15, 16)
    )
    h_pix = ref_haze_bound(obs, AIRLIGHT, dark, GAMMA)
    floor = np.where(np.isnan(obs[:, :3]), np.inf, obs[:, :3].astype(np.float64)).min(1)
    too_bright = _ramp(floor, 0.3, 0.45)
    h = ref_opening(h_pix, radius) if radius else h_pix
    h = h + too_bright * np.where(np.isfinite(h_pix), h_pix - h, 0.0)
    ok = np.isfinite(slope)
    h_hot, w = ref_hot(obs, AIRLIGHT, np.where(ok, slope, 1.0), np.where(ok, icpt, 0.0), radius)
    w = (w * ok)[:, None, None] * (1 - too_bright)
    h = (1 - w) * h + w * np.fmin(h, h_hot + 0.1)
    h = h * (1 - ref_snow(obs))
    pull = np.clip(ref_scl(scl, SCL_HAZE_EVIDENCE, 1, 0.0) * 0.8, 0, 1)
    h = np.where(np.isfinite(h), h + pull * (ref_scl(scl, SCL_HAZE_EVIDENCE, 0, 0.0) - h), h)
    expected = np.clip(1 - h, 0, 1).astype(F32)
    got = transmission(
        obs, AIRLIGHT, GAMMA, dark, slope, icpt, BANDS, WL, scl, radius=radius, scl_weight=0.8
    )
    assert got.dtype == F32 and got.shape == (3, 15, 16)
    _close(expected, got, 1e-6)
    if radius == 0:  # never observed: unknown, not clear (a window fills it from neighbours)
        assert np.all(np.isnan(got[:, 2, 3]))


def test_windowed_kernels_are_chunking_invariant():
    """A block with a halo of 2r pixels gives the whole array's interior (windows cut at edges)."""
    obs = _observed(13, (3, 5, 30, 34))
    dark = temporal_dark_object(obs, WL, np.full(5, 0.02))
    slope, icpt = np.array([1.1, 0.95, 1.0]), np.array([0.0, 0.01, 0.0])
    args = (slope, icpt, BANDS, WL)
    r = 2
    whole = transmission(obs, AIRLIGHT, GAMMA, dark, *args, radius=r)
    ys, xs = slice(9 - 2 * r, 21 + 2 * r), slice(5 - 2 * r, 19 + 2 * r)
    part = transmission(obs[:, :, ys, xs], AIRLIGHT, GAMMA, dark[:, ys, xs], *args, radius=r)
    _close(whole[:, 9:21, 5:19], part[:, 2 * r : -2 * r, 2 * r : -2 * r], 0.0)


def test_bad_shapes_name_the_problem():
    obs = _observed(14)
    with pytest.raises(ValueError, match="airlight"):
        pixel_haze_bound(obs, AIRLIGHT[:, :3], np.zeros(5), WL, GAMMA)
    with pytest.raises(ValueError, match="dark object"):
        pixel_haze_bound(obs, AIRLIGHT, np.zeros((5, 4, 4)), WL, GAMMA)
    with pytest.raises(ValueError, match="scene dark object"):
        temporal_dark_object(obs, WL, np.zeros(3))
    with pytest.raises(ValueError, match="scl"):
        inversion_confidence(np.ones((3, 13, 17)), obs, np.zeros((3, 4, 4)))
