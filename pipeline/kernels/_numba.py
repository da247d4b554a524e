"""Compiled (numba) inner loops of the block kernels: one pass over memory where numpy needs many.

Each function here is the single implementation of its computation; the numpy-facing
wrappers live beside the science they serve (``_reference``, ``_scene``, ``_common``) and
keep the documented semantics. All functions are ``cache=True`` (compiled once per
installation and dtype signature, not once per process) and ``nogil=True`` (several Dask
threads run them at once). None is ``parallel``: a Dask worker already runs one kernel per
thread, and ``pipeline.cluster`` pins ``NUMBA_NUM_THREADS=1`` so nothing oversubscribes.

Window sums treat pixels outside the array as absent (they add nothing), so a block with a
halo of at least the window radius gives the same interior values as the whole array.
Accumulators are float64 whatever the input dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Gain bounds of every ridge fit (``_scene._ridge_fit``): a map outside them is not a
#: radiometric difference between two dates of the same place.
GAIN_BOUNDS = (0.5, 2.0)


@njit(cache=True, nogil=True)
def _smoothstep(x: float, lo: float, hi: float) -> float:
    """Scalar twin of ``_common.smoothstep`` (NaN stays NaN)."""
    if hi == lo:
        if x >= hi:
            return 1.0
        return 0.0 if x == x else np.nan
    u = (x - lo) / (hi - lo)
    if u < 0.0:
        u = 0.0
    elif u > 1.0:
        u = 1.0
    return u * u * (3.0 - 2.0 * u)


@njit(cache=True, nogil=True)
def ridge_fit_scalar(
    s0: float,
    sx: float,
    sy: float,
    sxx: float,
    sxy: float,
    g0: float,
    o0: float,
    ridge: float,
    shrink_pixels: float,
    g_lo: float,
    g_hi: float,
) -> tuple[float, float]:
    """Ridge-regularised weighted LS gain/offset from moments (formula: ``_scene._ridge_fit``)."""
    if not s0 > 1e-9:
        return g0, o0
    safe = max(s0, 1e-12)
    mx = sx / safe
    my = sy / safe
    var = sxx / safe - mx * mx
    if var < 0.0:
        var = 0.0
    cov = sxy / safe - mx * my
    g = (s0 * cov + ridge * g0) / (s0 * var + ridge)
    if g < g_lo:
        g = g_lo
    elif g > g_hi:
        g = g_hi
    o = my - g * mx
    a = _smoothstep(s0, 0.2 * shrink_pixels, shrink_pixels)
    return a * g + (1.0 - a) * g0, a * o + (1.0 - a) * o0


@njit(cache=True, nogil=True)
def ridge_fit_flat(s0, sx, sy, sxx, sxy, g0, o0, ridge, shrink_pixels, g_lo, g_hi, gain, offset):
    """``ridge_fit_scalar`` over 1-D arrays of equal length (g0, o0 per element), in place."""
    for k in range(s0.shape[0]):
        gain[k], offset[k] = ridge_fit_scalar(
            s0[k], sx[k], sy[k], sxx[k], sxy[k], g0[k], o0[k], ridge, shrink_pixels, g_lo, g_hi
        )


@njit(cache=True, nogil=True)
def _row_moments(t, s, w, b, y, radius, prod, out):
    """Horizontal window sums of (w, w x, w y, w x^2, w x y, w y^2) of band b on row y.

    x = source, y = target; pixels of zero weight add nothing (their values may be NaN).
    ``prod`` (6, X) is scratch; ``out`` (6, X) is overwritten.
    """
    nx = w.shape[1]
    prod[:, :] = 0.0
    for i in range(nx):
        wi = w[y, i]
        if wi != 0.0:
            xv = np.float64(s[b, y, i])
            yv = np.float64(t[b, y, i])
            wx = wi * xv
            wy = wi * yv
            prod[0, i] = wi
            prod[1, i] = wx
            prod[2, i] = wy
            prod[3, i] = wx * xv
            prod[4, i] = wx * yv
            prod[5, i] = wy * yv
    for k in range(6):
        acc = 0.0
        for i in range(min(radius, nx)):
            acc += prod[k, i]
        for i in range(nx):
            if i + radius < nx:
                acc += prod[k, i + radius]
            out[k, i] = acc
            if i - radius >= 0:
                acc -= prod[k, i - radius]


@njit(cache=True, nogil=True)
def harmonise_fit(t, s, weight, radius, g0, o0, ridge, shrink_pixels, g_lo, g_hi, residual, gain, offset, resid):
    """Local per-band ridge fit of ``s`` onto ``t`` (B, Y, X) in (2r+1)^2 windows, fused.

    Semantics: ``_reference.harmonise_local``. Window sums are separable running sums:
    along each row (``_row_moments``), then down the columns with a ring of the last
    2r+1 row results, so the moments of one output row are ready when it is reached and
    only O(r X) float64 scratch is held. The fit and, with ``residual``, the band-mean
    weighted squared residual are computed in the same sweep. ``gain``, ``offset`` (B, Y, X)
    and ``resid`` (Y, X) are written in place.
    """
    nb, ny, nx = t.shape
    w = np.zeros((ny, nx))
    for y in range(ny):
        for i in range(nx):
            ok = True
            for b in range(nb):
                tv = t[b, y, i]
                sv = s[b, y, i]
                if not (np.isfinite(tv) and np.isfinite(sv)):
                    ok = False
                    break
            if ok:
                w[y, i] = weight[y, i]
    acc_resid = np.zeros((ny, nx) if residual else (0, 0))
    span = 2 * radius + 1
    ring = np.empty((span, 6, nx))
    col = np.empty((6, nx))
    prod = np.empty((6, nx))
    for b in range(nb):
        col[:, :] = 0.0
        for y in range(min(radius, ny)):
            _row_moments(t, s, w, b, y, radius, prod, ring[y % span])
            col += ring[y % span]
        for y in range(ny):
            if y + radius < ny:
                slot = (y + radius) % span
                _row_moments(t, s, w, b, y + radius, radius, prod, ring[slot])
                col += ring[slot]
            for i in range(nx):
                s0 = col[0, i]
                g, o = ridge_fit_scalar(
                    s0, col[1, i], col[2, i], col[3, i], col[4, i], g0[b], o0[b], ridge, shrink_pixels, g_lo, g_hi
                )
                gain[b, y, i] = g
                offset[b, y, i] = o
                if residual:
                    if s0 > 1e-9:
                        mse = (
                            col[5, i] - 2.0 * g * col[4, i] - 2.0 * o * col[2, i] + g * g * col[3, i] + 2.0 * g * o * col[1, i]
                        ) / s0 + o * o
                        acc_resid[y, i] += mse
                    else:
                        acc_resid[y, i] = np.nan
            if y - radius >= 0:
                col -= ring[(y - radius) % span]
    if residual:
        for y in range(ny):
            for i in range(nx):
                r = acc_resid[y, i] / nb
                resid[y, i] = 0.0 if r < 0.0 else r


@njit(cache=True, nogil=True)
def nanmedian_axis0(a, out):
    """Median over axis 0 of the non-NaN values of ``a`` (T, N), NaN where none; into ``out`` (N,).

    Insertion sort per pixel: T is a few dozen at most, and the values are read once.
    Equals ``np.nanmedian(a, axis=0)`` (mean of the two middle values for an even count)
    without its masked-array temporaries (several float64 copies of the whole stack).
    """
    nt, n = a.shape
    buf = np.empty(nt)
    for k in range(n):
        m = 0
        for i in range(nt):
            v = np.float64(a[i, k])
            if v == v:
                j = m
                while j > 0 and buf[j - 1] > v:
                    buf[j] = buf[j - 1]
                    j -= 1
                buf[j] = v
                m += 1
        if m == 0:
            out[k] = np.nan
        elif m % 2 == 1:
            out[k] = buf[m // 2]
        else:
            out[k] = 0.5 * (buf[m // 2 - 1] + buf[m // 2])
