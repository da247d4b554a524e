"""Transmission kernels of one date: haze cues, the transmission t_ref, its per-band form and floor.

Arrays are (T, B, Y, X) for reflectance, (T, Y, X) for per-pixel layers, (T, B) for airlight,
(T,) for gamma; float32 in and out, NaN = nodata.

Scattering model (DESIGN.md section 2), per band b::

    I_b = J_b t_b + A_b (1 - t_b)
    t_b = t_ref ** ((lambda_ref / lambda_b) ** gamma)         lambda_ref = 490 nm (B02)

(the inversion J_b and its confidence: ``_inversion``; the transmission read against a
harmonised reference from another date: ``_temporal``).

Limitations
-----------
* The haze bound needs a dark object per pixel: from the time series (the clearest date,
  ``temporal_dark_object``) or, for a single date or a pixel seen once, the scene dark object
  plus the dark-channel window, which is the classical DCP and reads large bright surfaces as
  haze unless HOT or the snow test vetoes it.
* The temporal dark object assumes a static surface: a surface that brightened since the
  clearest date (harvest, snow) shows as haze here. Where a good reference exists the fusion
  reads the transmission again against the harmonised reference (``_temporal``), which needs
  no dark object; t is not refined by a guided filter.
* Snow is recognised only through NDSI, i.e. only when B11 or B12 is in the cube.
* Cloud shadow is recognised here only through SCL and by skipping flat darkenings in the
  dark object; the temporal darkening cue lives in the gate (``_inversion``).

Implementation: the numpy fronts first, then their compiled passes (numba, conventions in
``_common``): one pass per pixel and float64 arithmetic where the numpy formulation made a
dozen float64 temporaries of the whole (T, B, Y, X) block. Layouts of the passes:
reflectance (T, B, N) with N the flattened pixels, per-pixel layers (T, N), windowed layers
(T, Y, X). Window operations treat pixels outside the array as absent (they neither add to
a sum nor take part in a minimum or maximum), so a block with a halo of at least the window
radius gives the same interior values as the whole array. They loop over the window
directly (O(r) per pixel and pass): the physics windows are a few pixels wide. SCL codes
enter as float (NaN = no label) and are read through 256-entry lookup tables
(``_common.scl_table``, ``_common._scl_code``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._bands import SCL
from ._common import (
    ABSENT,
    F32,
    _clip01,
    _fmin,
    _scl_code,
    _smoothstep,
    angstrom_exponent,
    band_index,
    box_mean_nan_fit,
    float_array,
    layer_pixels,
    per_value_operands,
    scl_table,
    smoothstep,
    spectral_pixels,
    visible_band_mask,
    window_extreme,
)


def band_transmission(t_ref: np.ndarray, wavelengths: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """t_b = t_ref ** ((lambda_ref / lambda_b) ** gamma) -> (T, B, Y, X) float32.

    With gamma > 0 the exponent falls with wavelength, so t_b rises with wavelength (haze is
    more transparent in the NIR/SWIR); gamma = 0 gives grey cloud, t_b = t_ref for all b.
    """
    expo = np.ascontiguousarray(angstrom_exponent(wavelengths, gamma))  # (T, B)
    t = float_array(t_ref)
    nt, nb = t.shape[0], expo.shape[-1]
    out = np.empty((nt, nb) + t.shape[1:], F32)
    # t_ref is clipped to [0, 1] (NaN stays NaN) before the power
    band_transmission_fit(t.reshape(nt, -1), expo, out.reshape(nt, nb, -1))
    return out


def floor_transmission(
    observed: np.ndarray,
    airlight: np.ndarray,
    t_band: np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """t_b raised where it would invert to a negative surface: t_b >= 1 - I_b / A_b.

    From the model, 1 - t_b = (I_b - J_b t_b) / A_b <= I_b / A_b for any J_b >= 0, so the
    darkest band of a pixel caps its haze (He et al.'s dark-channel argument, per band and
    per pixel). A haze estimate above the cap would make J_b < 0; it is lowered instead of
    letting the inversion fail (dark water and shadowed slopes are the usual cases).
    Works on (T, B, Y, X) or (B, Y, X) with airlight (T, B) or (B,).

    ``out``: a C-contiguous float32 array of the reflectance's shape for the result; it may
    be ``t_band`` itself (floored in place, no second block-sized array). New by default.
    """
    obs, a, t = per_value_operands(observed, airlight, t_band)
    shape = np.shape(observed)
    if out is None:
        out = np.empty(shape, F32)
    elif out.dtype != F32 or out.shape != shape or not out.flags.c_contiguous:
        raise ValueError(
            f"floor_transmission out must be a C-contiguous float32 array of shape {shape}, "
            f"got {out.dtype} {out.shape}"
        )
    # one compiled pass, float64 arithmetic; each value is read before it is written, so
    # out may alias t_band
    floor_transmission_fit(obs, a, t, out.reshape(obs.shape))
    return out


def pixel_haze_bound(
    observed: np.ndarray,
    airlight: np.ndarray,
    dark: np.ndarray,
    wavelengths: np.ndarray,
    gamma: np.ndarray,
    max_nm: float = 700.0,
) -> np.ndarray:
    """Per-pixel upper bound of the haze fraction H = 1 - t_ref (dark-object form of the DCP).

    From the model, (I_b - D_b) / (A_b - D_b) = (1 - t_b) + (J_b - D_b) t_b / (A_b - D_b), so
    when the surface is not darker than the scene dark object D_b, H_b = (I_b - D_b)/(A_b - D_b)
    bounds 1 - t_b from above. Each visible band's bound is carried to the reference wavelength
    with the Angstrom law (t_ref = t_b ** ((lambda_b / lambda_ref) ** gamma)) and the tightest
    (smallest) one is kept. ``dark`` is D_b (B,) or per pixel (B, Y, X), see
    ``temporal_dark_object``; using D (not 0 as in He et al.) stops dark vegetation, water and
    static bright surfaces from being read as a thin veil. Bands longer than ``max_nm`` are
    left out: their haze signal is weak and carried back to 490 nm it amplifies noise.
    Unobserved (NaN) bands are skipped; NaN where no visible band is observed. float64.
    """
    obs = spectral_pixels(observed)
    bound, _ = _haze_bound(obs, airlight, dark, wavelengths, gamma, max_nm, with_floor=False)
    return bound.reshape((obs.shape[0],) + np.shape(observed)[2:])


def _haze_bound(
    obs: np.ndarray,
    airlight: np.ndarray,
    dark: np.ndarray,
    wavelengths: np.ndarray,
    gamma: np.ndarray,
    max_nm: float,
    *,
    with_floor: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``pixel_haze_bound`` of (T, B, N) reflectance, and with ``with_floor`` the visible floor.

    Returns (bound, floor), both (T, N) float64: the floor is min over the visible bands of
    I (+inf where none is observed; ``ABSENT`` without ``with_floor``), read in the same pass.
    """
    nt, nb, npx = obs.shape
    vis = visible_band_mask(wavelengths, max_nm)
    back = np.ascontiguousarray(1.0 / angstrom_exponent(np.asarray(wavelengths)[vis], gamma))
    a = np.ascontiguousarray(np.asarray(airlight, dtype=np.float64))
    if a.shape != (nt, nb):
        raise ValueError(f"airlight of shape {a.shape} does not match reflectance {obs.shape}")
    d = np.asarray(dark, dtype=np.float64)
    if d.ndim == 1:
        d_px = np.broadcast_to(d[:, None], (nb, npx))  # one D_b per band, no copy
    elif d.shape[0] == nb and d[0].size == npx:
        d_px = np.ascontiguousarray(d).reshape(nb, npx)
    else:
        raise ValueError(
            f"dark object of shape {d.shape} fits neither (B,) nor (B, ...) of {obs.shape}"
        )
    bound = np.empty((nt, npx))
    floor = np.empty((nt, npx)) if with_floor else ABSENT
    haze_bound_fit(obs, np.flatnonzero(vis), a, d_px, back, bound, floor)
    return bound, floor


def dark_channel_haze(h_pixel: np.ndarray, radius: int) -> np.ndarray:
    """Windowed haze estimate from the per-pixel bound: min(h, opening_r(h)).

    A grey-scale opening (window minimum, the dark-channel step, then window maximum) removes
    bright structures narrower than the window (roofs, single bright fields: surfaces, not
    cloud) and keeps clouds wider than the window intact up to their edges, so unlike the
    plain minimum filter of He et al. it leaves no halo at cloud boundaries. The per-pixel
    bound stays a hard upper limit.
    """
    if radius <= 0:
        return h_pixel
    h = float_array(h_pixel)
    if h.ndim < 2:
        raise ValueError(f"dark_channel_haze needs (..., Y, X) layers, got shape {h.shape}")
    out = np.empty_like(h)
    windows = (-1,) + h.shape[-2:]
    opening_fit(h.reshape(windows), int(radius), out.reshape(windows))
    return out


def temporal_dark_object(
    observed: np.ndarray,
    wavelengths: np.ndarray,
    scene_dark: np.ndarray,
    *,
    cap: float = 0.3,
    shadow_ratio: float = 0.75,
    shadow_spread: float = 0.25,
) -> np.ndarray:
    """Per-pixel dark object D_b(x) (B, Y, X) from the time series, for the haze bound.

    Haze and cloud only brighten a surface that is darker than the airlight, so the date
    darkest in the shortest band is the clearest view of the pixel and its spectrum bounds
    J from below for every other date: the haze bound becomes tight per pixel, and bright
    static surfaces (sand, roofs) are no longer read as haze. Cloud shadow is darker still:
    when the darkest date is darker than the second by a *spectrally flat* factor
    (all band ratios < ``shadow_ratio`` and within ``shadow_spread`` of each other; haze
    instead changes the visible far more than the NIR) the second date is used. Pixels with
    fewer than two observations use the scene dark object. D is capped at ``cap`` so a pixel
    cloudy on every date still shows its cloud.
    """
    obs = spectral_pixels(observed)
    nt, nb, npx = obs.shape
    scene = np.asarray(scene_dark, np.float64)
    if scene.shape != (nb,):
        raise ValueError(f"scene dark object of shape {scene.shape} does not match {nb} bands")
    shape = np.shape(observed)[1:]
    if nt < 2:
        return np.minimum(
            np.broadcast_to(scene.reshape((nb,) + (1,) * (len(shape) - 1)), shape), cap
        )
    out = np.empty((nb, npx))
    ref = int(np.argmin(wavelengths))  # the shortest band: haze brightens it most
    dark_object_fit(obs, ref, scene, float(cap), float(shadow_ratio), float(shadow_spread), out)
    return out.reshape(shape)


def hot_haze(
    observed: np.ndarray,
    airlight: np.ndarray,
    bands: tuple[str, ...],
    slope: np.ndarray,
    intercept: np.ndarray,
    radius: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Haze fraction from HOT and its per-date reliability, or None without B02/B04.

    HOT = (s * B02 - B04 + k) / sqrt(1 + s^2) is the distance above the clear-sky line
    B04 = s B02 + k (``slope``, ``intercept`` per date): Zhang et al. (2002)
    B1 sin(theta) - B3 cos(theta) with theta = atan(s), shifted so the clear line is at 0.
    Haze raises blue more than red and pushes pixels above the line. HOT is linear in the
    mixture: HOT(I) = t HOT(J) + (1 - t) HOT(A), and HOT(J) = 0 on the clear line, so
    H_hot = clip(HOT(I) / max(HOT(A), 1e-3), 0, 1), then averaged over the (2r+1)^2 window
    (NaN and out-of-array pixels absent). Its weight ramps from 0 to 1 as HOT(A) grows from
    0.02 to 0.06 (a grey cloud whose airlight sits near the clear line makes HOT blind).
    Dates without a clear-sky line (NaN slope) get weight 0.
    """
    blue, red = band_index(bands, "B02"), band_index(bands, "B04")
    if blue is None or red is None:
        return None
    slope = np.asarray(slope, dtype=np.float64)
    ok = np.isfinite(slope)
    if not ok.any():
        return None
    s = np.ascontiguousarray(np.where(ok, slope, 1.0), dtype=np.float64)
    k = np.ascontiguousarray(np.where(ok, intercept, 0.0), dtype=np.float64)
    obs = spectral_pixels(observed)
    hot_a = np.empty(obs.shape[0])
    hot_airlight_fit(np.asarray(airlight, dtype=np.float64), blue, red, s, k, hot_a)
    h_px = np.empty((obs.shape[0], obs.shape[2]))
    hot_haze_fit(obs, blue, red, s, k, hot_a, h_px)  # clip(HOT(I) / max(HOT(A), 1e-3), 0, 1)
    h = h_px.reshape((obs.shape[0],) + np.shape(observed)[2:])
    if radius > 0:
        windows = (-1,) + h.shape[-2:]
        mean = np.empty_like(h)
        box_mean_nan_fit(h.reshape(windows), int(radius), mean.reshape(windows))
        h = mean
    weight = smoothstep(hot_a, 0.02, 0.06) * ok
    return h, weight


def snow_score(
    observed: np.ndarray, bands: tuple[str, ...], *, strict: bool = False
) -> np.ndarray | None:
    """Snow/ice likelihood from NDSI = (G - SWIR) / (G + SWIR), Fmask style; None without SWIR.

    Snow is bright and white in the visible like cloud but dark in B11/B12; cloud stays bright
    there. score = S(NDSI; 0.4, 0.6) * S(NIR; 0.08, 0.12) (NIR test when B08/B8A exist:
    water also has a high NDSI but is dark in the NIR). The NDSI ramp sits above the usual
    0.15-0.4 because haze over vegetation raises green far more than SWIR and reaches NDSI
    ~0.35 at t ~ 0.3; fresh snow has NDSI ~0.7-0.9. ``strict`` adds two tests that thin
    haze over dark surfaces fails: NIR / green > 0.6-0.75 and green > 0.25-0.35.
    """
    snow_bands = _snow_bands(bands)
    if snow_bands is None:
        return None
    # strict: thin haze over water also has a high NDSI and a bright NIR; snow keeps the NIR
    # close to the visible (NIR / green > 0.6-0.75), a hazy dark surface does not.
    obs = spectral_pixels(observed)
    green, swir, nir = snow_bands
    score = np.empty((obs.shape[0], obs.shape[2]))
    snow_fit(obs, green, swir, nir, bool(strict), score)  # NaN scores -> 0
    return score.reshape((obs.shape[0],) + np.shape(observed)[2:])


def _snow_bands(bands: tuple[str, ...]) -> tuple[int, int, int] | None:
    """Indices (green, SWIR, NIR) for the snow test (NIR -1 when absent); None without SWIR."""
    swir = band_index(bands, "B11", "B12")
    green = band_index(bands, "B03", "B02", "B04")
    if swir is None or green is None:
        return None
    nir = band_index(bands, "B08", "B8A")
    return green, swir, -1 if nir is None else nir


#: SCL evidence on the haze fraction: class -> (target H, pull weight). A weak label: it only
#: pulls the physical estimate part of the way (Sen2Cor confuses bright soil/snow with cloud).
SCL_HAZE_EVIDENCE = {
    SCL.CLOUD_HIGH: (1.0, 0.3),
    SCL.CLOUD_MEDIUM: (1.0, 0.2),
    SCL.VEGETATION: (0.0, 0.2),
    SCL.BARE: (0.0, 0.2),
    SCL.WATER: (0.0, 0.2),
    SCL.SNOW: (0.0, 0.5),
}


def transmission(
    observed: np.ndarray,
    airlight: np.ndarray,
    gamma: np.ndarray,
    dark: np.ndarray,
    hot_slope: np.ndarray,
    hot_intercept: np.ndarray,
    bands: tuple[str, ...],
    wavelengths: np.ndarray,
    scl: np.ndarray | None = None,
    *,
    radius: int = 2,
    max_nm: float = 700.0,
    hot_margin: float = 0.1,
    scl_weight: float = 1.0,
) -> np.ndarray:
    """Transmission at 490 nm, t_ref (T, Y, X) float32 in [0, 1], from several cues.

    H = 1 - t_ref is built as:

    1. dark channel: H_dcp = windowed dark-object bound (``pixel_haze_bound`` with ``dark``
       per band (B,) or per pixel (B, Y, X) from ``temporal_dark_object``, then
       ``dark_channel_haze``);
    2. HOT veto: H = (1 - w) H_dcp + w min(H_dcp, H_hot + margin). A bright surface that is
       not blue-shifted the way haze is (sand, soil, red roofs) has a high dark channel but a
       low HOT, so the smaller of the two wins; ``w`` is the HOT reliability of the date.
       Where every visible band exceeds 0.3-0.45 (no surface but snow is that bright) the
       window opening of step 1 and this veto are lifted (edges of opaque cloud; grey
       cloud sits on the clear-sky line);
    3. snow: H *= 1 - snow_score (bright in the visible, dark in the SWIR: not cloud);
    4. SCL as weak evidence: H += w_scl (H_target - H) for the classes in
       ``SCL_HAZE_EVIDENCE``.
    """
    observed = float_array(observed)
    obs = spectral_pixels(observed)
    nt = obs.shape[0]
    layer_shape = (nt,) + observed.shape[2:]
    # No land surface but snow (step 3) is brighter than ~0.3-0.45 in every visible band
    # (the visible floor): there the surface-protecting steps (opening, HOT veto) are lifted,
    # or the edge of an opaque cloud (narrower than the window) and grey cloud (on the
    # clear-sky line) would be read as clear. ``transmission_fit`` applies that ramp.
    h_pix, floor = _haze_bound(obs, airlight, dark, wavelengths, gamma, max_nm, with_floor=True)
    h_window = dark_channel_haze(h_pix.reshape(layer_shape), radius).reshape(nt, -1)
    hot = hot_haze(observed, airlight, bands, hot_slope, hot_intercept, radius)
    h_hot, hot_weight = (ABSENT, np.empty(0)) if hot is None else (hot[0].reshape(nt, -1), hot[1])
    snow_bands = _snow_bands(bands) or (0, -1, -1)  # SWIR -1: no snow test
    use_scl = scl is not None and scl_weight > 0
    t_ref = np.empty(layer_shape, F32)
    transmission_fit(
        h_pix,
        h_window,
        floor,
        h_hot,
        np.asarray(hot_weight, dtype=np.float64),
        float(hot_margin),
        obs,
        np.array(snow_bands, dtype=np.intp),
        layer_pixels(scl if use_scl else None, layer_shape, "scl"),
        scl_table(SCL_HAZE_EVIDENCE, 0, 0.0),
        scl_table(SCL_HAZE_EVIDENCE, 1, 0.0) * scl_weight,
        t_ref.reshape(nt, -1),
    )
    return t_ref


# -- compiled passes ---------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
def _floored(t: float, observed: float, airlight: float) -> float:
    """t_b raised to the cap 1 - max(I_b, 0) / A_b where that is finite (formula:
    ``floor_transmission``); ``airlight`` already floored by the caller. A NaN t stays NaN.

    The one statement of the floor: ``floor_transmission_fit`` and ``_temporal.refine_fit``.
    """
    cap = 1.0 - (0.0 if observed < 0.0 else observed) / airlight
    if np.isfinite(cap) and not cap <= t:
        t = cap if t == t else t
    return t


@njit(cache=True, nogil=True, error_model="numpy")
def floor_transmission_fit(observed, airlight, t_band, out):
    """t_b raised to the cap 1 - max(I_b, 0) / max(A_b, 1e-3) (``_floored``; formula:
    ``floor_transmission``).

    ``observed``, ``t_band`` (N, B, P), ``airlight`` (N, B), ``out`` (N, B, P) float32; float64
    arithmetic per value. Where the cap is not finite (no observation, no airlight) t_b stays.
    """
    n, nb, npx = observed.shape
    for i in range(n):
        for b in range(nb):
            a = np.float64(airlight[i, b])
            if a < 1e-3:  # a NaN airlight stays NaN: no cap
                a = 1e-3
            for k in range(npx):
                out[i, b, k] = _floored(
                    np.float64(t_band[i, b, k]), np.float64(observed[i, b, k]), a
                )


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
def dark_object_fit(observed, ref, scene, cap, shadow_ratio, shadow_spread, out):
    """Per-pixel dark object (semantics: ``temporal_dark_object``), T >= 2.

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
    """Per-pixel haze bound and visible floor (semantics: ``pixel_haze_bound``).

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
def opening_fit(h, radius, out):
    """min(h, opening_r(h)) per date (semantics: ``dark_channel_haze``), radius >= 1.

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
def _hot_at(blue: float, red: float, slope: float, intercept: float) -> float:
    """HOT = (s * B02 - B04 + k) / sqrt(1 + s^2) (science: ``hot_haze``)."""
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
    """Snow score of one pixel (science and thresholds: ``snow_score``); 0 if unknown.

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
    """Steps 1-4 of ``transmission`` per date and pixel, into t_ref ``out`` (T, N).

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
