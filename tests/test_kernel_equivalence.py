"""The restructured compiled passes against straightforward statements of their formulas.

Issue 14 made these passes faster without changing their results: a selection instead of a
sort (``lower_envelope``), one compiled pass instead of numpy index arithmetic
(``surface_change``), plane-by-plane bilinear interpolation (``harmonise_fit_coarse``) and
band-outer loops over chunks of pixels (``add_candidate_fit``, ``keep_signature_fit``,
``agreement_fit``), and one compiled pass for the shadow test's darkening statistics
(``darkening_fit``, to 1e-12: it sums the bands' log ratios per pixel rather than plane by
plane). Each keeps every value's arithmetic and summation order, so each must
equal, bit for bit, the plain formula below (the implementation each replaced: a sort along
time, numpy's ``take_along_axis``, a per-pixel Python loop over the bands), on random data
with NaN and inf, zero and NaN weights, and pixels with nothing valid.
"""

import math

import numpy as np
import pytest

from pipeline.kernels._common import _darkening_at
from pipeline.kernels._evidence import lower_envelope
from pipeline.kernels._harmonisation import (
    _axis_weights,
    _cell_range,
    _interpolate_finite,
    _interpolate_plane,
    agreement_fit,
    harmonise_local,
)
from pipeline.kernels._reference import add_candidate_fit, keep_signature_fit
from pipeline.kernels._surface_change import surface_change

# --------------------------------------------------------------------------- references


def sorted_lower_envelope(values, quantile):
    """k-th smallest finite value along axis 0, k = floor(q (n - 1)): a full sort."""
    v = np.asarray(values, dtype=np.float64)
    n = np.isfinite(v).sum(axis=0)
    ordered = np.sort(np.where(np.isfinite(v), v, np.inf), axis=0)
    k = np.floor(quantile * np.maximum(n - 1, 0)).astype(np.intp)
    out = np.take_along_axis(ordered, k[None], axis=0)[0]
    return np.where(n > 0, out, np.nan)


def indexed_surface_change(data, clear, targets):
    """``surface_change`` with numpy's running maxima and ``take_along_axis`` (float32 sums)."""
    nt = data.shape[0]
    clear = clear & np.isfinite(data).all(axis=1)
    idx = np.arange(nt)[:, None, None]
    upto = np.maximum.accumulate(np.where(clear, idx, -1), axis=0)
    before = np.concatenate([np.full((1,) + clear.shape[1:], -1), upto[:-1]], axis=0)
    fromhere = np.minimum.accumulate(np.where(clear, idx, nt)[::-1], axis=0)[::-1]
    after = np.concatenate([fromhere[1:], np.full((1,) + clear.shape[1:], nt)], axis=0)
    b1, a1 = before[targets], after[targets]
    b2 = np.where(b1 >= 0, np.take_along_axis(before, np.clip(b1, 0, nt - 1), axis=0), -1)
    a2 = np.where(a1 < nt, np.take_along_axis(after, np.clip(a1, 0, nt - 1), axis=0), nt)
    both = (b1 >= 0) & (a1 < nt)
    first = np.where(both, b1, np.where(b1 >= 0, b2, a1))
    second = np.where(both, a1, np.where(b1 >= 0, b1, a2))
    ok = (first >= 0) & (first < nt) & (second >= 0) & (second < nt)
    f, s = np.clip(first, 0, nt - 1), np.clip(second, 0, nt - 1)
    squares = np.zeros(f.shape, np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf where the pair is not used
        for b in range(data.shape[1]):
            band = data[:, b]
            diff = np.take_along_axis(band, f, axis=0) - np.take_along_axis(band, s, axis=0)
            squares += diff * diff
        change = np.sqrt(squares / data.shape[1])
    return np.where(ok, change, np.nan).astype(np.float32)


def squares_in_order(values):
    """sum of v^2, added left to right from 0.0 (no compensated summation)."""
    total = 0.0
    for v in values:
        total += v * v
    return total


def keep_signature_pixel(mapped, source, share):
    """One pixel of ``_keep_signature``, in plain Python floats."""
    n_map = math.sqrt(squares_in_order(mapped))
    n_src = math.sqrt(squares_in_order(source))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = [
            float(np.float64(1.0 - share) * m / np.float64(n_map) + share * s / np.float64(n_src))
            for m, s in zip(mapped, source, strict=True)
        ]
        n_u = math.sqrt(squares_in_order(u))
        out = [float(np.float64(x) / np.float64(n_u) * n_map) for x in u]
    return [v if math.isfinite(v) else m for v, m in zip(out, mapped, strict=True)]


def add_candidate_loop(gain, offset, source, share, weight, resid, resid_default, quality, acc):
    """``add_candidate_fit`` pixel by pixel: returns (acc, acc_w, acc_var, acc_q) from ``acc``."""
    acc = [a.copy() for a in acc]
    nb, n = source.shape
    for k in range(n):
        wk = float(weight[k])
        if not wk > 0.0:
            continue
        s = [float(source[b, k]) for b in range(nb)]
        m = [float(gain[b, k]) * s[b] + float(offset[b, k]) for b in range(nb)]
        r = keep_signature_pixel(m, s, share) if share > 0.0 else m
        if not all(math.isfinite(v) for v in r):
            continue
        for b in range(nb):
            acc[0][b, k] += wk * r[b]
        acc[1][k] += wk
        rv = float(resid[k])
        acc[2][k] += wk * (rv if math.isfinite(rv) else resid_default)
        acc[3][k] += wk * float(quality[k])
    return acc


def agreement_loop(target, source, gain, offset, scale, low, high):
    """``agreement_fit`` pixel by pixel (the darkening ramp from ``_common``)."""
    nb, n = target.shape
    out = np.empty(n)
    for k in range(n):
        total, cnt, st, sr, both = 0.0, 0, 0.0, 0.0, False
        for b in range(nb):
            t = float(target[b, k])
            r = float(gain[b]) * float(source[b, k]) + float(offset[b])
            diff = t - r
            if math.isfinite(diff):
                total += diff * diff
                cnt += 1
            if math.isfinite(t) and math.isfinite(r):
                st, sr, both = st + t, sr + r, True
        d = math.sqrt(total / cnt) if cnt else math.nan
        w = 1.0 / (1.0 + (d / scale) * (d / scale))
        w = w * (1.0 - _darkening_at(st, sr, both, low, high))
        out[k] = w if math.isfinite(w) else 0.0
    return out


def bilinear_loop(node, ylo, yf, xlo, xf, finite_only):
    """The coarse grid's bilinear interpolation pixel by pixel (finite nodes only: renormalised)."""
    ncy, ncx = node.shape
    out = np.empty((ylo.size, xlo.size), np.float32)
    for y in range(ylo.size):
        k0, fy = int(ylo[y]), float(yf[y])
        k1 = min(k0 + 1, ncy - 1)
        for i in range(xlo.size):
            j0, fx = int(xlo[i]), float(xf[i])
            j1 = min(j0 + 1, ncx - 1)
            weights = ((1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx)
            values = (node[k0, j0], node[k0, j1], node[k1, j0], node[k1, j1])
            if not finite_only:
                w00, w01, w10, w11 = weights
                v00, v01, v10, v11 = (float(v) for v in values)
                out[y, i] = w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11
                continue
            num = den = 0.0
            for wq, v in zip(weights, values, strict=True):
                if wq > 0.0 and v == v:
                    num += wq * float(v)
                    den += wq
            out[y, i] = num / den if den > 0.0 else np.nan
    return out


def noisy(rng, shape, dtype=np.float32, nan=0.1, inf=0.02):
    """Reflectance-like values with NaN and +-inf sprinkled in."""
    v = rng.uniform(-0.05, 0.9, shape).astype(dtype)
    v[rng.random(shape) < nan] = np.nan
    v[rng.random(shape) < inf / 2] = np.inf
    v[rng.random(shape) < inf / 2] = -np.inf
    return v


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("quantile", [0.0, 0.25, 0.5, 1.0])
def test_lower_envelope_equals_the_sorted_quantile(dtype, quantile):
    rng = np.random.default_rng(7)
    v = noisy(rng, (13, 17, 19), dtype, nan=0.3)
    v[:, 0, 0] = np.nan  # a pixel with no valid date
    v[:, 1, 1] = 0.25  # ties
    v[:-1, 2, 2] = np.nan  # a single valid date
    v[-1, 2, 2] = 0.3
    got = lower_envelope(v, quantile)
    assert got.dtype == np.float64 and got.shape == v.shape[1:]
    np.testing.assert_array_equal(got, sorted_lower_envelope(v, quantile))
    assert np.isnan(got[0, 0]) and got[2, 2] == np.float64(v[-1, 2, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_surface_change_equals_the_indexed_formula(dtype):
    rng = np.random.default_rng(11)
    data = noisy(rng, (9, 5, 23, 21), dtype, nan=0.03, inf=0.01)
    clear = rng.random((9, 23, 21)) < 0.45
    clear[:, 0, :] = False  # no clear date at all
    clear[:, 1, :] = False
    clear[4, 1, :] = True  # one clear date only
    for targets in (np.arange(9), np.array([0, 8]), np.array([4, 2, 4])):
        got = surface_change(data, clear, targets)
        want = indexed_surface_change(data, clear, targets)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert np.isnan(got[:, 0]).all()


def test_surface_change_names_the_bad_shapes():
    with pytest.raises(ValueError, match=r"data \(T, B, Y, X\) and clear \(T, Y, X\)"):
        surface_change(np.zeros((3, 2, 4, 4)), np.zeros((3, 5, 4), bool), np.arange(3))
    with pytest.raises(ValueError, match="targets must be indices"):
        surface_change(np.zeros((3, 2, 4, 4)), np.zeros((3, 4, 4), bool), np.array([3]))


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_add_candidate_equals_the_pixel_loop(share):
    rng = np.random.default_rng(3)
    nb, n = 6, 700  # more than two chunks, the last one partial
    gain = rng.uniform(0.5, 2.0, (nb, n)).astype(np.float32)
    offset = rng.normal(0.0, 0.02, (nb, n)).astype(np.float32)
    source = noisy(rng, (nb, n), nan=0.03)
    source[:, 5] = 0.0  # a zero spectrum: no signature to keep
    weight = rng.random(n)
    weight[rng.random(n) < 0.3] = 0.0
    weight[rng.random(n) < 0.02] = np.nan
    resid = rng.random(n).astype(np.float32) * 1e-3
    resid[rng.random(n) < 0.1] = np.nan
    quality = rng.random(n)
    start = [rng.random((nb, n)), rng.random(n), rng.random(n), rng.random(n)]
    acc = [a.copy() for a in start]
    add_candidate_fit(gain, offset, source, share, weight, resid, 1.6e-3, quality, *acc)
    want = add_candidate_loop(gain, offset, source, share, weight, resid, 1.6e-3, quality, start)
    for got, expected in zip(acc, want, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(acc[1], start[1])  # something was added


def test_keep_signature_equals_the_pixel_formula():
    rng = np.random.default_rng(5)
    nb, n = 4, 300
    mapped = noisy(rng, (nb, n), np.float64, nan=0.02)
    mapped[:, 3] = 0.0
    source = noisy(rng, (nb, n), np.float64, nan=0.02)
    out = np.empty((nb, n))
    keep_signature_fit(mapped, source, 0.5, out)
    want = np.array(
        [keep_signature_pixel(list(mapped[:, k]), list(source[:, k]), 0.5) for k in range(n)]
    ).T
    np.testing.assert_array_equal(out, want)


def test_agreement_equals_the_pixel_loop():
    rng = np.random.default_rng(9)
    nb, n = 7, 600
    target = noisy(rng, (nb, n), nan=0.05)
    source = noisy(rng, (nb, n), nan=0.05)
    target[:, 10] = np.nan  # nothing to compare
    gain = rng.uniform(0.8, 1.2, nb)
    offset = rng.normal(0.0, 0.01, nb)
    out = np.empty(n)
    agreement_fit(target, source, gain, offset, 0.06, 0.6, 0.85, out)
    np.testing.assert_array_equal(
        out, agreement_loop(target, source, gain, offset, 0.06, 0.6, 0.85)
    )
    assert out[10] == 0.0 and (out > 0).any()


@pytest.mark.parametrize(("ny", "nx", "step", "oy", "ox"), [(37, 29, 8, 0, 0), (20, 45, 5, 13, 7)])
def test_coarse_interpolation_equals_the_pixel_loop(ny, nx, step, oy, ox):
    rng = np.random.default_rng(ny)
    cy0, ncy = _cell_range(oy, ny, step)
    cx0, ncx = _cell_range(ox, nx, step)
    ylo, yf = np.empty(ny, np.int64), np.empty(ny)
    xlo, xf = np.empty(nx, np.int64), np.empty(nx)
    _axis_weights(oy, ny, step, cy0, ncy, ylo, yf)
    _axis_weights(ox, nx, step, cx0, ncx, xlo, xf)
    node = rng.uniform(0.5, 2.0, (ncy, ncx))
    plane = np.empty((ny, nx), np.float32)
    _interpolate_plane(node, ylo, yf, xlo, xf, plane)
    np.testing.assert_array_equal(plane, bilinear_loop(node, ylo, yf, xlo, xf, False))
    node[rng.random(node.shape) < 0.3] = np.nan
    resid = np.empty((ny, nx), np.float32)
    _interpolate_finite(node, ylo, yf, xlo, xf, resid)
    np.testing.assert_array_equal(resid, bilinear_loop(node, ylo, yf, xlo, xf, True))


def test_coarse_harmonisation_still_matches_its_whole_array_core():
    """The interpolation's rewrite keeps the coarse fit chunking-invariant (halo = reach)."""
    rng = np.random.default_rng(2)
    target = noisy(rng, (3, 64, 64), nan=0.02, inf=0.0)
    source = (target * 1.1 + 0.01).astype(np.float32)
    weight = rng.random((64, 64))
    prior = (np.ones(3), np.zeros(3))
    whole = harmonise_local(target, source, weight, 8, *prior, residual=True, grid_step=4)
    part = harmonise_local(
        target[:, 8:],
        source[:, 8:],
        weight[8:],
        8,
        *prior,
        residual=True,
        grid_step=4,
        origin=(8, 0),
    )
    reach = 16  # coarse_reach(8, 4): (2 + 2) * 4
    for w, p in zip(whole, part, strict=True):
        np.testing.assert_array_equal(w[..., 8 + reach :, :], p[..., reach:, :])


# --------------------------------------------------------------------------- shadow darkening


def numpy_shadow_probability(data, p_cloud, darkening, spread, bands, min_reflectance=0.01):
    """The cloud-shadow probability band by band in numpy (the implementation the compiled
    ``darkening_fit`` replaced): medians of the clear dates, log ratios summed over bands."""
    from pipeline.kernels._common import band_index, smoothstep
    from pipeline.kernels._evidence import VISIBLE_DARKER
    from pipeline.kernels._transmission import snow_score

    observed = np.isfinite(data).all(axis=1)
    clear = observed & (np.nan_to_num(p_cloud, nan=1.0) < 0.5)
    n = np.zeros(observed.shape, np.int32)
    total, squares = np.zeros(observed.shape), np.zeros(observed.shape)
    vis_total, vis_n = np.zeros(observed.shape), np.zeros(observed.shape, np.int32)
    visible = [band_index(bands, b) for b in ("B02", "B03", "B04")]
    median = np.empty((data.shape[1],) + observed.shape[1:])
    for k in range(data.shape[1]):
        band = np.where(observed, data[:, k], np.nan)
        median[k] = sorted_lower_envelope(np.where(clear, band, np.nan), 0.5)
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (median[k][None] > min_reflectance) & (band > min_reflectance)
            logr = np.log(np.where(ok, band, 1.0) / np.where(ok, median[k][None], 1.0))
        n += ok
        total += logr
        squares += logr * logr
        if k in visible:
            vis_total += logr
            vis_n += ok
    mean = total / np.maximum(n, 1)
    var = np.maximum(squares / np.maximum(n, 1) - mean * mean, 0.0)
    dark = smoothstep(-mean, *darkening) * (1.0 - smoothstep(np.sqrt(var), *spread))
    vis_mean = vis_total / np.maximum(vis_n, 1)
    dark = dark * np.where(vis_n > 0, 1.0 - smoothstep(vis_mean, *VISIBLE_DARKER), 1.0)
    p = np.where(n >= 2, dark, 0.0) * (1.0 - np.nan_to_num(p_cloud, nan=0.0))
    snowy = snow_score(median[None], bands)
    still = np.nan_to_num(snow_score(data, bands))  # the dates' own: shadowed snow stays snow
    p = p * (1.0 - snowy * (1.0 - still))
    # no other clear date at the pixel: no yardstick, no opinion
    p = np.where(clear.sum(axis=0)[None] - clear > 0, p, np.nan)
    return np.where(observed, p, np.nan)


@pytest.mark.parametrize("seed", [0, 1])
def test_shadow_probability_equals_the_band_by_band_formula(seed):
    from pipeline.kernels._evidence import shadow_probability

    bands = ("B02", "B03", "B04", "B08", "B11", "B12")
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.0, 0.6, (9, len(bands), 23, 300)).astype(np.float32)
    data[rng.random(data.shape) < 0.05] = np.nan  # unobserved in some band
    data[:, :, 0, :7] = np.nan  # pixels never observed
    shade = rng.random((9, 23, 300)) < 0.2
    data *= np.where(shade, 0.4, 1.0)[:, None].astype(np.float32)  # darker dates
    p_cloud = rng.random((9, 23, 300))
    p_cloud[rng.random(p_cloud.shape) < 0.05] = np.nan
    kw = {"darkening": (0.2, 0.5), "spread": (0.3, 0.6)}
    got = shadow_probability(data, p_cloud, bands=bands, **kw)
    want = numpy_shadow_probability(data, p_cloud, kw["darkening"], kw["spread"], bands)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(got), np.isnan(want))
