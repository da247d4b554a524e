"""Compiled (numba) inner loops of the physics block kernels (``_physics``).

Same conventions as ``_numba`` (read its module docstring): each function is the single
implementation of its computation, the numpy-facing wrappers in ``_physics`` keep the
documented science and semantics; ``cache=True``, ``nogil=True``, never ``parallel``,
``error_model="numpy"`` (a division by zero gives inf / NaN as in numpy); float64
arithmetic whatever the input dtype. Each kernel makes one pass per pixel where the numpy
formulation made a dozen float64 temporaries of the whole (T, B, Y, X) block.

Layouts: reflectance (T, B, N) with N the flattened pixels, per-pixel layers (T, N), windowed
layers (T, Y, X). Window operations treat pixels outside the array as absent (they neither
add to a sum nor take part in a minimum or maximum), so a block with a halo of at least the
window radius gives the same interior values as the whole array. They loop over the window
directly (O(r) per pixel and pass): the physics windows are a few pixels wide.

SCL codes enter as float (NaN = no label) and are read through 256-entry lookup tables:
NaN -> class 0, values clipped to [0, 255] and truncated, as ``_physics._scl_table`` says.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._numba import _smoothstep


@njit(cache=True, nogil=True, error_model="numpy")
def _fmin(a: float, b: float) -> float:
    """``np.fmin``: the smaller of a and b, ignoring a NaN (NaN only if both are)."""
    if a != a:
        return b
    if b != b:
        return a
    return a if a <= b else b


@njit(cache=True, nogil=True, error_model="numpy")
def _fmax(a: float, b: float) -> float:
    """``np.fmax``: the larger of a and b, ignoring a NaN (NaN only if both are)."""
    if a != a:
        return b
    if b != b:
        return a
    return a if a >= b else b


@njit(cache=True, nogil=True, error_model="numpy")
def _clip01(x: float) -> float:
    """``np.clip(x, 0, 1)``: NaN stays NaN."""
    if x < 0.0:
        return 0.0
    if x > 1.0:
        return 1.0
    return x


@njit(cache=True, nogil=True, error_model="numpy")
def _scl_code(value: float) -> int:
    """Lookup-table index of an SCL value: NaN -> 0, clipped to [0, 255], truncated."""
    if value != value:
        return 0
    if value < 0.0:
        return 0
    if value > 255.0:
        return 255
    return int(value)


@njit(cache=True, nogil=True, error_model="numpy")
def dark_object_fit(observed, ref, scene, cap, shadow_ratio, shadow_spread, out):
    """Per-pixel dark object (semantics: ``_physics.temporal_dark_object``), T >= 2.

    ``observed`` (T, B, N), ``scene`` (B,) float64, ``out`` (B, N) float64. Per pixel: the
    two dates darkest in band ``ref`` (NaN skipped, ties to the earlier date); the second
    is used when every band ratio first / second is finite, the largest is below
    ``shadow_ratio`` and the ratios spread less than ``shadow_spread`` (a flat darkening:
    shadow). Fewer than two observed dates, or a non-finite chosen value, take
    ``scene``; the result is clipped to [0, ``cap``].
    """
    nt, nb, n = observed.shape
    for k in range(n):
        first = -1
        second = -1
        for i in range(nt):
            v = np.float64(observed[i, ref, k])
            if v != v:
                continue
            if first < 0 or v < observed[first, ref, k]:
                second = first
                first = i
            elif second < 0 or v < observed[second, ref, k]:
                second = i
        shadow = False
        if second >= 0:
            shadow = True
            rmax = -np.inf
            rmin = np.inf
            for b in range(nb):
                ratio = np.float64(observed[first, b, k]) / np.float64(observed[second, b, k])
                if not np.isfinite(ratio):
                    shadow = False
                    break
                rmax = max(rmax, ratio)
                rmin = min(rmin, ratio)
            shadow = shadow and rmax < shadow_ratio and rmax - rmin < shadow_spread
        chosen = second if shadow else first
        for b in range(nb):
            d = scene[b]
            if second >= 0:
                v = np.float64(observed[chosen, b, k])
                if np.isfinite(v):
                    d = v
            if d < 0.0:
                d = 0.0
            elif d > cap:
                d = cap
            out[b, k] = d


@njit(cache=True, nogil=True, error_model="numpy")
def haze_bound_fit(observed, vis, airlight, dark, back, bound, floor):
    """Per-pixel haze bound and visible floor (semantics: ``_physics.pixel_haze_bound``).

    ``observed`` (T, B, N), ``vis`` (V,) indices of the visible bands, ``airlight`` (T, B),
    ``dark`` (B, N) (a broadcast view for one D_b per band is fine), ``back`` (T, V) the
    exponents (lambda_b / lambda_ref) ** gamma. Per date and pixel, over the observed
    visible bands: H = min_b 1 - (1 - clip((I_b - D_b) / max(A_b - D_b, 1e-3), 0, 1)) ** back_b
    into ``bound`` (T, N) (NaN where no visible band is observed; a NaN term wins, as in
    ``np.min``), and min_b I_b into ``floor`` (T, N) (+inf where none is) unless ``floor``
    is empty.

    The power is monotone, so H = 1 - exp(max_b back_b log(1 - h_b)): one log per band and
    one exp per pixel instead of a power per band (the power was most of the cost).
    """
    nt, _, n = observed.shape
    with_floor = floor.size > 0
    for i in range(nt):
        for k in range(n):
            best = -np.inf  # max_b of back_b * log(1 - h_b)
            seen = False
            low = np.inf
            for j in range(vis.shape[0]):
                b = vis[j]
                v = np.float64(observed[i, b, k])
                if v != v:
                    continue
                seen = True
                low = min(low, v)
                d = dark[b, k]
                den = airlight[i, b] - d
                if den < 1e-3:
                    den = 1e-3
                x = 1.0 - _clip01((v - d) / den)
                if x == 1.0:  # at or below the dark object: 1 ** e = 1 for every e
                    term = 0.0
                elif 0.0 < x < 1.0:
                    term = back[i, j] * np.log(x)
                else:  # x = 0 or NaN: the power's own special cases
                    term = np.log(x ** back[i, j])
                if term != term:
                    best = np.nan  # sticky: no comparison with NaN is true
                elif term > best:
                    best = term
            bound[i, k] = 1.0 - np.exp(best) if seen else np.nan
            if with_floor:
                floor[i, k] = low


@njit(cache=True, nogil=True, error_model="numpy")
def _row_extreme(src, y, radius, sign, row_out):
    """Row ``y`` of ``src`` (Y, X): sign * max over the in-array [x - r, x + r] of sign * v.

    sign = -1 gives the minimum, +1 the maximum. NaN values are skipped; a window with no
    value gives -sign * inf.
    """
    nx = src.shape[1]
    for x in range(nx):
        best = -np.inf
        for xx in range(max(0, x - radius), min(nx, x + radius + 1)):
            v = sign * src[y, xx]
            if v > best:
                best = v
        row_out[x] = sign * best


@njit(cache=True, nogil=True, error_model="numpy")
def window_extreme(src, radius, sign, rows, out):
    """(2r+1)^2 window minimum (sign -1) or maximum (+1) of ``src`` (Y, X) into ``out``.

    Separable: along rows into ``rows`` (Y, X scratch), then down the columns. NaN and
    out-of-array pixels are absent; a window with no value gives NaN, and so does an
    infinite result (``_common.min_filter_nan`` / ``max_filter_nan`` are this kernel).
    """
    ny, nx = src.shape
    for y in range(ny):
        _row_extreme(src, y, radius, sign, rows[y])
    for y in range(ny):
        for x in range(nx):
            best = -np.inf
            for yy in range(max(0, y - radius), min(ny, y + radius + 1)):
                v = sign * rows[yy, x]
                if v > best:
                    best = v
            out[y, x] = sign * best if np.isfinite(best) else np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def opening_fit(h, radius, out):
    """min(h, opening_r(h)) per date (semantics: ``_physics.dark_channel_haze``), radius >= 1.

    ``h`` and ``out`` (T, Y, X): window minimum, then window maximum of that, then the
    NaN-ignoring minimum with h itself.
    """
    nt, ny, nx = h.shape
    rows = np.empty((ny, nx))
    low = np.empty((ny, nx))
    high = np.empty((ny, nx))
    for i in range(nt):
        src = h[i]
        window_extreme(src, radius, -1.0, rows, low)
        window_extreme(low, radius, 1.0, rows, high)
        for y in range(ny):
            for x in range(nx):
                out[i, y, x] = _fmin(np.float64(src[y, x]), high[y, x])


@njit(cache=True, nogil=True, error_model="numpy")
def box_mean_nan_fit(a, radius, out):
    """Mean over the (2r+1)^2 window of ``a`` (T, Y, X), ignoring non-finite and out-of-array
    pixels, into ``out`` (T, Y, X) float64; NaN where the window holds no finite value.

    The kernel of ``_common.box_mean_nan``; separable row and column sums.
    """
    nt, ny, nx = a.shape
    row_sum = np.empty((ny, nx))
    row_cnt = np.empty((ny, nx))
    for i in range(nt):
        for y in range(ny):
            for x in range(nx):
                s = 0.0
                c = 0.0
                for xx in range(max(0, x - radius), min(nx, x + radius + 1)):
                    v = np.float64(a[i, y, xx])
                    if np.isfinite(v):
                        s += v
                        c += 1.0
                row_sum[y, x] = s
                row_cnt[y, x] = c
        for y in range(ny):
            for x in range(nx):
                s = 0.0
                c = 0.0
                for yy in range(max(0, y - radius), min(ny, y + radius + 1)):
                    s += row_sum[yy, x]
                    c += row_cnt[yy, x]
                out[i, y, x] = s / c if c > 0.0 else np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def _hot_at(blue: float, red: float, slope: float, intercept: float) -> float:
    """HOT = (s * B02 - B04 + k) / sqrt(1 + s^2) (science: ``_physics.hot_haze``)."""
    return (slope * blue - red + intercept) / np.sqrt(1.0 + slope * slope)


@njit(cache=True, nogil=True, error_model="numpy")
def hot_airlight_fit(airlight, blue, red, slope, intercept, out):
    """HOT of each date's airlight spectrum: ``airlight`` (T, B) -> ``out`` (T,)."""
    for i in range(airlight.shape[0]):
        out[i] = _hot_at(airlight[i, blue], airlight[i, red], slope[i], intercept[i])


@njit(cache=True, nogil=True, error_model="numpy")
def hot_haze_fit(observed, blue, red, slope, intercept, hot_airlight, out):
    """Per-pixel HOT haze fraction clip(HOT(I) / max(HOT(A), 1e-3), 0, 1) (NaN stays NaN).

    ``observed`` (T, B, N), per-date ``slope``, ``intercept``, ``hot_airlight`` (T,),
    ``out`` (T, N) float64.
    """
    nt, _, n = observed.shape
    for i in range(nt):
        scale = hot_airlight[i]
        if scale < 1e-3:
            scale = 1e-3
        for k in range(n):
            hot = _hot_at(
                np.float64(observed[i, blue, k]),
                np.float64(observed[i, red, k]),
                slope[i],
                intercept[i],
            )
            out[i, k] = _clip01(hot / scale)


@njit(cache=True, nogil=True, error_model="numpy")
def _snow_at(green: float, swir: float, nir: float, has_nir: bool, strict: bool) -> float:
    """Snow score of one pixel (science and thresholds: ``_physics.snow_score``); 0 if unknown.

    S(NDSI; 0.4, 0.6), NDSI = (G - SWIR) / max(G + SWIR, 1e-6), times S(NIR; 0.08, 0.12)
    with a NIR band, times S(NIR / max(G, 1e-6); 0.6, 0.75) S(G; 0.25, 0.35) when strict.
    """
    den = green + swir
    if den < 1e-6:
        den = 1e-6
    score = _smoothstep((green - swir) / den, 0.4, 0.6)
    if has_nir:
        score *= _smoothstep(nir, 0.08, 0.12)
        if strict:
            g = green if not green < 1e-6 else 1e-6
            score = score * _smoothstep(nir / g, 0.6, 0.75) * _smoothstep(green, 0.25, 0.35)
    return score if np.isfinite(score) else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def snow_fit(observed, green, swir, nir, strict, out):
    """``_snow_at`` per date and pixel: ``observed`` (T, B, N), ``nir`` < 0 when absent,
    ``out`` (T, N) float64."""
    nt, _, n = observed.shape
    has_nir = nir >= 0
    for i in range(nt):
        for k in range(n):
            out[i, k] = _snow_at(
                np.float64(observed[i, green, k]),
                np.float64(observed[i, swir, k]),
                np.float64(observed[i, nir, k]) if has_nir else np.nan,
                has_nir,
                strict,
            )


@njit(cache=True, nogil=True, error_model="numpy")
def transmission_fit(
    h_pixel,
    h_window,
    floor,
    h_hot,
    hot_weight,
    hot_margin,
    observed,
    snow_bands,
    scl,
    scl_target,
    scl_pull,
    out,
):
    """Steps 1-4 of ``_physics.transmission`` per date and pixel, into t_ref ``out`` (T, N).

    ``h_pixel`` the per-pixel haze bound and ``h_window`` its windowed form (T, N) (the same
    array at radius 0), ``floor`` the visible floor (T, N). ``h_hot`` (T, N) and
    ``hot_weight`` (T,) the HOT cue, or empty without it. ``snow_bands`` (green, SWIR, NIR)
    indices into ``observed`` (T, B, N), SWIR < 0 without snow test, NIR < 0 without NIR.
    ``scl`` (T, N) codes or empty; ``scl_target`` / ``scl_pull`` (256,) lookup tables, the
    pull already scaled by the SCL weight. t_ref = clip(1 - H, 0, 1), NaN where H is.
    """
    nt, n = h_pixel.shape
    with_hot = h_hot.size > 0
    with_scl = scl.size > 0
    green, swir, nir = snow_bands[0], snow_bands[1], snow_bands[2]
    for i in range(nt):
        for k in range(n):
            hp = h_pixel[i, k]
            h = h_window[i, k]
            too_bright = _smoothstep(floor[i, k], 0.3, 0.45)
            if np.isfinite(hp):
                h = h + too_bright * (hp - h)
            if with_hot:
                w = hot_weight[i] * (1.0 - too_bright)
                h = (1.0 - w) * h + w * _fmin(h, h_hot[i, k] + hot_margin)
            if swir >= 0:
                snow = _snow_at(
                    np.float64(observed[i, green, k]),
                    np.float64(observed[i, swir, k]),
                    np.float64(observed[i, nir, k]) if nir >= 0 else np.nan,
                    nir >= 0,
                    False,
                )
                h = h * (1.0 - snow)
            if with_scl and np.isfinite(h):
                code = _scl_code(np.float64(scl[i, k]))
                h = h + _clip01(scl_pull[code]) * (scl_target[code] - h)
            out[i, k] = _clip01(1.0 - h)


@njit(cache=True, nogil=True, error_model="numpy")
def band_transmission_fit(t_ref, exponent, out):
    """t_b = clip(t_ref, 0, 1) ** e_b: ``t_ref`` (T, N), ``exponent`` e (T, B), ``out`` (T, B, N).

    For 0 < t < 1 the power is exp(e log t) with log t taken once per pixel for all bands
    (the power was most of the cost; the results agree to a few float64 ulps); t = 1 gives
    1 and t = 0 or NaN go through ``**``, so the power's special cases (1 ** e = 1 for any
    e, 0 ** 0 = 1) hold.
    """
    nt, nb, n = out.shape
    log_t = np.empty(n)
    for i in range(nt):
        for k in range(n):
            log_t[k] = np.log(_clip01(np.float64(t_ref[i, k])))
        for b in range(nb):
            e = exponent[i, b]
            for k in range(n):
                lt = log_t[k]
                if lt == 0.0:  # t = 1 (clear): 1 ** e = 1 for every e
                    out[i, b, k] = 1.0
                elif lt > -np.inf:
                    out[i, b, k] = np.exp(e * lt)
                else:  # t = 0 or NaN
                    out[i, b, k] = _clip01(np.float64(t_ref[i, k])) ** e


@njit(cache=True, nogil=True, error_model="numpy")
def confidence_fit(t_ref, surface, t_low, t_high, scl, scl_factor, scl_weight, out):
    """Inversion confidence per date and pixel (semantics: ``_physics.inversion_confidence``).

    ``t_ref`` (T, N), ``surface`` (T, B, N), ``scl`` (T, N) codes or empty, ``scl_factor``
    (256,) lookup table, ``out`` (T, N). min_b / max_b J skip NaN; no finite J -> 0.
    """
    nt, nb, n = surface.shape
    with_scl = scl.size > 0
    for i in range(nt):
        for k in range(n):
            jmin = np.nan
            jmax = np.nan
            for b in range(nb):
                v = np.float64(surface[i, b, k])
                jmin = _fmin(jmin, v)
                jmax = _fmax(jmax, v)
            c = _smoothstep(np.float64(t_ref[i, k]), t_low, t_high)
            c = c * _smoothstep(jmin, -0.05, 0.0) * (1.0 - _smoothstep(jmax, 1.0, 1.3))
            if with_scl:
                c = c * (1.0 - scl_weight * (1.0 - scl_factor[_scl_code(np.float64(scl[i, k]))]))
            out[i, k] = _clip01(c) if np.isfinite(c) and np.isfinite(jmin) else 0.0
