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
  clearest date (harvest, snow) shows as haze here. Where a good reference exists the fusion
  reads the transmission again against the harmonised reference (``_temporal``), which needs
  no dark object; t is not refined by a guided filter.
* Snow is recognised only through NDSI, i.e. only when B11 or B12 is in the cube.
* Cloud shadow is recognised here only through SCL and by skipping flat darkenings in the
  dark object; the temporal darkening cue lives in the fusion kernel.

Implementation: the per-pixel passes run as compiled kernels (``_numba_physics``, with
``floor_transmission`` and ``invert`` in ``_numba``), one pass per pixel and float64
arithmetic, instead of a dozen float64 temporaries of the whole block; the functions here
check and reshape their inputs and state the science.
"""

from __future__ import annotations

import numpy as np

from .._bands import SCL
from ._common import F32, angstrom_exponent, band_index, float_array, smoothstep, visible_band_mask
from ._numba import floor_transmission_fit, invert_fit
from ._numba_physics import (
    band_transmission_fit,
    box_mean_nan_fit,
    confidence_fit,
    dark_object_fit,
    haze_bound_fit,
    hot_airlight_fit,
    hot_haze_fit,
    opening_fit,
    snow_fit,
    transmission_fit,
)

#: An empty operand: tells a compiled kernel that an optional input (HOT, SCL, floor) is absent.
_ABSENT = np.empty((0, 0))


def _spectral_pixels(observed: np.ndarray) -> np.ndarray:
    """(T, B, N) view of reflectance (T, B, ...) for the compiled kernels (N: pixels, 1 if none)."""
    obs = float_array(observed)
    if obs.ndim < 2:
        raise ValueError(f"reflectance must be (T, B, ...) with pixel axes last, got {obs.shape}")
    return obs.reshape(obs.shape[0], obs.shape[1], -1)


def _layer_pixels(layer: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    """(T, N) float view of a per-pixel layer of ``shape`` (T, ...); ``_ABSENT`` for None."""
    if layer is None:
        return _ABSENT
    a = np.asarray(layer)
    try:
        a = np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {a.shape} does not match the pixel layers {shape}"
        ) from None
    return float_array(a).reshape(shape[0], -1)


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
    obs, a, t = _per_value_operands(observed, airlight, t_band)
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
    static bright surfaces from being read as a thin veil. Bands longer than ``max_nm`` are
    left out: their haze signal is weak and carried back to 490 nm it amplifies noise.
    Unobserved (NaN) bands are skipped; NaN where no visible band is observed. float64.
    """
    obs = _spectral_pixels(observed)
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
    I (+inf where none is observed; ``_ABSENT`` without ``with_floor``), read in the same pass.
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
    floor = np.empty((nt, npx)) if with_floor else _ABSENT
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
    obs = _spectral_pixels(observed)
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
    obs = _spectral_pixels(observed)
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
    obs = _spectral_pixels(observed)
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
#: SCL evidence on the confidence: class -> factor (the model does not hold in shadow).
SCL_CONFIDENCE_FACTOR = {
    SCL.CLOUD_SHADOW: 0.6,
    SCL.DARK_SHADOW: 0.85,
    SCL.SATURATED: 0.3,
}


def _scl_table(table: dict, column: int, default: float) -> np.ndarray:
    """256-entry lookup table of an SCL evidence table (``column`` of tuple values).

    The compiled kernels index it with the SCL value read as: NaN -> 0 (no data), clipped
    to [0, 255], truncated; classes missing from ``table`` get ``default``.
    """
    lut = np.full(256, default, dtype=np.float64)
    for cls, value in table.items():
        lut[int(cls)] = value[column] if isinstance(value, tuple) else value
    return lut


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
    obs = _spectral_pixels(observed)
    nt = obs.shape[0]
    layer_shape = (nt,) + observed.shape[2:]
    # No land surface but snow (step 3) is brighter than ~0.3-0.45 in every visible band
    # (the visible floor): there the surface-protecting steps (opening, HOT veto) are lifted,
    # or the edge of an opaque cloud (narrower than the window) and grey cloud (on the
    # clear-sky line) would be read as clear. ``transmission_fit`` applies that ramp.
    h_pix, floor = _haze_bound(obs, airlight, dark, wavelengths, gamma, max_nm, with_floor=True)
    h_window = dark_channel_haze(h_pix.reshape(layer_shape), radius).reshape(nt, -1)
    hot = hot_haze(observed, airlight, bands, hot_slope, hot_intercept, radius)
    h_hot, hot_weight = (_ABSENT, np.empty(0)) if hot is None else (hot[0].reshape(nt, -1), hot[1])
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
        _layer_pixels(scl if use_scl else None, layer_shape, "scl"),
        _scl_table(SCL_HAZE_EVIDENCE, 0, 0.0),
        _scl_table(SCL_HAZE_EVIDENCE, 1, 0.0) * scl_weight,
        t_ref.reshape(nt, -1),
    )
    return t_ref


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
    surf = _spectral_pixels(surface)
    layer_shape = (surf.shape[0],) + np.shape(surface)[2:]
    use_scl = scl is not None and scl_weight > 0
    out = np.empty(layer_shape, F32)
    confidence_fit(
        _layer_pixels(t_ref, layer_shape, "t_ref"),
        surf,
        float(t_low),
        float(t_high),
        _layer_pixels(scl if use_scl else None, layer_shape, "scl"),
        _scl_table(SCL_CONFIDENCE_FACTOR, 0, 1.0),
        float(scl_weight),
        out.reshape(surf.shape[0], -1),
    )
    return out
