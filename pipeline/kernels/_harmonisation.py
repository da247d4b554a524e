"""Harmonisation: the radiometric map of one date onto another, local (per window) and global
(per date pair), and the robust pre-weight that keeps disagreeing pixels out of the fit.

A per-band affine map x_i,b = g x_j,b + o, fitted by ridge-regularised weighted least
squares: globally per date pair on the scene sample (``pair_gain_offset``, the fallback and
the anchor), and locally in a window around every pixel (``harmonise_local``), shrunk to the
global map where the window holds little clear weight.

Limitations
-----------
* Harmonisation is a per-band affine map fitted in a square window (on a coarse grid,
  ``harmonise_grid_step``). The robust pre-weight (``_agreement``) keeps shadow, residual
  cloud and surface change on either date out of the fit, but a change that covers most of
  the window (harvest, flooding of a whole field) still biases it.
* The global pair gain/offset uses a window-less clear score (no dark-channel window).
* Cost grows with (dates x candidates x bands) window fits per block; ``max_candidates``
  bounds it, and ``FusionConfig.time_window_dates`` (with ``restore``'s time blocks) bounds
  the dates a long series holds at once.

Implementation: the numpy fronts first, then their compiled passes (numba, conventions in
``_common``). Window sums treat pixels outside the array as absent (they add nothing), so a
block with a halo of at least the window radius gives the same interior values as the whole
array. Accumulators are float64 whatever the input dtype.

Twin: ``_harmonisation_torch`` states ``harmonise_local`` and ``_agreement`` again in torch
tensor operations, on any torch device (``FusionConfig.backend = "torch"``); a change to a
formula here is made there too (``tests/test_harmonisation_torch.py`` holds them equal).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._common import F32, LANE_CHUNK, _darkening_at, _smoothstep, band_lanes, float_array

#: Gain bounds of every ridge fit (``ridge_fit_scalar``): a map outside them is not a
#: radiometric difference between two dates of the same place.
GAIN_BOUNDS = (0.5, 2.0)


def harmonise_local(
    target: np.ndarray,
    source: np.ndarray,
    weight: np.ndarray,
    radius: int,
    prior_gain: np.ndarray,
    prior_offset: np.ndarray,
    *,
    ridge: float = 4e-3,
    shrink_pixels: float = 30.0,
    residual: bool = False,
    grid_step: int = 1,
    origin: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, ...]:
    """Local per-band gain/offset mapping ``source`` onto ``target`` (B, Y, X) each, float32.

    Fitted by weighted least squares in a (2r+1)^2 window from box-filter moments
    S0 = sum w, Sx, Sy, Sxx, Sxy (w = clear in both dates; a pixel not finite in every band
    of both dates has no weight; pixels outside the array are absent), so the map follows
    slow spatial changes of the radiometric difference (phenology, BRDF, residual haze)
    without a per-pixel loop. The gain is ridge-pulled toward the prior (scene-level pair fit) and the pair
    (g, o) shrinks to the prior where the window holds less than ``shrink_pixels`` clear
    weight: local where the data allow, global elsewhere, identity without either.

    With ``residual=True`` a third array (Y, X) is returned: the weighted mean squared
    residual of the fitted map over the window and the bands, mean_b E_w[(t - g s - o)^2]
    (NaN where the window holds no weight). It is the local error of the harmonised
    reference as a stand-in for the target's surface, measured where both are clear.

    One fused compiled pass (``harmonise_fit``): the moments (float64 running sums),
    the ridge fit (``ridge_fit_scalar``) and the residual for all bands.

    ``grid_step`` > 1: an approximation for speed. The map is smooth at the window's scale,
    so it is fitted once per cell of ``grid_step`` px on a grid anchored to multiples of
    ``grid_step`` in the whole array (``origin``: the block's first pixel there), over a
    window of (2m + 1) whole cells (``coarse_span``, the nearest to 2r + 1 px), and
    interpolated bilinearly between cell centres (``harmonise_fit_coarse``). A block
    whose halo covers ``coarse_reach(radius, grid_step)`` gives the same core as the
    whole array.

    Torch twin (any device): ``_harmonisation_torch.harmonise_local_torch``.
    """
    t, s = float_array(target), float_array(source)
    if t.ndim != 3 or s.shape != t.shape or np.shape(weight) != t.shape[1:]:
        raise ValueError(
            f"harmonise_local needs target and source (B, Y, X) and weight (Y, X), got "
            f"{t.shape}, {s.shape} and {np.shape(weight)}"
        )
    if grid_step < 1:
        raise ValueError(f"harmonise_local: grid_step must be >= 1 px, got {grid_step}")
    nb = t.shape[0]
    gains = np.empty(t.shape, F32)
    offsets = np.empty(t.shape, F32)
    resid = np.empty(t.shape[1:] if residual else (0, 0), F32)
    w = np.ascontiguousarray(weight, dtype=np.float64)
    g0 = np.broadcast_to(np.asarray(prior_gain, np.float64), (nb,)).copy()
    o0 = np.broadcast_to(np.asarray(prior_offset, np.float64), (nb,)).copy()
    fit = (float(ridge), float(shrink_pixels), *GAIN_BOUNDS, residual, gains, offsets, resid)
    if grid_step > 1:
        oy, ox = (int(v) for v in origin)
        harmonise_fit_coarse(t, s, w, int(radius), int(grid_step), oy, ox, g0, o0, *fit)
    else:
        harmonise_fit(t, s, w, int(radius), g0, o0, *fit)
    if residual:
        return gains, offsets, resid
    return gains, offsets


def coarse_span(radius: int, step: int) -> int:
    """Half-width m (in cells of ``step`` px) of the coarse harmonisation window.

    The window of a node is the (2m + 1)^2 cells around its own, (2m + 1) step px wide: the
    nearest such width to the exact window's 2r + 1 px (never less than 3 cells).
    """
    return max(1, (int(radius) + int(step) // 2) // int(step))


def coarse_reach(radius: int, step: int) -> int:
    """Pixels beyond a block's core that the coarse fit of its core reads: (m + 2) step.

    A pixel interpolates between nodes up to one step away, a node's window reaches m cells
    beyond its own, and every cell it sums must be whole: a halo this wide makes the core
    independent of the chunking.
    """
    return (coarse_span(radius, step) + 2) * int(step)


def pair_gain_offset(
    sample: np.ndarray,
    weight: np.ndarray,
    *,
    source_weight: np.ndarray | None = None,
    ridge: float = 4e-3,
    shrink_pixels: float = 30.0,
    robust_scale: float = 0.1,
    iterations: int = 3,
    max_pixels: int = 40_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Global gain/offset that maps each date j onto each date i, (T, T, B) each.

    Weighted least squares of x_i,b = g x_j,b + o (x: the sample, raw or physically
    inverted) on pixels clear in both dates (weight w_i w_j; with ``source_weight`` v, the
    target's w_i and the source's v_j: the fusion weighs the target by its clear probability
    and the source by how much surface it shows, so that the source's scene-wide haze is
    absorbed by the map and the target's is not), with a ridge pull of g toward 1
    (``ridge`` is in units of sum(w) * variance) and shrinkage of (g, o) toward identity when
    the common clear weight is below ``shrink_pixels``. Used as the fallback of the local
    harmonisation and as the anchor of its robust pre-weight.

    Robust: ``iterations`` rounds of iteratively reweighted least squares with Cauchy weights
    1 / (1 + (r / robust_scale)^2) on the band-RMS residual r of each pixel and pair, so a
    surface change between the two dates (snow, harvest, an undetected cloud) does not bend
    the map that the rest of the scene agrees on. 1 iteration = plain weighted LS. At most
    ``max_pixels`` sample pixels are used (a regular subsample; deterministic).
    """
    if sample.shape[2] > max_pixels:
        # a global map has 2 parameters per band and pair: a regular subsample of the
        # (already strided) sample is plenty, and the IRLS passes cost O(T^2 B N)
        keep = np.linspace(0, sample.shape[2] - 1, max_pixels).astype(np.intp)
        sample, weight = sample[:, :, keep], np.asarray(weight)[:, keep]
        if source_weight is not None:
            source_weight = np.asarray(source_weight)[:, keep]
    t, nb, _ = sample.shape
    x = sample.astype(np.float64)
    ok: np.ndarray = np.asarray(np.isfinite(x).all(axis=1))  # (T, N)
    w = np.ascontiguousarray(np.where(ok, weight, 0.0), dtype=np.float64)
    v = (
        w
        if source_weight is None
        else np.ascontiguousarray(np.where(ok, source_weight, 0.0), dtype=np.float64)
    )
    # (T, N, B): the bands of one pixel side by side for the compiled moment loop
    xz = np.ascontiguousarray(np.where(ok[:, None, :], x, 0.0).transpose(0, 2, 1))
    gains = np.ones((t, t, nb))
    offsets = np.zeros((t, t, nb))
    pair_irls_fit(
        xz,
        w,
        v,
        float(ridge),
        float(shrink_pixels),
        *GAIN_BOUNDS,
        float(robust_scale),
        max(1, iterations),
        gains,
        offsets,
    )
    idx = np.arange(t)
    gains[idx, idx], offsets[idx, idx] = 1.0, 0.0
    return gains.astype(F32), offsets.astype(F32)


def _agreement(
    target: np.ndarray,
    source: np.ndarray,
    gain: np.ndarray,
    offset: np.ndarray,
    *,
    scale: float,
    darkening: tuple[float, float],
) -> np.ndarray:
    """Robust pre-weight of the harmonisation fit: pixels where the two dates disagree.

    With the scene-level map R0 = g0 J_j + o0: w = (1 - darkening(J_i, R0)) / (1 + (d / s)^2),
    d = RMS_b(J_i - R0), s = ``scale`` (the fusion: 2 consistency_sigma), darkening the
    ratio ramp (low, high) of ``_common._darkening_at`` (the fusion: shadow_ratio_low,
    shadow_ratio_high). Shadow, residual cloud and surface change on either date then do
    not bend the local fit.

    Torch twin (any device): ``_harmonisation_torch.agreement_torch``.
    """
    out = np.empty(np.shape(target)[1:])
    agreement_fit(  # one compiled pass per pixel, R0 never materialised
        band_lanes(target),
        band_lanes(source),
        np.asarray(gain, np.float64),
        np.asarray(offset, np.float64),
        float(scale),
        float(darkening[0]),
        float(darkening[1]),
        out.reshape(-1),
    )
    return out


# -- compiled passes ---------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
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
    """Ridge-regularised weighted LS gain/offset from window or pair moments, shrunk to (g0, o0).

    g = (S0 cov + ridge g0) / (S0 var + ridge), clipped to [g_lo, g_hi], o = mean_y - g mean_x,
    then (g, o) <- a (g, o) + (1 - a) (g0, o0) with a = S(S0; 0.2 shrink_pixels, shrink_pixels):
    the fit is used as is once the window (or pair) holds ``shrink_pixels`` clear weight;
    (g0, o0) alone where it holds none (S0 <= 1e-9). ``ridge`` is in units of S0 * variance.
    """
    if not s0 > 1e-9:
        return g0, o0
    return _ridge_fit_shrunk(
        s0,
        sx,
        sy,
        sxx,
        sxy,
        g0,
        o0,
        ridge,
        _smoothstep(s0, 0.2 * shrink_pixels, shrink_pixels),
        g_lo,
        g_hi,
    )


@njit(cache=True, nogil=True, error_model="numpy")
def _ridge_fit_shrunk(s0, sx, sy, sxx, sxy, g0, o0, ridge, a, g_lo, g_hi):
    """``ridge_fit_scalar`` for S0 > 1e-9 with the shrink factor ``a`` given (it depends on S0
    only, so a window fit computes it once per pixel for all bands)."""
    inv = 1.0 / s0
    mx = sx * inv
    my = sy * inv
    var = sxx * inv - mx * mx
    if var < 0.0:
        var = 0.0
    cov = sxy * inv - mx * my
    g = (s0 * cov + ridge * g0) / (s0 * var + ridge)
    if g < g_lo:
        g = g_lo
    elif g > g_hi:
        g = g_hi
    o = my - g * mx
    return a * g + (1.0 - a) * g0, a * o + (1.0 - a) * o0


@njit(cache=True, nogil=True, error_model="numpy")
def _running_sum(values, radius, out):
    """out[i] = sum of values[i - r .. i + r] within the array (a running sum, O(n))."""
    n = values.shape[0]
    acc = 0.0
    for i in range(min(radius, n)):
        acc += values[i]
    for i in range(n):
        if i + radius < n:
            acc += values[i + radius]
        out[i] = acc
        if i - radius >= 0:
            acc -= values[i - radius]


@njit(cache=True, nogil=True, error_model="numpy")
def _window_sum(w, radius):
    """Sum of ``w`` (Y, X) over the (2r+1)^2 window of every pixel, out-of-array pixels absent."""
    ny, nx = w.shape
    rows = np.empty((ny, nx))
    for y in range(ny):
        _running_sum(w[y], radius, rows[y])
    out = np.empty((ny, nx))
    column = np.empty(ny)
    summed = np.empty(ny)
    for x in range(nx):
        for y in range(ny):
            column[y] = rows[y, x]
        _running_sum(column, radius, summed)
        for y in range(ny):
            out[y, x] = summed[y]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _row_moments(t, s, w, b, y, radius, prod, out):
    """Horizontal window sums of (w x, w y, w x^2, w x y, w y^2) of band b on row y.

    x = source, y = target; pixels of zero weight add nothing (their values may be NaN).
    The weight sum itself is the same for every band (``_window_sum``, once per fit).
    ``prod`` (5, X) is scratch; ``out`` (5, X) is overwritten.
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
            prod[0, i] = wx
            prod[1, i] = wy
            prod[2, i] = wx * xv
            prod[3, i] = wx * yv
            prod[4, i] = wy * yv
    # the five running sums in one loop: five independent chains of additions keep the
    # core busy, where one sum at a time waits on each addition (latency-bound, 4x slower)
    a0 = a1 = a2 = a3 = a4 = 0.0
    for i in range(min(radius, nx)):
        a0 += prod[0, i]
        a1 += prod[1, i]
        a2 += prod[2, i]
        a3 += prod[3, i]
        a4 += prod[4, i]
    for i in range(nx):
        j = i + radius
        if j < nx:
            a0 += prod[0, j]
            a1 += prod[1, j]
            a2 += prod[2, j]
            a3 += prod[3, j]
            a4 += prod[4, j]
        out[0, i] = a0
        out[1, i] = a1
        out[2, i] = a2
        out[3, i] = a3
        out[4, i] = a4
        j = i - radius
        if j >= 0:
            a0 -= prod[0, j]
            a1 -= prod[1, j]
            a2 -= prod[2, j]
            a3 -= prod[3, j]
            a4 -= prod[4, j]


@njit(cache=True, nogil=True, error_model="numpy")
def harmonise_fit(
    t, s, weight, radius, g0, o0, ridge, shrink_pixels, g_lo, g_hi, residual, gain, offset, resid
):
    """Local per-band ridge fit of ``s`` onto ``t`` (B, Y, X) in (2r+1)^2 windows, fused.

    Semantics: ``harmonise_local``. Window sums are separable running sums:
    the weight sum S0 once (``_window_sum``, with the shrink factor of every pixel), the
    other moments per band along each row (``_row_moments``), then down the columns with a
    ring of the last 2r+1 row results, so the moments of one output row are ready when it
    is reached and only O(r X) float64 scratch is held. The fit and, with ``residual``, the
    band-mean weighted squared residual are computed in the same sweep. ``gain``, ``offset``
    (B, Y, X) and ``resid`` (Y, X) are written in place. Torch twin:
    ``_harmonisation_torch._fit_exact``.
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
    s0_map = _window_sum(w, radius)
    shrink = np.empty((ny, nx))
    for y in range(ny):
        for i in range(nx):
            shrink[y, i] = _smoothstep(s0_map[y, i], 0.2 * shrink_pixels, shrink_pixels)
    acc_resid = np.zeros((ny, nx) if residual else (0, 0))
    span = 2 * radius + 1
    ring = np.empty((span, 5, nx))
    col = np.empty((5, nx))
    prod = np.empty((5, nx))
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
                s0 = s0_map[y, i]
                if not s0 > 1e-9:
                    gain[b, y, i] = g0[b]
                    offset[b, y, i] = o0[b]
                    if residual:
                        acc_resid[y, i] = np.nan
                    continue
                sx = col[0, i]
                sy = col[1, i]
                sxy = col[3, i]
                sxx = col[2, i]
                g, o = _ridge_fit_shrunk(
                    s0, sx, sy, sxx, sxy, g0[b], o0[b], ridge, shrink[y, i], g_lo, g_hi
                )
                gain[b, y, i] = g
                offset[b, y, i] = o
                if residual:
                    mse = (
                        col[4, i] - 2.0 * g * sxy - 2.0 * o * sy + g * g * sxx + 2.0 * g * o * sx
                    ) / s0 + o * o
                    acc_resid[y, i] += mse
            if y - radius >= 0:
                col -= ring[(y - radius) % span]
    if residual:
        for y in range(ny):
            for i in range(nx):
                r = acc_resid[y, i] / nb
                resid[y, i] = 0.0 if r < 0.0 else r


@njit(cache=True, nogil=True, error_model="numpy")
def _cell_range(origin, n, step):
    """Global index of the first cell of a block starting at ``origin`` and the cell count."""
    c0 = origin // step
    c1 = (origin + n - 1) // step
    return c0, c1 - c0 + 1


@njit(cache=True, nogil=True, error_model="numpy")
def _window_cells(cells, m, out):
    """Sum of ``cells`` (Cy, Cx, K) over the (2m+1)^2 cells around each cell into ``out``.

    Direct sums in a fixed order (no running sum), so a cell's total does not depend on
    where the block starts; cells outside the block are absent.
    """
    ncy, ncx, nk = cells.shape
    rows = np.zeros((ncy, ncx, nk))
    for cy in range(ncy):
        for cx in range(ncx):
            for j in range(max(cx - m, 0), min(cx + m + 1, ncx)):
                for k in range(nk):
                    rows[cy, cx, k] += cells[cy, j, k]
    out[:, :, :] = 0.0
    for cy in range(ncy):
        for j in range(max(cy - m, 0), min(cy + m + 1, ncy)):
            for cx in range(ncx):
                for k in range(nk):
                    out[cy, cx, k] += rows[j, cx, k]


@njit(cache=True, nogil=True, error_model="numpy")
def _axis_weights(origin, n, step, c0, ncells, lo, frac):
    """Bilinear coordinates along one axis: node index ``lo`` (local, clamped) and weight of lo+1.

    Nodes sit at the cell centres, global coordinate c step + (step - 1) / 2.
    """
    for i in range(n):
        u = (origin + i - 0.5 * (step - 1)) / step
        k = int(np.floor(u))
        f = u - k
        k -= c0
        if k < 0:
            k, f = 0, 0.0
        if k >= ncells - 1:
            k, f = ncells - 1, 0.0
        lo[i] = k
        frac[i] = f


@njit(cache=True, nogil=True, error_model="numpy")
def harmonise_fit_coarse(
    t,
    s,
    weight,
    radius,
    step,
    oy,
    ox,
    g0,
    o0,
    ridge,
    shrink_pixels,
    g_lo,
    g_hi,
    residual,
    gain,
    offset,
    resid,
):
    """``harmonise_fit`` on a coarse grid anchored to global pixel coordinates, interpolated.

    Semantics: ``harmonise_local`` with ``grid_step`` > 1. The moments are summed
    per cell of ``step`` x ``step`` px (cells aligned to multiples of ``step`` in the whole
    array: (``oy``, ``ox``) is the block's first pixel there), then over the (2m + 1)^2
    cells around each cell (``coarse_span``); the ridge fit and residual are evaluated once
    per cell, at its centre, and bilinearly interpolated to every pixel (the residual over
    the finite nodes only; NaN where none of the four is). The fit costs O(cells) instead of
    O(pixels); the moments still read every pixel once. Torch twin:
    ``_harmonisation_torch._fit_coarse``.
    """
    nb, ny, nx = t.shape
    m = max(1, (radius + step // 2) // step)
    cy0, ncy = _cell_range(oy, ny, step)
    cx0, ncx = _cell_range(ox, nx, step)
    # per-cell sums, moments innermost (one cache line per pixel): [0] = S0, then per band
    # Sx, Sy, Sxx, Sxy, Syy
    cells = np.zeros((ncy, ncx, 1 + 5 * nb))
    for y in range(ny):
        cy = (oy + y) // step - cy0
        for i in range(nx):
            wi = weight[y, i]
            if not wi != 0.0:
                continue
            ok = True
            for b in range(nb):
                if not (np.isfinite(t[b, y, i]) and np.isfinite(s[b, y, i])):
                    ok = False
                    break
            if not ok:
                continue
            cx = (ox + i) // step - cx0
            cells[cy, cx, 0] += wi
            for b in range(nb):
                xv = np.float64(s[b, y, i])
                yv = np.float64(t[b, y, i])
                wx = wi * xv
                wy = wi * yv
                k = 1 + 5 * b
                cells[cy, cx, k] += wx
                cells[cy, cx, k + 1] += wy
                cells[cy, cx, k + 2] += wx * xv
                cells[cy, cx, k + 3] += wx * yv
                cells[cy, cx, k + 4] += wy * yv
    sums = np.empty_like(cells)
    _window_cells(cells, m, sums)
    node_g = np.empty((nb, ncy, ncx))
    node_o = np.empty((nb, ncy, ncx))
    node_r = np.empty((ncy, ncx))
    for cy in range(ncy):
        for cx in range(ncx):
            s0 = sums[cy, cx, 0]
            if not s0 > 1e-9:
                for b in range(nb):
                    node_g[b, cy, cx] = g0[b]
                    node_o[b, cy, cx] = o0[b]
                node_r[cy, cx] = np.nan
                continue
            a = _smoothstep(s0, 0.2 * shrink_pixels, shrink_pixels)
            acc = 0.0
            for b in range(nb):
                k = 1 + 5 * b
                sx = sums[cy, cx, k]
                sy = sums[cy, cx, k + 1]
                sxx = sums[cy, cx, k + 2]
                sxy = sums[cy, cx, k + 3]
                g, o = _ridge_fit_shrunk(s0, sx, sy, sxx, sxy, g0[b], o0[b], ridge, a, g_lo, g_hi)
                node_g[b, cy, cx] = g
                node_o[b, cy, cx] = o
                acc += (
                    sums[cy, cx, k + 4]
                    - 2.0 * g * sxy
                    - 2.0 * o * sy
                    + g * g * sxx
                    + 2.0 * g * o * sx
                ) / s0 + o * o
            r = acc / nb
            node_r[cy, cx] = 0.0 if r < 0.0 else r
    ylo = np.empty(ny, np.int64)
    yf = np.empty(ny)
    xlo = np.empty(nx, np.int64)
    xf = np.empty(nx)
    _axis_weights(oy, ny, step, cy0, ncy, ylo, yf)
    _axis_weights(ox, nx, step, cx0, ncx, xlo, xf)
    # one plane at a time: contiguous rows of nodes in, contiguous rows of pixels out (the
    # same bilinear formula per value as a per-pixel loop over the bands, 3x faster)
    for b in range(nb):
        _interpolate_plane(node_g[b], ylo, yf, xlo, xf, gain[b])
        _interpolate_plane(node_o[b], ylo, yf, xlo, xf, offset[b])
    if residual:
        _interpolate_finite(node_r, ylo, yf, xlo, xf, resid)


@njit(cache=True, nogil=True, error_model="numpy")
def _corner_weights(fy, fx):
    """Bilinear weights of the four nodes (k0 j0, k0 j1, k1 j0, k1 j1) at fractions (fy, fx)."""
    return (1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx


@njit(cache=True, nogil=True, error_model="numpy")
def _interpolate_plane(node, ylo, yf, xlo, xf, out):
    """Bilinear interpolation of ``node`` (Cy, Cx) to every pixel of ``out`` (Y, X).

    ``ylo``/``yf`` and ``xlo``/``xf``: each pixel's lower node and the weight of the next
    (``_axis_weights``); the upper node is clamped to the grid.
    """
    ncy, ncx = node.shape
    ny, nx = out.shape
    for y in range(ny):
        k0 = ylo[y]
        k1 = min(k0 + 1, ncy - 1)
        fy = yf[y]
        row0 = node[k0]
        row1 = node[k1]
        dst = out[y]
        for i in range(nx):
            j0 = xlo[i]
            j1 = min(j0 + 1, ncx - 1)
            w00, w01, w10, w11 = _corner_weights(fy, xf[i])
            dst[i] = w00 * row0[j0] + w01 * row0[j1] + w10 * row1[j0] + w11 * row1[j1]


@njit(cache=True, nogil=True, error_model="numpy")
def _interpolate_finite(node, ylo, yf, xlo, xf, out):
    """``_interpolate_plane`` over the finite nodes only (weights renormalised); NaN where
    none of the four nodes with a positive weight is finite."""
    ncy, ncx = node.shape
    ny, nx = out.shape
    for y in range(ny):
        k0 = ylo[y]
        k1 = min(k0 + 1, ncy - 1)
        fy = yf[y]
        for i in range(nx):
            j0 = xlo[i]
            j1 = min(j0 + 1, ncx - 1)
            w00, w01, w10, w11 = _corner_weights(fy, xf[i])
            num, den = _add_finite_node(0.0, 0.0, w00, node[k0, j0])
            num, den = _add_finite_node(num, den, w01, node[k0, j1])
            num, den = _add_finite_node(num, den, w10, node[k1, j0])
            num, den = _add_finite_node(num, den, w11, node[k1, j1])
            out[y, i] = num / den if den > 0.0 else np.nan


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _add_finite_node(num, den, weight, value):
    """One node's term of ``_interpolate_finite``: (num + w v, den + w) where w > 0 and v is
    not NaN, else (num, den) unchanged."""
    if weight > 0.0 and value == value:
        return num + weight * value, den + weight
    return num, den


@njit(cache=True, nogil=True, error_model="numpy")
def pair_irls_fit(
    x, w, v, ridge, shrink_pixels, g_lo, g_hi, robust_scale, iterations, gains, offsets
):
    """Robust global gain/offset of every date pair (semantics: ``pair_gain_offset``).

    ``x`` (T, N, B) float64 sample, 0 where a pixel is not finite in every band; ``w`` (T, N)
    target weights and ``v`` (T, N) source weights, 0 there. For each target i and source j:
    weighted moments with pair weights w_i v_j r_ij (r: Cauchy robust weights of the previous round, 1 in the first), the ridge
    fit toward identity, then the new r_ij = 1 / (1 + mean_b(resid^2) / robust_scale^2).
    ``gains``, ``offsets`` (T, T, B) are written in place (the diagonal is left to the caller).
    """
    nt, n, nb = x.shape
    robust = np.ones((nt, nt, n))  # [i, j, pixel]
    mom = np.empty((4, nb))
    for it in range(iterations):
        last = it + 1 >= iterations
        for i in range(nt):
            for j in range(nt):
                s0 = 0.0
                mom[:, :] = 0.0
                for k in range(n):
                    pw = w[i, k] * v[j, k] * robust[i, j, k]
                    if pw == 0.0:
                        continue
                    s0 += pw
                    for b in range(nb):
                        xv = x[j, k, b]
                        yv = x[i, k, b]
                        pwx = pw * xv
                        mom[0, b] += pwx
                        mom[1, b] += pw * yv
                        mom[2, b] += pwx * xv
                        mom[3, b] += pwx * yv
                for b in range(nb):
                    gains[i, j, b], offsets[i, j, b] = ridge_fit_scalar(
                        s0,
                        mom[0, b],
                        mom[1, b],
                        mom[2, b],
                        mom[3, b],
                        1.0,
                        0.0,
                        ridge,
                        shrink_pixels,
                        g_lo,
                        g_hi,
                    )
            if not last:
                for j in range(nt):
                    for k in range(n):
                        r2 = 0.0
                        for b in range(nb):
                            r = x[i, k, b] - (gains[i, j, b] * x[j, k, b] + offsets[i, j, b])
                            r2 += r * r
                        robust[i, j, k] = 1.0 / (1.0 + (r2 / nb) / robust_scale**2)


@njit(cache=True, nogil=True, error_model="numpy")
def agreement_fit(target, source, gain, offset, scale, low, high, out):
    """Robust pre-weight of the local fit per pixel (semantics: ``_agreement``).

    r0 = gain_b J_j + offset_b; w = (1 - darkening(J_i, r0)) / (1 + (d / scale)^2), d the RMS
    over the finite bands of J_i - r0; 0 where w is not finite. (B, N) in, ``out`` (N,).
    Band-outer over chunks of ``LANE_CHUNK`` pixels (the sums still run in band order per
    pixel, as a per-pixel loop over the bands would add them). Torch twin:
    ``_harmonisation_torch._agreement``.
    """
    nb, n = target.shape
    total = np.empty(LANE_CHUNK)
    cnt = np.empty(LANE_CHUNK, np.int64)
    st = np.empty(LANE_CHUNK)
    sr = np.empty(LANE_CHUNK)
    any_both = np.empty(LANE_CHUNK, np.bool_)
    for p0 in range(0, n, LANE_CHUNK):
        count = min(LANE_CHUNK, n - p0)
        total[:count] = 0.0
        cnt[:count] = 0
        st[:count] = 0.0
        sr[:count] = 0.0
        any_both[:count] = False
        for b in range(nb):
            tgt = target[b, p0 : p0 + count]
            src = source[b, p0 : p0 + count]
            g = gain[b]
            o = offset[b]
            for q in range(count):
                t = np.float64(tgt[q])
                r = g * np.float64(src[q]) + o
                diff = t - r
                if np.isfinite(diff):
                    total[q] += diff * diff
                    cnt[q] += 1
                if np.isfinite(t) and np.isfinite(r):
                    st[q] += t
                    sr[q] += r
                    any_both[q] = True
        for q in range(count):
            d = np.sqrt(total[q] / cnt[q]) if cnt[q] > 0 else np.nan
            w = 1.0 / (1.0 + (d / scale) ** 2)
            w = w * (1.0 - _darkening_at(st[q], sr[q], any_both[q], low, high))
            out[p0 + q] = w if np.isfinite(w) else 0.0
