"""The compiled per-date passes of the fusion against their array formulas.

``reference_transmission``, ``reference_refinement``, ``reference_candidate_weights`` and
``reference_gate`` below state the documented formulas of ``temporal_band_transmission``,
``_temporal._temporal_refinement`` and steps 2, 5 and 6 of ``fuse_dates`` with whole-array numpy
operations (NaN-aware box mean from scipy's uniform filter, ``np.fmax.accumulate`` for the
monotone bound); the compiled passes must agree with them on random data with NaN, at
several window radii, within float32 rounding.
"""

import numpy as np
import pytest
from scipy import ndimage

from pipeline.kernels._common import wavelengths_of
from pipeline.kernels._fusion import FusionConfig
from pipeline.kernels._inversion import _gate_params, gate_fit
from pipeline.kernels._reference import candidate_weights_fit
from pipeline.kernels._temporal import _temporal_refinement, temporal_band_transmission
from pipeline.kernels._transmission import snow_score

BANDS = ("B02", "B03", "B04", "B05", "B08", "B11", "B12")
WL = wavelengths_of(BANDS)
A = np.array([0.85, 0.84, 0.83, 0.82, 0.8, 0.6, 0.45])


def smooth(x, lo, hi):
    u = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def nan_box_mean(h, r):
    finite = np.isfinite(h)
    size = (1, 2 * r + 1, 2 * r + 1)
    num = ndimage.uniform_filter(np.where(finite, h, 0.0), size=size, mode="constant")
    den = ndimage.uniform_filter(finite.astype(float), size=size, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-9, num / den, np.nan)


def reference_transmission(obs, ref, a, wl, radius, noise=0.03, min_lev=0.15, gmax=2.5):
    """H_b = (I - R)/(A - R), surface-change tests, window mean, dead zone, Angstrom bounds."""
    lev = a[:, None, None] - ref
    usable = np.isfinite(obs) & np.isfinite(ref) & (lev >= min_lev)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(usable, (obs - ref) / lev, np.nan)
        h_any = (obs - ref) / np.maximum(lev, min_lev)
    s = int(np.argmin(wl))
    h_hi = np.nanmax(np.where(usable, h, -np.inf), axis=0)
    h_lo = np.min(np.where(np.isfinite(h_any), h_any, np.inf), axis=0)
    h_s = np.where(usable[s], h[s], 0.0)
    excess = np.max(np.where(usable, h - h_s, -np.inf), axis=0)
    changed = (((h_hi > 2 * noise) & (h_lo < -0.1)) | (excess > 0.05 + 0.25 * np.abs(h_s))) & (
        h_s < 0.25
    )
    h = np.where(changed & usable, 0.0, h)
    if radius:
        h = np.clip(nan_box_mean(h, radius), h - 3 * noise, h + noise)
    h = np.clip(h, 0.0, 1.0)
    t = 1.0 - h * smooth(h, noise, 2 * noise)
    t_s = t[s]
    upper = np.clip(t_s, 0, 1) ** ((wl[s] / wl) ** gmax)[:, None, None]
    bounded = np.minimum(np.maximum(t, t_s), upper)
    order = np.argsort(wl, kind="stable")
    bounded[order] = np.fmax.accumulate(bounded[order], axis=0)
    usable = usable & np.isfinite(t_s)
    return np.where(usable, bounded, np.nan), usable


def reference_refinement(obs, ref, a, prior_tb, surface, t_ref, q_ref, bands, cfg):
    """t_b = w t_temporal + (1 - w) t_prior on usable bands, floored, inverted; w = q (1 - snow)."""
    wl = wavelengths_of(bands)
    t_temp, usable = reference_transmission(obs, ref, a, wl, cfg.temporal_radius)
    w = cfg.temporal_weight * np.clip(q_ref, 0, 1)
    snow = snow_score(obs[None], bands, strict=True)
    if snow is not None:
        w = w * (1 - snow[0])
    tb = np.where(usable, w * t_temp + (1 - w) * prior_tb, prior_tb)
    cap = 1 - np.maximum(obs, 0) / np.maximum(a, 1e-3)[:, None, None]
    tb = np.where(np.isfinite(cap) & (cap > tb), cap, tb)
    j = (obs - a[:, None, None] * (1 - tb)) / np.maximum(tb, cfg.temporal_t_min)
    surface = np.where((w > 0) & np.isfinite(j), j, surface)
    s = int(np.argmin(wl))
    w_ref = np.where(usable[s], w, 0.0)
    t_out = np.where(np.isfinite(tb[s]), w_ref * tb[s] + (1 - w_ref) * t_ref, t_ref)
    return surface, t_out


def _scene(seed, shape=(40, 36)):
    """A reference surface and a target with haze veils, opaque specks, changes, shadow and gaps."""
    rng = np.random.default_rng(seed)
    base = np.array([0.04, 0.07, 0.05, 0.12, 0.3, 0.18, 0.09])[:, None, None]
    ref = (base * (1 + 0.3 * rng.standard_normal((len(BANDS), *shape)))).clip(0.003, 1)
    t = np.clip(rng.uniform(0.2, 1.3, shape), 0, 1)  # a patchwork of veils and clear pixels
    tb = t[None] ** ((490.0 / WL) ** rng.uniform(0, 2))[:, None, None]
    obs = ref * tb + A[:, None, None] * (1 - tb) + 0.01 * rng.standard_normal(ref.shape)
    changed = rng.random(shape) < 0.15
    obs[:3, changed] += 0.08  # brighter visible, darker NIR: a harvested field
    obs[4, changed] -= 0.2
    obs[:, rng.random(shape) < 0.1] *= 0.4  # shadow
    obs[rng.random(obs.shape) < 0.03] = np.nan  # gaps in single bands
    ref[rng.random(ref.shape) < 0.03] = np.nan
    obs[:, :4, :5] = np.nan  # a corner without observation
    return obs, ref, rng


@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_temporal_transmission_matches_the_array_formula(radius, dtype):
    obs, ref, _ = _scene(radius)
    t, usable = temporal_band_transmission(obs.astype(dtype), ref, A, WL, radius=radius)
    t_ref, usable_ref = reference_transmission(obs.astype(dtype).astype(float), ref, A, WL, radius)
    np.testing.assert_array_equal(usable, usable_ref)
    assert 0.2 < usable.mean() < 0.95  # the scene exercises both usable and unusable bands
    np.testing.assert_allclose(t[usable], t_ref[usable], atol=1e-12)
    assert np.isnan(t[~usable]).all()
    assert (t[usable] < 0.9).mean() > 0.1  # ... and real veils, not only the dead zone


@pytest.mark.parametrize("radius", [0, 1])
def test_temporal_refinement_matches_the_array_formula(radius):
    cfg = FusionConfig(temporal_radius=radius)
    obs, ref, rng = _scene(10 + radius)
    # bands out of wavelength order: the shortest band is found, not assumed first
    perm = np.array([3, 0, 5, 1, 6, 2, 4])
    obs, ref, a, bands = obs[perm], ref[perm], A[perm], tuple(BANDS[i] for i in perm)
    shape = obs.shape[1:]
    prior_tb = np.clip(rng.uniform(0.3, 1.1, obs.shape), 0, 1)
    prior_tb[rng.random(obs.shape) < 0.02] = np.nan
    surface = rng.uniform(0, 0.5, obs.shape)
    t_prior = rng.uniform(0.2, 1.0, shape)
    q_ref = rng.uniform(-0.1, 1.1, shape) * (rng.random(shape) > 0.2)  # some pixels with w = 0
    got_j, got_t = _temporal_refinement(
        obs.astype(np.float32), ref, a, prior_tb, surface, t_prior, q_ref, bands, cfg
    )
    want_j, want_t = reference_refinement(
        obs.astype(np.float32).astype(float), ref, a, prior_tb, surface, t_prior, q_ref, bands, cfg
    )
    assert not np.allclose(want_j, surface, equal_nan=True)  # the refinement changed something
    np.testing.assert_allclose(got_t, want_t, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got_j, want_j, atol=1e-9, rtol=1e-9, equal_nan=True)


# --------------------------------------------------------------------------- reference choice and gate


def reference_candidate_weights(base, cand, decay, ratio, power):
    """score = round(base[cand] decay, 6); the first best; weights ~ score ** power within ratio."""
    score = np.round(base[cand] * decay[:, None], 6)
    best = np.argmax(score, axis=0)
    top = np.take_along_axis(score, best[None], 0)[0]
    has = top > 0
    keep = has[None] & (score > 0) & (score >= ratio * top[None])
    weights = np.where(keep, score, 0.0) ** power
    total = weights.sum(axis=0)
    weights = np.where(has[None], weights / np.where(has, total, 1.0)[None], 0.0)
    return weights, np.where(has, best, -1)


def test_candidate_weights_match_the_array_formula():
    rng = np.random.default_rng(3)
    base = rng.random((6, 500)) * (rng.random((6, 500)) > 0.3)  # some dates ineligible
    base[:, :20] = 0.0  # pixels with no candidate at all
    base[:, 20:40] = 0.0
    base[1, 20:40] = base[3, 20:40] = 0.5  # a tie (same score, same distance): the first wins
    cand = np.array([3, 1, 4, 0], dtype=np.intp)
    decay = np.exp(-np.array([10.0, 10.0, 20.0, 30.0]) / 30.0)
    for ratio, power in [(0.5, 2.0), (1.0, 1.0), (0.1, 3.0)]:
        weights = np.empty((4, 500))
        best = np.empty(500, np.intp)
        candidate_weights_fit(base, cand, decay, ratio, power, weights, best)
        want_w, want_best = reference_candidate_weights(base, cand, decay, ratio, power)
        np.testing.assert_array_equal(best, want_best)
        np.testing.assert_allclose(weights, want_w, atol=1e-15)
    assert (best[:20] == -1).all() and (best[20:40] == 0).all()


def reference_gate(
    obs, j, ref, has, valid, conf, t, q_ref, ref_var, a, factor, relative, shadow, passing, cfg
):
    """Steps 5-7 of ``fuse_dates`` with whole-array numpy (the formulas of its docstring)."""
    fin = np.isfinite(j) & np.isfinite(ref)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(fin, j, 0).sum(0) / np.where(fin, ref, 0).sum(0)
        dark = np.where(
            fin.any(0), 1 - smooth(rho, cfg.shadow_ratio_low, cfg.shadow_ratio_high), 0.0
        )
        dark = np.where(np.isfinite(dark), dark, 0.0)
        dark = np.minimum(dark, shadow)  # the evidence makes the darkening cue specific
        # inverse-variance share of the inversion
        dev = a[:, None] - ref
        ok = np.isfinite(dev)
        spread = np.sqrt(np.where(ok, dev**2, 0).sum(0) / ok.sum(0))
        tc = np.clip(t, 0, 1)
        var_j = (
            (cfg.sigma_t_clear + cfg.sigma_t_haze * (1 - tc))
            * spread
            / np.maximum(tc, cfg.temporal_t_min)
        ) ** 2
        var_r = np.where(np.isfinite(ref_var), ref_var, cfg.reference_sigma**2)
        var_r = np.maximum(var_r, cfg.reference_sigma_floor**2) / np.maximum(q_ref, 0.05) ** 2
        w = var_r / (var_r + var_j)
        w = np.where(np.isfinite(w), w, 0.0)
        jmin = np.min(np.where(np.isnan(j), np.inf, j), axis=0)
        jmax = np.max(np.where(np.isnan(j), -np.inf, j), axis=0)
        plaus = smooth(jmin, -0.05, 0.0) * (1 - smooth(jmax, 1.0, 1.3))
        plaus = np.where(np.isfinite(plaus), plaus, 0.0)
    c = conf
    if relative:
        c = np.where(
            has, w * plaus * smooth(t, cfg.temporal_t_low, cfg.temporal_t_high) * factor, conf
        )
    c = np.where(valid, c * (1 - dark * q_ref), 0.0)
    g = np.where(has, np.where(valid, smooth(c, cfg.gate_low, cfg.gate_high), 0.0), 1.0)
    out = np.where(np.isnan(j), ref, np.where(np.isnan(ref), j, g * j + (1 - g) * ref))
    w = np.where(valid, passing, 0.0)
    bad = ~has & (~valid | (c < cfg.min_confidence_without_reference)) & (w < 0.5)
    w = np.where(bad, 0.0, w)
    g = np.where(bad, 0.0, g)
    out[:, bad] = np.nan
    # clear pass-through: the observation itself where the evidence calls the pixel clear
    blend = np.where(np.isnan(out), obs, w * obs + (1 - w) * out)
    out = np.where((w > 0) & np.isfinite(obs), blend, out)
    return out, c, w + (1 - w) * g, bad


@pytest.mark.parametrize("relative", [True, False])
def test_gate_matches_the_array_formula(relative):
    cfg = FusionConfig()
    rng = np.random.default_rng(4)
    nb, n = 6, 2000
    ref = rng.uniform(0.0, 0.5, (nb, n))
    j = ref * rng.uniform(0.3, 1.2, (nb, n)) + rng.normal(0, 0.05, (nb, n))  # shadows, negatives
    j[:, :50] += 1.2  # implausibly bright
    j[rng.random((nb, n)) < 0.05] = np.nan
    has = rng.random(n) > 0.2
    ref[:, ~has] = np.nan
    valid = rng.random(n) > 0.1
    conf = rng.random(n).astype(np.float32)
    t = rng.uniform(-0.1, 1.1, n)
    q_ref = np.where(has, rng.random(n), 0.0)
    ref_var = np.where(rng.random(n) > 0.3, rng.random(n) * 0.01, np.nan)
    a = np.full(nb, 0.8)
    factor = rng.random(n)
    obs = ref * rng.uniform(0.5, 1.5, (nb, n)) + 0.05
    obs[:, ~valid] = np.nan
    shadow = rng.random(n)
    passing = np.where(rng.random(n) > 0.5, rng.random(n), 0.0)  # half the pixels pass partly
    out = np.empty((nb, n), np.float32)
    c_out, g_out = np.empty(n, np.float32), np.empty(n, np.float32)
    flag = np.empty(n, np.uint8)
    gate_fit(
        obs,
        j,
        ref,
        has,
        valid,
        conf,
        t,
        q_ref,
        ref_var,
        a,
        factor,
        relative,
        shadow,
        passing,
        _gate_params(cfg),
        out,
        c_out,
        g_out,
        flag,
    )
    want, want_c, want_g, want_bad = reference_gate(
        obs,
        j,
        ref,
        has,
        valid,
        conf.astype(float),
        t,
        q_ref,
        ref_var,
        a,
        factor,
        relative,
        shadow,
        passing,
        cfg,
    )
    np.testing.assert_array_equal(flag.astype(bool), want_bad)
    assert 0 < want_bad.sum() < n  # both flagged and restored pixels are exercised
    np.testing.assert_allclose(c_out, want_c, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_out, want_g, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7, equal_nan=True)
