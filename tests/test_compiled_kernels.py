"""Compiled (numba) kernels against plain numpy/scipy statements of the same formulas.

Each reference below is the straightforward array formulation of a kernel's documented
formula (box-filter moments, np.nanmedian, einsum IRLS); the compiled kernels must agree
with them on random data with NaN, at every window radius, within float rounding.
"""

import warnings

import numpy as np
import pytest
from scipy import ndimage

from pipeline.kernels._common import smoothstep
from pipeline.kernels._harmonisation import harmonise_local, pair_gain_offset
from pipeline.kernels._inversion import invert
from pipeline.kernels._reference import spectral_consistency
from pipeline.kernels._transmission import floor_transmission

F32 = np.float32


def old_smoothstep(x, lo, hi):
    if hi == lo:
        return np.where(np.asarray(x) >= hi, 1.0, 0.0)
    u = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def box_sum(a, r):
    size = (1,) * (a.ndim - 2) + (2 * r + 1, 2 * r + 1)
    return (
        ndimage.uniform_filter(a.astype(np.float64), size=size, mode="constant") * (2 * r + 1) ** 2
    )


def old_ridge(s0, sx, sy, sxx, sxy, g0, o0, ridge, shrink):
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.maximum(s0, 1e-12)
        mx, my = sx / safe, sy / safe
        var = np.maximum(sxx / safe - mx * mx, 0.0)
        cov = sxy / safe - mx * my
        g = np.clip((s0 * cov + ridge * g0) / (s0 * var + ridge), 0.5, 2.0)
        o = my - g * mx
    a = old_smoothstep(s0, 0.2 * shrink, shrink)
    return np.where(s0 > 1e-9, a * g + (1 - a) * g0, g0), np.where(
        s0 > 1e-9, a * o + (1 - a) * o0, o0
    )


def old_harmonise(t, s, weight, r, pg, po, ridge, shrink):
    ok = np.isfinite(t).all(0) & np.isfinite(s).all(0)
    w = np.where(ok, weight, 0.0)
    s0 = box_sum(w, r)
    tz, sz = np.where(ok, t, 0.0), np.where(ok, s, 0.0)
    gs, os_, rs = [], [], 0
    for b in range(t.shape[0]):
        x, y = sz[b], tz[b]
        sx, sy, sxx, sxy, syy = (box_sum(w * v, r) for v in (x, y, x * x, x * y, y * y))
        g, o = old_ridge(s0, sx, sy, sxx, sxy, pg[b], po[b], ridge, shrink)
        with np.errstate(invalid="ignore", divide="ignore"):
            n = np.where(s0 > 1e-9, s0, np.nan)
            rs = rs + (syy - 2 * g * sxy - 2 * o * sy + g * g * sxx + 2 * g * o * sx) / n + o * o
        gs.append(g), os_.append(o)
    return np.array(gs), np.array(os_), np.maximum(rs / t.shape[0], 0.0)


def old_consistency(surface, eligible, sigma):
    masked = np.where(eligible[:, None], surface, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        median = np.nanmedian(masked, axis=0)
    diff = surface - median[None]
    fin = np.isfinite(diff)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.sqrt(np.where(fin, diff * diff, 0.0).sum(1) / fin.sum(1))
    c = np.exp(-((d / sigma) ** 2))
    return np.where(np.isfinite(c), c, 1.0)


def old_pair(sample, weight, ridge=4e-3, shrink=30.0, scale=0.1, iterations=3):
    t, nb, n = sample.shape
    x = sample.astype(np.float64)
    ok = np.isfinite(x).all(axis=1)
    w = np.where(ok, weight, 0.0)
    xz = np.where(ok[:, None, :], x, 0.0)
    gains, offsets, robust = np.ones((t, t, nb)), np.zeros((t, t, nb)), np.ones((t, t, n))
    for it in range(iterations):
        for i in range(t):
            pw = w[i][None, :] * w * robust[i]
            s0 = pw.sum(axis=1)
            y = xz[i]
            sx = np.einsum("jn,jbn->jb", pw, xz)
            sy = pw @ y.T
            sxx = np.einsum("jn,jbn->jb", pw, xz * xz)
            sxy = np.einsum("jn,jbn,bn->jb", pw, xz, y)
            g, o = old_ridge(s0[:, None], sx, sy, sxx, sxy, 1.0, 0.0, ridge, shrink)
            gains[i], offsets[i] = g, o
            if it + 1 < iterations:
                resid = y[None] - (g[:, :, None] * xz + o[:, :, None])
                robust[i] = 1.0 / (1.0 + (resid * resid).mean(axis=1) / scale**2)
    idx = np.arange(t)
    gains[idx, idx], offsets[idx, idx] = 1.0, 0.0
    return gains.astype(F32), offsets.astype(F32)


def _close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), "NaN patterns differ"
    np.testing.assert_allclose(a, b, atol=tol, rtol=0, equal_nan=True)


@pytest.mark.parametrize("radius", [0, 3, 32])
def test_local_harmonisation_matches_box_filter_moments(radius):
    rng = np.random.default_rng(0)
    t = rng.uniform(0.0, 0.5, (4, 50, 60))
    s = 1.1 * t + rng.normal(0, 0.01, t.shape)
    t[:, 5:9, 7:12] = np.nan
    w = rng.uniform(0, 1, (50, 60)) * (rng.random((50, 60)) < 0.8)
    pg, po = np.array([1.0, 1.1, 0.9, 1.0]), np.array([0.0, 0.01, -0.01, 0.0])
    new = harmonise_local(t, s, w, radius, pg, po, ridge=4e-3, shrink_pixels=100.0, residual=True)
    old = old_harmonise(t, s, w, radius, pg, po, 4e-3, 100.0)
    for a, b in zip(old, new, strict=True):
        _close(a, b, 1e-6)


def test_smoothstep_and_per_pixel_median_consistency():
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.2, 1.2, 1000)
    x[::17] = np.nan
    for lo, hi in ((0.25, 0.6), (0.3, 0.3)):
        _close(old_smoothstep(x, lo, hi), smoothstep(x, lo, hi), 1e-12)
    surf = rng.uniform(0, 0.5, (7, 4, 20, 30))
    surf[rng.random(surf.shape) < 0.1] = np.nan
    elig = rng.random((7, 20, 30)) < 0.6
    _close(old_consistency(surf, elig, 0.05), spectral_consistency(surf, elig, 0.05), 1e-12)


def test_inversion_and_floor_match_the_formulas():
    rng = np.random.default_rng(2)
    obs = rng.uniform(-0.05, 1.1, (3, 4, 20, 30)).astype(F32)
    obs[rng.random(obs.shape) < 0.05] = np.nan
    tb = rng.uniform(0.0, 1.0, obs.shape).astype(F32)
    air = rng.uniform(0.5, 1.0, (3, 4)).astype(F32)
    a64 = air.astype(np.float64)[:, :, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        cap = 1.0 - np.clip(obs.astype(np.float64), 0.0, None) / np.maximum(a64, 1e-3)
    _close(
        np.where(np.isfinite(cap), np.maximum(tb, cap), tb).astype(F32),
        floor_transmission(obs, air, tb),
        1e-6,
    )
    t64 = tb.astype(np.float64)
    _close(
        ((obs - a64 * (1.0 - t64)) / np.maximum(t64, 0.1)).astype(F32),
        invert(obs, air, tb, 0.1),
        1e-5,
    )


def test_robust_pair_fit_matches_einsum_irls():
    rng = np.random.default_rng(3)
    smp = rng.uniform(0, 0.5, (5, 4, 3000)).astype(F32)
    smp[2] = 1.1 * smp[0] + 0.02
    smp[3, :, :500] = 0.9  # a change the robust weights must discount
    smp[rng.random(smp.shape) < 0.05] = np.nan
    wt = rng.uniform(0, 1, (5, 3000))
    for a, b in zip(old_pair(smp, wt), pair_gain_offset(smp, wt), strict=True):
        _close(a, b, 1e-5)


def coarse_harmonise(t, s, weight, r, step, origin, pg, po, ridge, shrink):
    """The coarse-grid fit as array statements: cell sums of the moments on a grid of ``step``
    px anchored at multiples of ``step`` in the whole array, box sums over the 2m + 1 cells
    around each, the ridge fit per cell centre, then linear interpolation (coordinates
    clamped to the outermost centres)."""
    ok = np.isfinite(t).all(0) & np.isfinite(s).all(0)
    w = np.where(ok, weight, 0.0)
    tz, sz = np.where(ok, t, 0.0), np.where(ok, s, 0.0)
    m = max(1, (r + step // 2) // step)
    (oy, ox), (ny, nx) = origin, w.shape
    py, px = oy % step, ox % step
    cy, cx = -(-(py + ny) // step), -(-(px + nx) // step)

    def cells(a):
        full = np.zeros((cy * step, cx * step))
        full[py : py + ny, px : px + nx] = a
        return box_sum(full.reshape(cy, step, cx, step).sum(axis=(1, 3)), m)

    s0 = cells(w)
    gs, os_, rs = [], [], 0
    for b in range(t.shape[0]):
        x, y = sz[b], tz[b]
        sx, sy, sxx, sxy, syy = (cells(w * v) for v in (x, y, x * x, x * y, y * y))
        g, o = old_ridge(s0, sx, sy, sxx, sxy, pg[b], po[b], ridge, shrink)
        rs = rs + (syy - 2 * g * sxy - 2 * o * sy + g * g * sxx + 2 * g * o * sx) / s0 + o * o
        gs.append(g), os_.append(o)
    nodes = [np.array(gs), np.array(os_), np.maximum(rs / t.shape[0], 0.0)[None]]
    uy = np.clip((oy + np.arange(ny) - (step - 1) / 2) / step - oy // step, 0, cy - 1)
    ux = np.clip((ox + np.arange(nx) - (step - 1) / 2) / step - ox // step, 0, cx - 1)
    yy, xx = np.meshgrid(uy, ux, indexing="ij")
    out = [
        np.array([ndimage.map_coordinates(layer, [yy, xx], order=1) for layer in n]) for n in nodes
    ]
    return out[0], out[1], out[2][0]


@pytest.mark.parametrize(("radius", "step", "origin"), [(32, 8, (0, 0)), (12, 3, (37, 5))])
def test_coarse_local_harmonisation_matches_its_array_statement(radius, step, origin):
    rng = np.random.default_rng(4)
    s = rng.uniform(0.0, 0.5, (3, 70, 90))
    t = 1.1 * s + 0.02 + rng.normal(0, 0.01, s.shape)
    t[:, 5:9, 7:12] = np.nan
    w = rng.uniform(0.2, 1, (70, 90))
    pg, po = np.array([1.0, 1.1, 0.9]), np.array([0.0, 0.01, -0.01])
    new = harmonise_local(
        t,
        s,
        w,
        radius,
        pg,
        po,
        ridge=4e-3,
        shrink_pixels=100.0,
        residual=True,
        grid_step=step,
        origin=origin,
    )
    ref = coarse_harmonise(t, s, w, radius, step, origin, pg, po, 4e-3, 100.0)
    for a, b in zip(ref, new, strict=True):
        _close(a, b, 1e-5)


def test_coarse_local_harmonisation_is_chunk_independent_and_close_to_the_exact_fit():
    """A block with ``coarse_reach`` px of halo gives the whole array's core exactly; on a
    map smooth at the window's scale the coarse fit stays within 0.02 of the exact gains."""
    from pipeline.kernels._harmonisation import coarse_reach

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:200, 0:230]
    s = rng.uniform(0.05, 0.4, (3, 200, 230))
    gain = 1 + 0.2 * np.sin(yy / 60)
    t = gain[None] * s + 0.02 * np.cos(xx / 50)[None] + rng.normal(0, 0.005, s.shape)
    w = (rng.random((200, 230)) > 0.3).astype(float)
    args = (32, np.ones(3), np.zeros(3))
    whole = harmonise_local(t, s, w, *args, residual=True, grid_step=8)
    exact = harmonise_local(t, s, w, *args, residual=True)
    assert np.abs(whole[0] - exact[0]).max() < 0.02
    assert np.abs(whole[1] - exact[1]).max() < 0.005
    h, (oy, ox) = coarse_reach(32, 8), (50, 61)
    block = (slice(oy, oy + 120), slice(ox, ox + 130))
    part = harmonise_local(
        t[:, block[0], block[1]],
        s[:, block[0], block[1]],
        w[block],
        *args,
        residual=True,
        grid_step=8,
        origin=(oy, ox),
    )
    for a, b in zip(whole, part, strict=True):
        core = (Ellipsis, slice(h, 120 - h), slice(h, 130 - h))
        np.testing.assert_array_equal(a[..., block[0], block[1]][core], b[core])
    with pytest.raises(ValueError, match="grid_step"):
        harmonise_local(t, s, w, *args, grid_step=0)
