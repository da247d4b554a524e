"""Temporal transmission, inverse-variance gate, robust pair harmonisation, inversion floor."""

from __future__ import annotations

import numpy as np

from pipeline.kernels import (
    band_transmission,
    floor_transmission,
    forward_model,
    invert,
    pair_gain_offset,
)
from pipeline.kernels._fusion import FusionConfig
from pipeline.kernels._inversion import _physics_weight, _prior_factor
from pipeline.kernels._temporal import temporal_band_transmission

WL = np.array([490.0, 560.0, 665.0, 842.0, 1610.0, 2190.0])
A = np.array([0.85, 0.84, 0.83, 0.8, 0.6, 0.45])


def _surface(shape=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([0.04, 0.07, 0.05, 0.30, 0.18, 0.09])[:, None, None]
    return (base * (1 + 0.15 * rng.standard_normal((len(WL), *shape)))).clip(0.005, 1)


def test_haze_on_an_unchanged_surface_is_read_exactly_per_band():
    j = _surface()
    t_ref = np.full((1, 32, 32), 0.55)
    tb = band_transmission(t_ref, WL, np.array([1.3]))[0]
    hazy = forward_model(j[None], A[None], tb[None])[0]
    t, usable = temporal_band_transmission(hazy, j, A, WL, radius=1, noise=0.03)
    ok = usable[:4]  # visible + NIR have leverage A_b - J_b >= 0.15
    assert ok.all()
    np.testing.assert_allclose(t[:4], tb[:4], atol=2e-3)
    # ... so the inversion with it gives the surface back
    back = invert(hazy[None], A[None], np.where(usable, t, tb)[None])[0]
    np.testing.assert_allclose(back[:4], j[:4], atol=2e-3)


def test_clear_pixels_and_surface_changes_are_not_haze():
    j = _surface()
    # the same surface: no haze at all
    t, _ = temporal_band_transmission(j, j, A, WL)
    assert np.nanmin(t) == 1.0
    # a harvested field: brighter in the visible, darker in the NIR (mixed signs, faint)
    harvested = j.copy()
    harvested[:3] += 0.08
    harvested[3] -= 0.2
    t, _ = temporal_band_transmission(harvested, j, A, WL)
    assert np.nanmin(t) == 1.0
    # bare soil: brightening that rises from blue to red
    soil = j.copy()
    soil[:3] += np.array([0.05, 0.09, 0.14])[:, None, None]
    t, _ = temporal_band_transmission(soil, j, A, WL)
    assert np.nanmin(t) == 1.0


def test_per_band_transmission_never_falls_with_wavelength():
    rng = np.random.default_rng(1)
    j = _surface()
    hazy = forward_model(
        j[None], A[None], band_transmission(np.full((1, 32, 32), 0.6), WL, np.array([1.0]))
    )[0]
    noisy = hazy + 0.02 * rng.standard_normal(hazy.shape)
    t, usable = temporal_band_transmission(noisy, j, A, WL, radius=0)
    both = usable[:-1] & usable[1:]
    assert np.all(np.diff(t, axis=0)[both] >= -1e-12)


def test_floor_transmission_keeps_the_inverted_surface_non_negative():
    obs = np.array([[0.05, 0.02], [0.3, 0.01]])[None, :, :, None]  # (T=1, B=2, Y=2, X=1)
    a = np.array([[0.8, 0.5]])
    t = np.full(obs.shape, 0.5)
    floored = floor_transmission(obs, a, t)
    # hand-computed caps 1 - I/A: [0.9375, 0.96] for pixel 0, [0.625, 0.98] for pixel 1
    np.testing.assert_allclose(floored[0, :, :, 0], [[0.9375, 0.975], [0.5, 0.98]], rtol=1e-6)
    assert (invert(obs, a, floored) >= -1e-6).all()


def test_gate_prefers_the_inversion_on_clear_pixels_and_the_reference_under_opaque_cloud():
    cfg = FusionConfig()
    ref = np.full((3, 1, 3), 0.1)
    t = np.array([[1.0, 0.6, 0.1]])
    w = _physics_weight(ref, t, np.full(3, 0.8), np.full((1, 3), 0.03**2), np.ones((1, 3)), cfg)
    assert w[0, 0] > 0.9 and w[0, 2] < 0.01
    assert w[0, 0] > w[0, 1] > w[0, 2]
    # a worse reference (larger harmonisation residual) shifts the balance to the inversion
    w_bad_ref = _physics_weight(
        ref, t, np.full(3, 0.8), np.full((1, 3), 0.1**2), np.ones((1, 3)), cfg
    )
    assert w_bad_ref[0, 1] > w[0, 1]


def test_a_priors_own_factor_survives_the_refinement():
    cfg = FusionConfig()
    t = np.full((1, 2, 2), 0.9)
    surface = np.full((1, 3, 2, 2), 0.1)
    from pipeline.kernels import inversion_confidence

    physical = inversion_confidence(
        t, surface, t_low=cfg.temporal_t_low, t_high=cfg.temporal_t_high
    )
    factor = _prior_factor(0.4 * physical, t, surface, cfg)
    np.testing.assert_allclose(factor, 0.4, rtol=1e-5)


def test_robust_pair_fit_ignores_a_surface_change_on_part_of_the_scene():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.02, 0.4, (1, 4, 4000))
    y = 1.1 * x + 0.01
    y[:, :, :600] = 0.7  # snow on 15 % of the target date
    sample = np.concatenate([y, x]).astype("float32")
    w = np.ones((2, 4000))
    g_plain, o_plain = pair_gain_offset(sample, w, iterations=1)
    g, o = pair_gain_offset(sample, w, iterations=3)
    assert np.abs(g[0, 1] - 1.1).max() < 0.03 and np.abs(o[0, 1] - 0.01).max() < 0.01
    assert np.abs(g_plain[0, 1] - 1.1).max() > 0.1  # what the robust weights remove
