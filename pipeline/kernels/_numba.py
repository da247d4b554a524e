"""Compiled (numba) inner loops of the block kernels: one pass over memory where numpy needs many.

Each function here is the single implementation of its computation; the numpy-facing
wrappers live beside the science they serve (``_reference``, ``_scene``, ``_common``) and
keep the documented semantics. All functions are ``cache=True`` (compiled once per
installation and dtype signature, not once per process) and ``nogil=True`` (several Dask
threads run them at once). None is ``parallel``: a Dask worker already runs one kernel per
thread, and ``pipeline.cluster`` pins ``NUMBA_NUM_THREADS=1`` so nothing oversubscribes.
``error_model="numpy"``: a division by zero gives inf / NaN as in numpy (the callers rely on
NaN propagation), never a ZeroDivisionError.

Window sums treat pixels outside the array as absent (they add nothing), so a block with a
halo of at least the window radius gives the same interior values as the whole array.
Accumulators are float64 whatever the input dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Gain bounds of every ridge fit (``ridge_fit_scalar``): a map outside them is not a
#: radiometric difference between two dates of the same place.
GAIN_BOUNDS = (0.5, 2.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _smoothstep(x: float, lo: float, hi: float) -> float:
    """Scalar ``_common.smoothstep``: 0 for x <= lo, 1 for x >= hi, 3u^2 - 2u^3 between.

    NaN stays NaN; with hi == lo it is the step x >= hi (NaN -> 0), as in numpy's version.
    """
    if hi == lo:
        return 1.0 if x >= hi else 0.0
    u = (x - lo) / (hi - lo)
    if u < 0.0:
        u = 0.0
    elif u > 1.0:
        u = 1.0
    return u * u * (3.0 - 2.0 * u)


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

    Semantics: ``_reference.harmonise_local``. Window sums are separable running sums:
    the weight sum S0 once (``_window_sum``, with the shrink factor of every pixel), the
    other moments per band along each row (``_row_moments``), then down the columns with a
    ring of the last 2r+1 row results, so the moments of one output row are ready when it
    is reached and only O(r X) float64 scratch is held. The fit and, with ``residual``, the
    band-mean weighted squared residual are computed in the same sweep. ``gain``, ``offset``
    (B, Y, X) and ``resid`` (Y, X) are written in place.
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

    Semantics: ``_reference.harmonise_local`` with ``grid_step`` > 1. The moments are summed
    per cell of ``step`` x ``step`` px (cells aligned to multiples of ``step`` in the whole
    array: (``oy``, ``ox``) is the block's first pixel there), then over the (2m + 1)^2
    cells around each cell (``coarse_span``); the ridge fit and residual are evaluated once
    per cell, at its centre, and bilinearly interpolated to every pixel (the residual over
    the finite nodes only; NaN where none of the four is). The fit costs O(cells) instead of
    O(pixels); the moments still read every pixel once.
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
    for y in range(ny):
        k0 = ylo[y]
        k1 = min(k0 + 1, ncy - 1)
        fy = yf[y]
        for i in range(nx):
            j0 = xlo[i]
            j1 = min(j0 + 1, ncx - 1)
            fx = xf[i]
            w00 = (1.0 - fy) * (1.0 - fx)
            w01 = (1.0 - fy) * fx
            w10 = fy * (1.0 - fx)
            w11 = fy * fx
            for b in range(nb):
                gain[b, y, i] = (
                    w00 * node_g[b, k0, j0]
                    + w01 * node_g[b, k0, j1]
                    + w10 * node_g[b, k1, j0]
                    + w11 * node_g[b, k1, j1]
                )
                offset[b, y, i] = (
                    w00 * node_o[b, k0, j0]
                    + w01 * node_o[b, k0, j1]
                    + w10 * node_o[b, k1, j0]
                    + w11 * node_o[b, k1, j1]
                )
            if residual:
                num = 0.0
                den = 0.0
                for wq, v in (
                    (w00, node_r[k0, j0]),
                    (w01, node_r[k0, j1]),
                    (w10, node_r[k1, j0]),
                    (w11, node_r[k1, j1]),
                ):
                    if wq > 0.0 and v == v:
                        num += wq * v
                        den += wq
                resid[y, i] = num / den if den > 0.0 else np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def _median_sorted(buf, m):
    """Median of the first ``m`` values of the sorted ``buf`` (mean of the middle two if even)."""
    if m == 0:
        return np.nan
    if m % 2 == 1:
        return buf[m // 2]
    return 0.5 * (buf[m // 2 - 1] + buf[m // 2])


@njit(cache=True, nogil=True, error_model="numpy")
def spectral_consistency_fit(surface, eligible, sigma, out):
    """Per pixel: M_b = median over the eligible dates of J_b, then exp(-(d_t / sigma)^2) per date.

    Semantics: ``_reference.spectral_consistency``; ``surface`` (T, B, N), ``eligible``
    (T, N) bool, ``out`` (T, N) float64. The median is that of ``np.nanmedian`` over the
    eligible non-NaN values (insertion sort: T is a few dozen at most); d_t is the RMS over
    the bands where J_t,b - M_b is finite; 1 where no band is (no anchor or no value).
    Replaces numpy's masked-array median, which held several float64 copies of the stack.
    """
    nt, nb, n = surface.shape
    buf = np.empty(nt)
    med = np.empty(nb)
    for k in range(n):
        for b in range(nb):
            m = 0
            for i in range(nt):
                if not eligible[i, k]:
                    continue
                v = np.float64(surface[i, b, k])
                if v != v:
                    continue
                j = m
                while j > 0 and buf[j - 1] > v:
                    buf[j] = buf[j - 1]
                    j -= 1
                buf[j] = v
                m += 1
            med[b] = _median_sorted(buf, m)
        for i in range(nt):
            total = 0.0
            cnt = 0
            for b in range(nb):
                diff = np.float64(surface[i, b, k]) - med[b]
                if np.isfinite(diff):
                    total += diff * diff
                    cnt += 1
            if cnt == 0:
                out[i, k] = 1.0
            else:
                c = np.exp(-((np.sqrt(total / cnt) / sigma) ** 2))
                out[i, k] = c if np.isfinite(c) else 1.0


@njit(cache=True, nogil=True, error_model="numpy")
def floor_transmission_fit(observed, airlight, t_band, out):
    """t_b raised to the cap 1 - max(I_b, 0) / max(A_b, 1e-3) (formula: ``_physics.floor_transmission``).

    ``observed``, ``t_band`` (N, B, P), ``airlight`` (N, B), ``out`` (N, B, P) float32; float64
    arithmetic per value. Where the cap is not finite (no observation, no airlight) t_b stays.
    """
    n, nb, npx = observed.shape
    for i in range(n):
        for b in range(nb):
            a = np.float64(airlight[i, b])
            if a < 1e-3:
                a = 1e-3
            for k in range(npx):
                t = np.float64(t_band[i, b, k])
                v = np.float64(observed[i, b, k])
                if v < 0.0:
                    v = 0.0
                cap = 1.0 - v / a
                if np.isfinite(cap) and not cap <= t:
                    t = cap if t == t else t
                out[i, b, k] = t


@njit(cache=True, nogil=True, error_model="numpy")
def invert_fit(observed, airlight, t_band, t_min, out):
    """J_b = (I_b - A_b (1 - t_b)) / max(t_b, t_min) (formula: ``_physics.invert``), float64 arithmetic.

    ``observed``, ``t_band`` (N, B, P), ``airlight`` (N, B), ``out`` (N, B, P) float32.
    """
    n, nb, npx = observed.shape
    for i in range(n):
        for b in range(nb):
            a = np.float64(airlight[i, b])
            for k in range(npx):
                t = np.float64(t_band[i, b, k])
                den = t if t >= t_min or t != t else t_min
                out[i, b, k] = (np.float64(observed[i, b, k]) - a * (1.0 - t)) / den


@njit(cache=True, nogil=True, error_model="numpy")
def pair_irls_fit(x, w, ridge, shrink_pixels, g_lo, g_hi, robust_scale, iterations, gains, offsets):
    """Robust global gain/offset of every date pair (semantics: ``_scene.pair_gain_offset``).

    ``x`` (T, N, B) float64 sample, 0 where a pixel is not finite in every band; ``w`` (T, N)
    weights, 0 there. For each target i and source j: weighted moments with pair weights
    w_i w_j r_ij (r: Cauchy robust weights of the previous round, 1 in the first), the ridge
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
                    pw = w[i, k] * w[j, k] * robust[i, j, k]
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
def _keep_signature_at(mapped, source, share, out):
    """One pixel of ``_fusion._keep_signature``: ``mapped`` and ``source`` (B,) into ``out`` (B,).

    out = u / |u| * |mapped|, u = (1 - share) mapped / |mapped| + share source / |source|;
    a band where that is not finite keeps the mapped value.
    """
    nb = mapped.shape[0]
    n_map = 0.0
    n_src = 0.0
    for b in range(nb):
        n_map += mapped[b] * mapped[b]
        n_src += source[b] * source[b]
    n_map = np.sqrt(n_map)
    n_src = np.sqrt(n_src)
    n_u = 0.0
    for b in range(nb):
        u = (1.0 - share) * mapped[b] / n_map + share * source[b] / n_src
        out[b] = u
        n_u += u * u
    n_u = np.sqrt(n_u)
    for b in range(nb):
        v = out[b] / n_u * n_map
        out[b] = v if np.isfinite(v) else mapped[b]


@njit(cache=True, nogil=True, error_model="numpy")
def keep_signature_fit(mapped, source, share, out):
    """``_keep_signature_at`` over (B, N) arrays (share > 0), into ``out`` (B, N) float64."""
    nb, n = mapped.shape
    m = np.empty(nb)
    s = np.empty(nb)
    o = np.empty(nb)
    for k in range(n):
        for b in range(nb):
            m[b] = mapped[b, k]
            s[b] = source[b, k]
        _keep_signature_at(m, s, share, o)
        for b in range(nb):
            out[b, k] = o[b]


@njit(cache=True, nogil=True, error_model="numpy")
def add_candidate_fit(
    gain, offset, source, share, weight, resid, resid_default, quality, acc, acc_w, acc_var, acc_q
):
    """Step 3 of ``_fusion.fuse_dates`` for one candidate date, accumulated in place.

    Per pixel with ``weight`` > 0: r = keep_signature(g J_j + o, J_j) (share <= 0: the plain
    map); if every band of r is finite, acc += w r, acc_w += w, acc_var += w * resid (or
    ``resid_default`` where resid is NaN), acc_q += w * quality. (B, N) / (N,) arrays; the
    accumulators are float64.
    """
    nb, n = source.shape
    m = np.empty(nb)
    s = np.empty(nb)
    r = np.empty(nb)
    for k in range(n):
        wk = weight[k]
        if not wk > 0.0:
            continue
        for b in range(nb):
            s[b] = source[b, k]
            m[b] = np.float64(gain[b, k]) * s[b] + np.float64(offset[b, k])
        if share > 0.0:
            _keep_signature_at(m, s, share, r)
        else:
            r[:] = m
        ok = True
        for b in range(nb):
            if not np.isfinite(r[b]):
                ok = False
                break
        if not ok:
            continue
        for b in range(nb):
            acc[b, k] += wk * r[b]
        acc_w[k] += wk
        rv = np.float64(resid[k])
        acc_var[k] += wk * (rv if np.isfinite(rv) else resid_default)
        acc_q[k] += wk * quality[k]


@njit(cache=True, nogil=True, error_model="numpy")
def smoothstep_fit(x, lo, hi, out):
    """``_smoothstep`` over a 1-D array into ``out`` (float64)."""
    for k in range(x.shape[0]):
        out[k] = _smoothstep(np.float64(x[k]), lo, hi)


@njit(cache=True, nogil=True, error_model="numpy")
def _darkening_at(st, sr, any_both, low, high):
    """1 - S(sum_b target / sum_b reference; low, high) over the bands finite in both; 0 if unknown."""
    if not any_both:
        return 0.0
    dark = 1.0 - _smoothstep(st / sr, low, high)
    return dark if np.isfinite(dark) else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def agreement_fit(target, source, gain, offset, scale, low, high, out):
    """Robust pre-weight of the local fit per pixel (semantics: ``_fusion._agreement``).

    r0 = gain_b J_j + offset_b; w = (1 - darkening(J_i, r0)) / (1 + (d / scale)^2), d the RMS
    over the finite bands of J_i - r0; 0 where w is not finite. (B, N) in, ``out`` (N,).
    """
    nb, n = target.shape
    for k in range(n):
        total = 0.0
        cnt = 0
        st = 0.0
        sr = 0.0
        any_both = False
        for b in range(nb):
            t = np.float64(target[b, k])
            r = gain[b] * np.float64(source[b, k]) + offset[b]
            diff = t - r
            if np.isfinite(diff):
                total += diff * diff
                cnt += 1
            if np.isfinite(t) and np.isfinite(r):
                st += t
                sr += r
                any_both = True
        d = np.sqrt(total / cnt) if cnt > 0 else np.nan
        w = 1.0 / (1.0 + (d / scale) ** 2)
        w = w * (1.0 - _darkening_at(st, sr, any_both, low, high))
        out[k] = w if np.isfinite(w) else 0.0
