"""Benchmark groundwork: cloud simulator, baselines and seam error (DESIGN.md section 5)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.bench import (
    band_transmission,
    boundary_mask,
    dark_channel_dehaze,
    masked_median,
    nearest_clear_date,
    seam_error,
    simulate,
    two_stage,
)

WL = np.array([490.0, 560.0, 665.0, 842.0, 1610.0, 2190.0])


def _clear_stack(t=3, shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([0.04, 0.07, 0.05, 0.30, 0.18, 0.09])[:, None, None]
    img = base * (1 + 0.2 * rng.standard_normal((t, len(WL), *shape)))
    return np.clip(img, 0.005, 1).astype("float32")


@pytest.mark.parametrize("kind", ["thin", "thick"])
@pytest.mark.parametrize("cover", [0.1, 0.5, 0.9])
def test_cover_fraction(kind, cover):
    sim = simulate(_clear_stack(), WL, target=1, kind=kind, cover=cover, seed=3)
    got = (sim.transmission < 0.95).mean() if kind == "thin" else sim.thick.mean()
    assert abs(got - cover) <= 0.02
    mask = sim.thin if kind == "thin" else sim.thick
    assert abs(mask.mean() - cover) <= 0.02


def test_transmission_range_and_wavelength_dependence():
    sim = simulate(_clear_stack(), WL, target=0, kind="thin", cover=0.6, seed=7)
    t = sim.transmission
    assert t.min() >= 0 and t.max() <= 1
    assert t.min() < 0.4 and 0.5 <= sim.gamma <= 2
    tb = band_transmission(t, WL, sim.gamma)
    hazy = t < 0.95
    assert np.all(np.diff(tb[:, hazy], axis=0) > 0)
    # the physics: I = J t + A (1 - t) on the target date
    clear = _clear_stack()
    expect = clear[0] * tb + sim.airlight[:, None, None] * (1 - tb)
    np.testing.assert_allclose(sim.cloudy[0], expect, atol=1e-5)
    assert np.all((sim.airlight >= 0.7) & (sim.airlight <= 1.0))


@pytest.mark.parametrize("kind", ["thin", "thick", "shadow", "mixed"])
def test_only_target_changed_and_deterministic(kind):
    clear = _clear_stack()
    sim = simulate(clear, WL, target=2, kind=kind, cover=0.4, seed=11)
    np.testing.assert_array_equal(sim.cloudy[:2], clear[:2])
    assert not np.array_equal(sim.cloudy[2], clear[2])
    again = simulate(clear, WL, target=2, kind=kind, cover=0.4, seed=11)
    np.testing.assert_array_equal(sim.cloudy, again.cloudy)
    changed = ~np.isclose(sim.cloudy[2], clear[2]).all(axis=0)
    assert not (changed & ~(sim.thin | sim.thick | sim.shadow | (sim.transmission < 1))).any()


def test_thick_bright_grey_and_mixed_masks():
    sim = simulate(_clear_stack(), WL, target=1, kind="mixed", cover=0.6, seed=5)
    px = sim.cloudy[1][:, sim.thick]
    assert px.min() >= 0.6 and px.max() <= 1.1
    assert np.abs(px - px.mean(axis=0)).max() < 0.1  # near grey
    assert sim.thick.any() and sim.thin.any() and sim.shadow.any()
    assert not (sim.thin & sim.thick).any() and not (sim.shadow & sim.thick).any()
    assert abs((sim.thin | sim.thick).mean() - 0.6) <= 0.02
    shade = simulate(_clear_stack(), WL, target=1, kind="shadow", cover=0.3, seed=5)
    ratio = shade.cloudy[1][:, shade.shadow] / _clear_stack()[1][:, shade.shadow]
    assert np.allclose(ratio[0], 0.5) and np.allclose(ratio[-1], 0.3)


def test_boundary_mask():
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    b = boundary_mask(m, width=2)
    assert b[5, 10] and b[3, 10] and b[6, 10] and not b[2, 10] and not b[10, 10]


def _stack(values):
    """values (T, B) -> constant (T, B, 4, 4) stack."""
    return np.broadcast_to(
        np.asarray(values, "float32")[:, :, None, None], (*np.shape(values), 4, 4)
    ).copy()


def test_nearest_clear_date_takes_nearer_clear_date():
    cloud = [0.8, 0.8, 0.8]
    x = _stack([[0.10, 0.1, 0.1], [0.2, 0.2, 0.25], cloud, [0.05, 0.06, 0.07], cloud])
    days = np.array([0.0, 5.0, 10.0, 18.0, 12.0])
    out = nearest_clear_date(x, 2, days)
    # day 5 (index 1: mean 0.217 > 0.2, white) and day 12 are cloudy; day 18 is nearer than day 0
    np.testing.assert_allclose(out, x[3])
    x[1] = 0.02
    np.testing.assert_allclose(nearest_clear_date(x, 2, days), x[1])
    # a clear target keeps its own value
    np.testing.assert_allclose(nearest_clear_date(x, 0, days), x[0])


def test_masked_median_equals_median_of_clear_values():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.0, 0.15, (7, 3, 5, 5)).astype("float32")
    x[2, :, :3] = 0.9
    x[5, :, 2:] = 0.85
    out = masked_median(x, 2, np.arange(7.0))
    clear = ~(x.mean(axis=1) > 0.2)
    for y in range(5):
        for xx in range(5):
            np.testing.assert_allclose(
                out[:, y, xx], np.median(x[clear[:, y, xx], :, y, xx], axis=0)
            )


def test_dark_channel_dehaze_improves_hazy_flat_scene():
    ny, nx = 48, 48
    truth = np.empty((3, ny, nx), "float32")
    truth[:] = np.array([0.03, 0.06, 0.05])[:, None, None]
    truth[:, :, 24:] = np.array([0.08, 0.10, 0.04])[:, None, None]
    t = np.linspace(0.5, 0.9, nx)[None, :].repeat(ny, 0)
    t[:3, :3] = 0.02  # a patch of opaque haze lets A be estimated
    a = 0.85
    hazy = truth * t + a * (1 - t)
    out = dark_channel_dehaze(hazy[None], 0, np.zeros(1), patch=5, refine_radius=4)
    region = np.ones((ny, nx), bool)
    region[:8, :8] = False
    err_in = np.sqrt(((hazy - truth)[:, region] ** 2).mean())
    err_out = np.sqrt(((out - truth)[:, region] ** 2).mean())
    assert err_out < 0.3 * err_in


def test_two_stage_fills_thick_and_dehazes_thin():
    rng = np.random.default_rng(0)
    ny, nx = 40, 40
    truth = (
        np.array([0.03, 0.06, 0.05])[:, None, None] * (1 + 0.1 * rng.standard_normal((3, ny, nx)))
    ).astype("float32")
    other = truth * 1.02
    target = truth.copy()
    t, a = 0.7, 0.9
    target[:, 5:35, 2:18] = truth[:, 5:35, 2:18] * t + a * (1 - t)
    target[:, 10:30, 24:38] = 0.9
    stack = np.stack([target, other])
    out = two_stage(stack, 0, np.array([0.0, 5.0]), patch=5, refine_radius=0)
    np.testing.assert_allclose(out[:, 10:30, 24:38], other[:, 10:30, 24:38])
    thin = (slice(None), slice(8, 32), slice(5, 15))
    err_in = np.abs(target[thin] - truth[thin]).mean()
    err_out = np.abs(out[thin] - truth[thin]).mean()
    assert err_out < 0.3 * err_in
    # clear pixels away from the clouds are untouched
    np.testing.assert_array_equal(out[:, :3, 20:], target[:, :3, 20:])


def test_seam_error():
    img = np.zeros((2, 16, 16), "float32")
    img[:, :, 8:] = 0.5
    mask = np.zeros((16, 16), bool)
    mask[:, 6:11] = True
    assert seam_error(img, img, mask) == 0.0
    shifted = np.roll(img, 1, axis=2)
    assert seam_error(img, shifted, mask) > 0
