"""Compiled (numba) passes of the temporal haze cue and the per-date refinement it drives.

Semantics: ``_temporal.temporal_band_transmission`` and ``_fusion._temporal_refinement``
(their docstrings hold the science). Two passes per target date, both over pixels with the
bands innermost, so no (B, Y, X) temporary other than the haze readings is ever made:

1. ``haze_readings_fit``: the per-band haze reading H_b = (I_b - R_b) / (A_b - R_b) of each
   pixel, NaN where the band is unusable, 0 where the pixel's surface changed;
2. ``bounded_transmission_fit`` / ``refine_fit``: the NaN-aware window mean of H (radius r,
   out-of-array pixels absent: chunking-invariant), the clips and dead zone, the Angstrom
   bounds, and (``refine_fit``) the blend with the prior's transmission, the inversion floor,
   the inversion itself and the shortest band's transmission.

Conventions as in ``_numba`` (``cache=True``, ``nogil=True``, not parallel, float64
arithmetic whatever the input dtype, ``error_model="numpy"``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._numba import _smoothstep


@njit(cache=True, nogil=True, error_model="numpy")
def haze_readings_fit(
    observed,
    reference,
    airlight,
    s,
    min_leverage,
    noise,
    darkening,
    rise_tolerance,
    max_change_haze,
    out,
):
    """Pass 1: H_b per value into ``out`` (B, N) float64; NaN = unusable band, 0 = changed surface.

    ``observed``, ``reference`` (B, N); ``airlight`` (B,); ``s`` the shortest band's index.
    A band is usable where I_b, R_b are finite and A_b - R_b >= ``min_leverage``. A pixel is a
    changed surface (its usable bands read 0) where its shortest band reads
    H_s < ``max_change_haze`` and either it is brighter than the reference in some usable
    band (H > 2 ``noise``) while darker by more than ``darkening`` in any observed band
    (leverage floored at ``min_leverage`` there), or max_b (H_b - H_s) exceeds
    ``rise_tolerance`` + 0.25 |H_s| (H_s counted as 0 where unusable).
    """
    nb, n = observed.shape
    for k in range(n):
        h_hi = -np.inf
        h_lo = np.inf
        for b in range(nb):
            o = np.float64(observed[b, k])
            r = np.float64(reference[b, k])
            lev = airlight[b] - r
            h = np.nan
            if np.isfinite(o) and np.isfinite(r) and lev >= min_leverage:
                h = (o - r) / lev
                if h > h_hi:
                    h_hi = h
            out[b, k] = h
            lev_any = lev if lev > min_leverage else min_leverage
            h_any = (o - r) / lev_any
            if np.isfinite(h_any) and h_any < h_lo:
                h_lo = h_any
        h_s = out[s, k]
        if not np.isfinite(h_s):
            h_s = 0.0
        if h_s >= max_change_haze:
            continue
        excess = -np.inf
        for b in range(nb):
            h = out[b, k]
            if np.isfinite(h) and h - h_s > excess:
                excess = h - h_s
        mixed = h_hi > 2.0 * noise and h_lo < -darkening
        rising = excess > rise_tolerance + 0.25 * abs(h_s)
        if mixed or rising:
            for b in range(nb):
                if np.isfinite(out[b, k]):
                    out[b, k] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _bounded_at(h, y, x, radius, noise, s, order, exponents, tb):
    """Pass 2 at pixel (y, x) of ``h`` (B, Y, X): the bounded t_b into ``tb`` (B,); False if unusable.

    H is window-averaged over the finite readings, clipped to [H - 3 noise, H + noise] and
    [0, 1], shrunk by S(H; noise, 2 noise); t = 1 - H, clipped to [t_s, t_s ** exponents_b],
    then made non-decreasing along ``order`` (bands by wavelength; NaN bands are skipped
    by the running maximum, as ``np.fmax.accumulate``). NaN where the band is unusable.
    """
    nb, ny, nx = h.shape
    y0 = max(y - radius, 0)
    y1 = min(y + radius + 1, ny)
    x0 = max(x - radius, 0)
    x1 = min(x + radius + 1, nx)
    for b in range(nb):
        own = h[b, y, x]
        if not np.isfinite(own):
            tb[b] = np.nan
            continue
        v = own
        if radius > 0:
            total = 0.0
            count = 0
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    hv = h[b, yy, xx]
                    if np.isfinite(hv):
                        total += hv
                        count += 1
            v = total / count  # count >= 1: the pixel's own reading is finite
            lo = own - 3.0 * noise
            hi = own + noise
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
        if v < 0.0:
            v = 0.0
        elif v > 1.0:
            v = 1.0
        v = v * _smoothstep(v, noise, 2.0 * noise)
        tb[b] = 1.0 - v
    t_s = tb[s]
    if not np.isfinite(t_s):
        return False
    base = t_s if t_s < 1.0 else 1.0
    if base < 0.0:
        base = 0.0
    for b in range(nb):
        t = tb[b]
        if t != t:
            continue
        if t <= t_s:
            t = t_s  # <= t_s ** e_b for every e_b <= 1: the upper bound cannot bind
        elif t > base:  # only then can t_s ** e_b (>= t_s, <= 1) bind: skip the power otherwise
            upper = base ** exponents[b]
            if t > upper:
                t = upper
        tb[b] = t
    running = np.nan
    for i in range(nb):
        b = order[i]
        t = tb[b]
        if t == t and not (running >= t):
            running = t
        if t == t:
            tb[b] = running
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def bounded_transmission_fit(h, radius, noise, s, order, exponents, out):
    """Pass 2 alone (``temporal_band_transmission``): t_b (B, Y, X) into ``out``, NaN = unusable."""
    nb, ny, nx = h.shape
    tb = np.empty(nb)
    for y in range(ny):
        for x in range(nx):
            if _bounded_at(h, y, x, radius, noise, s, order, exponents, tb):
                for b in range(nb):
                    out[b, y, x] = tb[b]
            else:
                for b in range(nb):
                    out[b, y, x] = np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def refine_fit(
    h,
    radius,
    noise,
    s,
    order,
    exponents,
    observed,
    airlight,
    prior_tb,
    weight,
    t_min,
    surface,
    t_ref,
):
    """Pass 2 and the refinement (``_fusion._temporal_refinement``), in place on ``surface``, ``t_ref``.

    ``h`` (B, Y, X) from pass 1; ``observed``, ``prior_tb`` (B, Y, X); ``airlight`` (B,);
    ``weight`` (Y, X) the trust w in the temporal reading (temporal weight x reference
    quality x not snow); ``surface`` (B, Y, X) and ``t_ref`` (Y, X) float64, updated.
    Per usable band t_b = w t_b,temporal + (1 - w) t_b,prior (the prior's t_b elsewhere),
    floored at 1 - max(I_b, 0) / max(A_b, 1e-3); where w > 0 the surface becomes the
    inversion with it (where finite), and t_ref moves to w t_s + (1 - w) t_ref where the
    shortest band is usable.
    """
    nb, ny, nx = h.shape
    tb = np.empty(nb)
    for y in range(ny):
        for x in range(nx):
            w = np.float64(weight[y, x])
            usable = _bounded_at(h, y, x, radius, noise, s, order, exponents, tb)
            t_new = np.nan
            for b in range(nb):
                prior = np.float64(prior_tb[b, y, x])
                t = prior
                if usable and tb[b] == tb[b]:
                    t = w * tb[b] + (1.0 - w) * prior
                o = np.float64(observed[b, y, x])
                a = airlight[b]
                cap = 1.0 - (0.0 if o < 0.0 else o) / (a if a > 1e-3 else 1e-3)  # NaN stays
                if np.isfinite(cap) and not cap <= t:
                    t = cap if t == t else t
                if b == s:
                    t_new = t
                if w > 0.0:
                    den = t if t >= t_min or t != t else t_min
                    j = (o - a * (1.0 - t)) / den
                    if np.isfinite(j):
                        surface[b, y, x] = j
            if np.isfinite(t_new):
                w_ref = w if usable else 0.0
                t_ref[y, x] = w_ref * t_new + (1.0 - w_ref) * t_ref[y, x]
