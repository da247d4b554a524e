"""Physics block kernels: band transmission, haze cues, transmission, inversion, confidence.

Arrays are (T, B, Y, X) for reflectance, (T, Y, X) for per-pixel layers, (T, B) for airlight,
(T,) for gamma; float32 in and out, NaN = nodata.

Scattering model (DESIGN.md section 2), per band b::

    I_b = J_b t_b + A_b (1 - t_b)
    J_b = (I_b - A_b (1 - t_b)) / max(t_b, t_min)
    t_b = t_ref ** ((lambda_ref / lambda_b) ** gamma)         lambda_ref = 490 nm (B02)

Limitations
-----------
* The haze bound needs a dark object per pixel: from the time series (the clearest date,
  ``temporal_dark_object``) or, for a single date or a pixel seen once, the scene dark object
  plus the dark-channel window, which is the classical DCP and reads large bright surfaces as
  haze unless HOT or the snow test vetoes it.
* The temporal dark object assumes a static surface: a surface that brightened since the
  clearest date (harvest, snow) shows as haze. A robust fit t = (A - I) / (A - R) against the
  harmonised reference, and a guided-filter refinement of t, are the next steps.
* Snow is recognised only through NDSI, i.e. only when B11 or B12 is in the cube.
* Cloud shadow is recognised here only through SCL and by skipping flat darkenings in the
  dark object; the temporal darkening cue lives in the fusion kernel.
"""

from __future__ import annotations

import numpy as np

from .._bands import SCL
from ._common import (
    F32,
    angstrom_exponent,
    band_index,
    box_mean_nan,
    max_filter_nan,
    min_filter_nan,
    smoothstep,
    visible_band_mask,
)
from ._numba import floor_transmission_fit, invert_fit


def band_transmission(t_ref: np.ndarray, wavelengths: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """t_b = t_ref ** ((lambda_ref / lambda_b) ** gamma) -> (T, B, Y, X) float32.

    With gamma > 0 the exponent falls with wavelength, so t_b rises with wavelength (haze is
    more transparent in the NIR/SWIR); gamma = 0 gives grey cloud, t_b = t_ref for all b.
    """
    expo = angstrom_exponent(wavelengths, gamma)  # (T, B)
    t = np.clip(np.asarray(t_ref, dtype=np.float64), 0.0, 1.0)[:, None]
    with np.errstate(invalid="ignore"):
        return (t ** expo[:, :, None, None]).astype(F32)


def forward_model(surface: np.ndarray, airlight: np.ndarray, t_band: np.ndarray) -> np.ndarray:
    """I_b = J_b t_b + A_b (1 - t_b): the scattering model, for tests and simulation."""
    a = np.asarray(airlight, dtype=np.float64)[:, :, None, None]
    t = np.asarray(t_band, dtype=np.float64)
    return (surface * t + a * (1.0 - t)).astype(F32)


def invert(
    observed: np.ndarray, airlight: np.ndarray, t_band: np.ndarray, t_min: float = 0.1
) -> np.ndarray:
    """J_b = (I_b - A_b (1 - t_b)) / max(t_b, t_min): exact inverse of the model for t_b >= t_min.

    t_min bounds the noise amplification 1/t; pixels below it are not trusted anyway (the
    confidence goes to 0 well before t_min), the gate then hands them to the reference.
    """
    obs, a, t = _per_value_operands(observed, airlight, t_band)
    out = np.empty(obs.shape, F32)
    invert_fit(obs, a, t, float(t_min), out)  # one compiled pass, float64 arithmetic
    return out.reshape(np.shape(observed))


def floor_transmission(observed: np.ndarray, airlight: np.ndarray, t_band: np.ndarray) -> np.ndarray:
    """t_b raised where it would invert to a negative surface: t_b >= 1 - I_b / A_b.

    From the model, 1 - t_b = (I_b - J_b t_b) / A_b <= I_b / A_b for any J_b >= 0, so the
    darkest band of a pixel caps its haze (He et al.'s dark-channel argument, per band and
    per pixel). A haze estimate above the cap would make J_b < 0; it is lowered instead of
    letting the inversion fail (dark water and shadowed slopes are the usual cases).
    Works on (T, B, Y, X) or (B, Y, X) with airlight (T, B) or (B,).
    """
    obs, a, t = _per_value_operands(observed, airlight, t_band)
    out = np.empty(obs.shape, F32)
    floor_transmission_fit(obs, a, t, out)  # one compiled pass, float64 arithmetic
    return out.reshape(np.shape(observed))


def _per_value_operands(
    observed: np.ndarray, airlight: np.ndarray, t_band: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, B, P) views of I and t_b and the (N, B) airlight for the per-value compiled kernels.

    ``observed`` is (T, B, Y, X) or (B, Y, X), ``airlight`` (T, B) or (B,), ``t_band``
    broadcastable to ``observed``. Copies only what is not already a contiguous float array.
    """
    obs = np.asarray(observed)
    if obs.dtype not in (np.float32, np.float64):
        obs = obs.astype(np.float64)
    a = np.asarray(airlight, dtype=np.float64)
    lead = obs.shape[: a.ndim]
    if a.shape != lead:
        raise ValueError(
            f"airlight of shape {a.shape} does not lead reflectance of shape {obs.shape}"
        )
    t = np.asarray(t_band)
    if t.dtype not in (np.float32, np.float64):
        t = t.astype(np.float64)
    t = np.broadcast_to(t, obs.shape)
    n, nb = (1, a.shape[0]) if a.ndim == 1 else a.shape
    shape = (n, nb, -1)
    return (
        np.ascontiguousarray(obs).reshape(shape),
        a.reshape(n, nb),
        np.ascontiguousarray(t).reshape(shape),
    )


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
    static bright surfaces from being read as a thin veil. Bands longer than ``max_nm`` are left out: their haze
    signal is weak and carried back to 490 nm it amplifies noise.
    """
    vis = visible_band_mask(wavelengths, max_nm)
    obs = np.asarray(observed, dtype=np.float64)[:, vis]
    a = np.asarray(airlight, dtype=np.float64)[:, vis][:, :, None, None]
    d = np.asarray(dark, dtype=np.float64)
    d = d[vis][None, :, None, None] if d.ndim == 1 else d[vis][None]
    h_b = np.clip((obs - d) / np.maximum(a - d, 1e-3), 0.0, 1.0)
    back = 1.0 / angstrom_exponent(wavelengths[vis], gamma)  # (lambda_b/lambda_ref)**gamma
    with np.errstate(invalid="ignore"):
        h_ref = 1.0 - (1.0 - h_b) ** back[:, :, None, None]
    h_ref = np.where(np.isnan(obs), np.inf, h_ref).min(axis=1)
    h_ref[np.isinf(h_ref)] = np.nan
    return h_ref


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
    opened = max_filter_nan(min_filter_nan(h_pixel, radius), radius)
    return np.fmin(h_pixel, opened)


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
    obs = np.asarray(observed, dtype=np.float64)
    nt = obs.shape[0]
    scene = np.broadcast_to(np.asarray(scene_dark, np.float64)[:, None, None], obs.shape[1:])
    if nt < 2:
        return np.minimum(scene, cap)
    ref = int(np.argmin(wavelengths))
    key = np.where(np.isfinite(obs[:, ref]), obs[:, ref], np.inf)
    order = np.argsort(key, axis=0, kind="stable")[:2]  # (2, Y, X)
    first = np.take_along_axis(obs, order[0][None, None].repeat(obs.shape[1], 1), 0)[0]
    second = np.take_along_axis(obs, order[1][None, None].repeat(obs.shape[1], 1), 0)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = first / second
    rmax = np.where(np.isfinite(ratio), ratio, np.inf).max(axis=0)
    rmin = np.where(np.isfinite(ratio), ratio, -np.inf).min(axis=0)
    shadow = (rmax < shadow_ratio) & (rmax - rmin < shadow_spread)
    dark = np.where(shadow[None], second, first)
    enough = np.isfinite(key).sum(axis=0) >= 2
    dark = np.where(enough[None] & np.isfinite(dark), dark, scene)
    return np.clip(dark, 0.0, cap)


def hot_value(observed: np.ndarray, blue: int, red: int, slope, intercept) -> np.ndarray:
    """HOT = (s * B02 - B04 + k) / sqrt(1 + s^2): distance above the clear-sky line B04 = s B02 + k.

    This is Zhang et al. (2002) B1 sin(theta) - B3 cos(theta) with theta = atan(s), shifted so
    the clear line is at 0. Haze raises blue more than red and pushes pixels above the line.
    """
    s = np.asarray(slope, dtype=np.float64)
    k = np.asarray(intercept, dtype=np.float64)
    shape = (-1,) + (1,) * (observed.ndim - 2)
    s, k = s.reshape(shape), k.reshape(shape)
    return (s * observed[:, blue] - observed[:, red] + k) / np.sqrt(1.0 + s * s)


def hot_haze(
    observed: np.ndarray,
    airlight: np.ndarray,
    bands: tuple[str, ...],
    slope: np.ndarray,
    intercept: np.ndarray,
    radius: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Haze fraction from HOT and its per-date reliability, or None without B02/B04.

    HOT is linear in the mixture: HOT(I) = t HOT(J) + (1 - t) HOT(A), and HOT(J) = 0 on the
    clear line, so H_hot = HOT(I) / HOT(A). Its weight ramps from 0 to 1 as HOT(A) grows from
    0.02 to 0.06 (a grey cloud whose airlight sits near the clear line makes HOT blind).
    """
    blue, red = band_index(bands, "B02"), band_index(bands, "B04")
    if blue is None or red is None:
        return None
    slope = np.asarray(slope, dtype=np.float64)
    ok = np.isfinite(slope)
    if not ok.any():
        return None
    s = np.where(ok, slope, 1.0)
    k = np.where(ok, intercept, 0.0)
    hot = hot_value(observed.astype(np.float64), blue, red, s, k)
    hot_a = hot_value(np.asarray(airlight, dtype=np.float64), blue, red, s, k)  # (T,)
    h = np.clip(hot / np.maximum(hot_a, 1e-3)[:, None, None], 0.0, 1.0)
    if radius > 0:
        h = box_mean_nan(h, radius)
    weight = smoothstep(hot_a, 0.02, 0.06) * ok
    return h, weight


def snow_score(observed: np.ndarray, bands: tuple[str, ...], *, strict: bool = False) -> np.ndarray | None:
    """Snow/ice likelihood from NDSI = (G - SWIR) / (G + SWIR), Fmask style; None without SWIR.

    Snow is bright and white in the visible like cloud but dark in B11/B12; cloud stays bright
    there. score = S(NDSI; 0.4, 0.6) * S(NIR; 0.08, 0.12) (NIR test when B08/B8A exist:
    water also has a high NDSI but is dark in the NIR). The NDSI ramp sits above the usual
    0.15-0.4 because haze over vegetation raises green far more than SWIR and reaches NDSI
    ~0.35 at t ~ 0.3; fresh snow has NDSI ~0.7-0.9. ``strict`` adds two tests that thin
    haze over dark surfaces fails: NIR / green > 0.6-0.75 and green > 0.25-0.35.
    """
    swir = band_index(bands, "B11", "B12")
    green = band_index(bands, "B03", "B02", "B04")
    if swir is None or green is None:
        return None
    g = observed[:, green].astype(np.float64)
    s = observed[:, swir].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndsi = (g - s) / np.maximum(g + s, 1e-6)
    score = smoothstep(ndsi, 0.4, 0.6)
    nir = band_index(bands, "B08", "B8A")
    if nir is not None:
        score = score * smoothstep(observed[:, nir].astype(np.float64), 0.08, 0.12)
    if strict and nir is not None:
        # Thin haze over water also has a high NDSI and a bright NIR; snow keeps the NIR close
        # to the visible (NIR / green > 0.6-0.75), a hazy dark surface does not.
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = observed[:, nir].astype(np.float64) / np.maximum(g, 1e-6)
        score = score * smoothstep(ratio, 0.6, 0.75) * smoothstep(g, 0.25, 0.35)
    return np.where(np.isfinite(score), score, 0.0)


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
#: SCL evidence on the confidence: class -> factor (the model does not hold in shadow).
SCL_CONFIDENCE_FACTOR = {
    SCL.CLOUD_SHADOW: 0.6,
    SCL.DARK_SHADOW: 0.85,
    SCL.SATURATED: 0.3,
}


def _scl_lookup(scl: np.ndarray, table: dict, column: int, default: float) -> np.ndarray:
    lut = np.full(256, default, dtype=np.float64)
    for cls, value in table.items():
        lut[int(cls)] = value[column] if isinstance(value, tuple) else value
    codes = np.nan_to_num(np.asarray(scl, dtype=np.float64), nan=0.0)
    return lut[np.clip(codes, 0, 255).astype(np.intp)]


def _visible_floor(observed: np.ndarray, wavelengths: np.ndarray, max_nm: float) -> np.ndarray:
    """min over the visible bands of I (T, Y, X); +inf where none is observed."""
    vis = visible_band_mask(wavelengths, max_nm)
    obs = np.asarray(observed, dtype=np.float64)[:, vis]
    return np.where(np.isnan(obs), np.inf, obs).min(axis=1)


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
    h_pix = pixel_haze_bound(observed, airlight, dark, wavelengths, gamma, max_nm)
    # No land surface but snow (handled below) is brighter than ~0.3-0.45 in every visible
    # band: there the surface-protecting steps (opening, HOT veto) are lifted, or the edge
    # of an opaque cloud (narrower than the window) and grey cloud (on the clear-sky line)
    # would be read as clear.
    too_bright = smoothstep(_visible_floor(observed, wavelengths, max_nm), 0.3, 0.45)
    h = dark_channel_haze(h_pix, radius)
    h = h + too_bright * np.where(np.isfinite(h_pix), h_pix - h, 0.0)
    hot = hot_haze(observed, airlight, bands, hot_slope, hot_intercept, radius)
    if hot is not None:
        h_hot, w = hot
        w = w[:, None, None] * (1.0 - too_bright)
        h = (1.0 - w) * h + w * np.fmin(h, h_hot + hot_margin)
    snow = snow_score(observed, bands)
    if snow is not None:
        h = h * (1.0 - snow)
    if scl is not None and scl_weight > 0:
        target = _scl_lookup(scl, SCL_HAZE_EVIDENCE, 0, 0.0)
        pull = _scl_lookup(scl, SCL_HAZE_EVIDENCE, 1, 0.0) * scl_weight
        h = np.where(np.isfinite(h), h + np.clip(pull, 0, 1) * (target - h), h)
    return np.clip(1.0 - h, 0.0, 1.0).astype(F32)


def inversion_confidence(
    t_ref: np.ndarray,
    surface: np.ndarray,
    scl: np.ndarray | None = None,
    *,
    t_low: float = 0.25,
    t_high: float = 0.6,
    scl_weight: float = 1.0,
) -> np.ndarray:
    """Confidence c (T, Y, X) in [0, 1] that the physical inversion is faithful.

    c = S(t_ref; t_low, t_high)                 noise is amplified by 1/t; opaque cloud -> 0
        * S(min_b J_b; -0.05, 0)                a negative surface means A or t is wrong
        * (1 - S(max_b J_b; 1.0, 1.3))          no land surface is that bright after inversion
        * SCL factor                            cloud shadow / dark / saturated (weak)
    0 where the pixel has no observation.
    """
    c = smoothstep(t_ref, t_low, t_high)
    # fmin/fmax skip NaN; an all-NaN pixel gives NaN, which zeroes c below as inf did
    jmin = np.fmin.reduce(surface, axis=1).astype(np.float64)
    jmax = np.fmax.reduce(surface, axis=1).astype(np.float64)
    c = c * smoothstep(jmin, -0.05, 0.0) * (1.0 - smoothstep(jmax, 1.0, 1.3))
    if scl is not None and scl_weight > 0:
        factor = _scl_lookup(scl, SCL_CONFIDENCE_FACTOR, 0, 1.0)
        c = c * (1.0 - scl_weight * (1.0 - factor))
    c = np.where(np.isfinite(c) & np.isfinite(jmin), c, 0.0)
    return np.clip(c, 0.0, 1.0).astype(F32)
