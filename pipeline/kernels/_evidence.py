"""Cloud, haze and shadow evidence from the time series itself (pure numpy block kernels).

What one date cannot show, the stack can. Haze spread evenly over a scene is, per band, an
affine map of the surface: a single-date dark-object test reads a uniformly hazy scene as a
brighter but clear one, and a per-band gain/offset harmonisation with another date absorbs it
entirely (DESIGN.md section 2). A per-pixel *clear-sky baseline* over many dates does see it,
as in the multi-temporal masks MAJA and Tmask: a surface is rarely brighter in the blue than
its own lower envelope, so a date's blue excess over that envelope is haze or cloud.

Per date t and pixel:

* blue excess   dB = B02_t - Q(B02), Q the per-pixel low quantile over the valid dates
  that are not shadowed (``dark_outliers``: darker, uniformly, than the median of the
  pixel's snow-free dates, where it has at least 6), lifted by leaving them out at most to
  that median. A low quantile is robust to cloud, which only brightens, but not to cloud
  shadow: where shadows fall on more than a quarter of a pixel's dates they would set the
  baseline and every clear date would read as haze;
* HOT excess    dH = HOT_t - Q(HOT), HOT = (s B02 - B04) / sqrt(1 + s^2) with s = 1.5: the
  direction of the *change* matters, not the scene's clear line: a surface change (soil
  after harvest, vegetation green-up) moves red at least 1.5x as much as blue, haze moves
  blue more than red and a grey cloud moves both alike, so only cloud and haze raise HOT
  (with the scene's fitted slope, often near 1, a grey cloud would not move HOT at all);
* haze index    e = min(dB, 2 dH), damped by its 3 x 3 mean (never raised by it: no cloud
  bleeds into the clear pixels around it): both must rise, so a brighter soil (blue up, HOT
  down) and a greener field (blue down) are not haze; haze and cloud raise both;
* p_cloud = logistic((e / (1 + 1 / (n - 1)) - haze_mid) / haze_scale) x (1 - snow score)
  for a pixel with n valid dates (a lower envelope of few dates is a noisier view of the
  clear sky: the excess needed grows, x2 with two dates) (fresh snow is white
  like cloud but dark in SWIR; without SWIR bands snow cannot be told from cloud here),
  at least 0.3 / (n - 1) for a pixel with n valid dates (a baseline of few dates may itself
  be cloudy) and no opinion (NaN) with a single date;
* shadow: the band ratios to the per-pixel median of the dates that read clear, r_b = I_b /
  M_b. Cloud shadow darkens every band by a similar factor (mean log ratio well below 0 and a
  small spread across bands); snow melt and harvest change the spectrum's shape (a large
  spread), so they do not read as shadow: p_shadow = S(-mean log r) (1 - S(spread)) (1 - p_cloud);
  no opinion (NaN) where no other date reads clear (the date would be its own yardstick).

Scene level (``scene_haze_excess``): a date's dark-object level in the blue (a low percentile
over the scene sample) against the lowest such level of the series. A date hazy or clouded
over the whole scene has no dark pixel left: its excess is the haze's path radiance.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ._common import band_index, box_mean_nan, float_array, insert_sorted, smoothstep
from ._transmission import snow_score

#: Slope s of the HOT used for changes between dates (see the module docstring).
CHANGE_SLOPE = 1.5
#: A date's pixel counts as snow-free for the envelope of ``snow_change`` below this
#: ``snow_score`` (the middle of its ramp).
SNOW_FREE_BELOW = 0.5
#: Ramp of -dS / dB (the SWIR's fall over the blue's rise against the envelope) over which a
#: brightening reads as melting or patchy snow (``snow_change``). It starts where no cloud or
#: haze reaches: they take off at most ~0.1 of the blue rise in the SWIR, over a bright-SWIR
#: ground. From (0.15, 0.3): melting snow whose SWIR envelope a shadowed or cloud-lit date
#: pulls down reads a fall of 0.2-0.25, half-way up the old ramp (the demo's clear pixels
#: 32.72 -> 32.78 dB; in memory, clear 50.8 -> 52.7 dB, thin, thick and shadow +0.01-0.05).
ICE_RAMP = (0.1, 0.2)
#: Least p_cloud of a pixel with n valid dates is FEW_DATES_FLOOR / (n - 1): the chance that
#: the lower envelope itself is contaminated shrinks as the dates add up.
FEW_DATES_FLOOR = 0.3


def lower_envelope(values: np.ndarray, quantile: float) -> np.ndarray:
    """Per-pixel low quantile over axis 0 of (T, ...) values, ignoring NaN (lower method).

    The k-th smallest valid value with k = floor(quantile (n - 1)), n the pixel's valid dates;
    NaN where a pixel has none. A compiled selection per pixel, not ``np.nanquantile``
    (which falls back to a Python loop per pixel when NaNs are present).
    """
    v = float_array(values)
    if v.ndim < 1:
        raise ValueError(f"lower_envelope needs (T, ...) values, got a {v.ndim}-d array")
    out = np.empty(v.shape[1:])
    # one compiled selection per pixel (``lower_envelope_fit``): a full sort of the stack
    # along time, then ``take_along_axis``, held three float64 copies of it
    lower_envelope_fit(v.reshape(v.shape[0], -1), float(quantile), out.reshape(-1))
    return out


def hot_index(data: np.ndarray, blue: int, red: int, slope: float = CHANGE_SLOPE) -> np.ndarray:
    """HOT = (s B02 - B04) / sqrt(1 + s^2), (T, Y, X)."""
    s = float(slope)
    d = np.asarray(data)
    return (s * d[:, blue].astype(np.float64) - d[:, red]) / np.sqrt(1.0 + s * s)


def _observed(data: np.ndarray) -> np.ndarray:
    """(T, Y, X) bool: every band finite. Band by band: no (T, B, Y, X) temporary."""
    d = np.asarray(data)
    out = np.isfinite(d[:, 0])
    for k in range(1, d.shape[1]):
        out &= np.isfinite(d[:, k])
    return out


def _band(data: np.ndarray, k: int, observed: np.ndarray) -> np.ndarray:
    """Band k of (T, B, Y, X) as float64 (T, Y, X), NaN where the pixel is not observed."""
    return np.where(observed, np.asarray(data)[:, k], np.nan)


def _envelope_over(
    values: np.ndarray,
    baseline: np.ndarray | None,
    quantile: float,
    typical: np.ndarray | None = None,
) -> np.ndarray:
    """The lower envelope of (T, ...) ``values`` over the ``baseline`` observations.

    Leaving observations out can only lift the envelope of all of them, and it lifts it at
    most to the pixel's median over the ``typical`` observations (when given): where the
    left-out dates are the pixel's real ground (after a snowy season, with cloud on most
    other dates) the rest would set a baseline of snow and cloud, and a thick cloud would
    read as clear against it.
    """
    everything = lower_envelope(values, quantile)
    if baseline is None:
        return everything
    # only pixels with an observation left out can change: the rest keep the envelope of
    # all (the same values), so the extra selections run on those pixels alone
    left_out = (~np.asarray(baseline) & np.isfinite(values)).any(axis=0)
    if not left_out.any():
        return everything
    sub = values[:, left_out]
    own = lower_envelope(np.where(baseline[:, left_out], sub, np.nan), quantile)
    own = np.where(np.isfinite(own), own, everything[left_out])
    if typical is not None:
        usual = lower_envelope(np.where(typical[:, left_out], sub, np.nan), 0.5)
        own = np.fmin(own, np.fmax(usual, everything[left_out]))
    out = everything.copy()
    out[left_out] = own
    return out


def haze_excess(
    data: np.ndarray,
    bands: tuple[str, ...],
    quantile: float,
    radius: int,
    baseline: np.ndarray | None = None,
    typical: np.ndarray | None = None,
) -> np.ndarray:
    """e = min(dB, 2 dH), damped by its (2r+1)^2 window mean but never raised by it:
    min(own, box-mean), (T, Y, X) float64, NaN unobserved. ``baseline`` (T, Y, X) bool: the
    observations the envelopes are taken over (all observed ones when None), lifting them
    at most to the median of the ``typical`` ones (``_envelope_over``)."""
    blue = band_index(bands, "B02")
    red = band_index(bands, "B04")
    if blue is None or red is None:
        raise ValueError(
            f"stack evidence needs the blue (B02) and red (B04) bands, the cube has {list(bands)}; "
            "fix: load B02 and B04, or use a prior without the stack source (--prior physics)"
        )
    # the evidence works on single-band (T, Y, X) layers: a float64 copy of the whole
    # (T, B, Y, X) block would be the largest array of the restore task
    observed = _observed(data)
    b = _band(data, blue, observed)
    h = np.where(observed, hot_index(data, blue, red), np.nan)
    e = np.minimum(
        b - _envelope_over(b, baseline, quantile, typical),
        2.0 * (h - _envelope_over(h, baseline, quantile, typical)),
    )
    if radius > 0:
        # The window mean damps a noisy pixel's excess but must not lift a pixel above its
        # own reading: a clear pixel beside a thick cloud would take a third of the cloud's
        # excess from the window and read as cloud (a fifth of the clear pixels of a thick-
        # cloud scene, the ring along every cloud edge). fmin: the pixel's own value where
        # the window reads higher (or where the window has none).
        e = np.where(observed, np.fmin(box_mean_nan(e, radius), e), np.nan)
    return e


def cloud_probability_from_excess(e: np.ndarray, mid: float, scale: float) -> np.ndarray:
    """logistic((e - mid) / scale); NaN stays NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        return 1.0 / (1.0 + np.exp(-(np.asarray(e, np.float64) - mid) / scale))


#: mean log(I_b / M_b) of the visible bands (B02-B04): a shadow for sure below the first,
#: none above the second (x 0.82 and x 0.95 of the clear median)
VISIBLE_DARKER = (-0.2, -0.05)


def shadow_probability(
    data: np.ndarray,
    p_cloud: np.ndarray,
    *,
    darkening: tuple[float, float],
    spread: tuple[float, float],
    bands: tuple[str, ...] | None = None,
    min_reflectance: float = 0.01,
    snow: np.ndarray | None = None,
) -> np.ndarray:
    """Cloud-shadow probability (T, Y, X): a uniform darkening against the clear median.

    M_b = per-pixel median of the dates that read clear (p_cloud < 0.5); log r_b = log(I_b /
    M_b) over bands with M_b and I_b above ``min_reflectance``; p = S(-mean; darkening)
    (1 - S(std; spread)) (1 - S(mean_visible log r_b; ``VISIBLE_DARKER``)) (1 - p_cloud)
    (1 - snow(M) (1 - snow(I))): the visible must darken too. NaN where the pixel is
    unobserved or no other date reads clear there (no opinion); 0 without a median. The median's own snow score (with ``bands``, where SWIR
    exists) vetoes the test where the date is no longer snow: melting snow over water or
    dark rock darkens the visible bands alike, while a shadow on the snow leaves it snow
    (``snow``: the dates' own snow score when the caller has it).
    """
    return _shadow(data, p_cloud, darkening, spread, bands, min_reflectance, snow)[0]


class _Darkening(NamedTuple):
    """Per date and pixel, log(I_b / M_b) against the per-band median M of chosen dates:
    its mean over bands, variance, mean over the visible and over the infrared bands (NaN
    without any), and the count of bands read; M itself (B, ...)."""

    mean: np.ndarray
    var: np.ndarray
    visible: np.ndarray
    infrared: np.ndarray
    bands_read: np.ndarray
    median: np.ndarray


def _darkening(
    data: np.ndarray,
    dates: np.ndarray,
    bands: tuple[str, ...] | None,
    min_reflectance: float,
) -> _Darkening:
    """``_Darkening`` of (T, B, ...) ``data`` against the median of the ``dates`` (T, ...)
    bool (``darkening_fit``)."""
    d = float_array(data)
    nt, nb = d.shape[:2]
    space = d.shape[2:]
    group = np.zeros(nb, np.int8)
    for code, names in ((1, ("B02", "B03", "B04")), (2, ("B08", "B8A", "B11", "B12"))):
        for name in names:
            k = band_index(bands, name) if bands is not None else None
            if k is not None:
                group[k] = code
    flat = d.reshape(nt, nb, -1)
    n = flat.shape[2]
    mean, var, visible, infrared = (np.empty((nt, n)) for _ in range(4))
    count = np.empty((nt, n), np.int32)
    median = np.empty((nb, n))
    chosen = np.ascontiguousarray(np.asarray(dates, dtype=bool).reshape(nt, -1))
    darkening_fit(
        flat,
        chosen,
        group,
        float(min_reflectance),
        mean,
        var,
        visible,
        infrared,
        count,
        median,
    )
    shape = (nt,) + space
    return _Darkening(
        mean.reshape(shape),
        var.reshape(shape),
        visible.reshape(shape),
        infrared.reshape(shape),
        count.reshape(shape),
        median.reshape((nb,) + space),
    )


def _shadow(data, p_cloud, darkening, spread, bands, min_reflectance, snow=None):
    """``shadow_probability`` and the ``_Darkening`` it was read from (``snow``: the dates'
    own ``snow_score`` when the caller has it)."""
    observed = _observed(data)
    clear = observed & (np.nan_to_num(p_cloud, nan=1.0) < 0.5)
    stats = _darkening(data, clear, bands, min_reflectance)
    dark = smoothstep(-stats.mean, *darkening) * (1.0 - smoothstep(np.sqrt(stats.var), *spread))
    # a shadow takes the direct sun off the visible too (diffuse skylight is a larger share
    # there, but the visible still darkens): mowing, ploughing or a harvest drop the NIR and
    # SWIR while the visible stays, which is no shadow
    if bands is not None and any(band_index(bands, b) is not None for b in ("B02", "B03", "B04")):
        vis = stats.visible
        dark = dark * np.where(np.isfinite(vis), 1.0 - smoothstep(vis, *VISIBLE_DARKER), 1.0)
    p = np.where(stats.bands_read >= 2, dark, 0.0) * (1.0 - np.nan_to_num(p_cloud, nan=0.0))
    # A date whose pixel no OTHER date shows clear is its own median: nothing to be darker
    # than, so no opinion (NaN), not "no shadow": a single-date run, or the other dates
    # overcast or snowy there. Read as 0, the test outvoted every source that can see a
    # shadow on one date (the learned csmask: 99.9 % of a real scene's shadow -> 12 %).
    others = clear.sum(axis=0)[None] - clear
    p = np.where(others > 0, p, np.nan)
    if bands is not None:
        snowy = snow_score(stats.median[None], bands)
        if snowy is not None:
            # Against a snowy median a uniform darkening is melt onto dark ground or water,
            # or a shadow on the snow. Only the shadowed snow is still snow: its NDSI stays
            # high and its NIR bright, and a shadow over the snow line is the commonest cloud
            # shadow of an alpine or boreal winter scene, so the veto holds only where the
            # date itself no longer reads snow.
            own = snow_score(data, bands) if snow is None else snow
            p = p * (1.0 - snowy * (1.0 - np.nan_to_num(own, nan=0.0)))
    return np.where(observed, p, np.nan), stats


#: An observation whose uniform-darkening probability against its pixel's median over all
#: dates reaches this is left out of the clear-sky baseline (``dark_outliers``).
DARK_OUTLIER_AT = 0.5
#: ... and only where the pixel has at least this many snow-free dates to take a median of.
DARK_OUTLIER_MIN_DATES = 6


def dark_outliers(
    data: np.ndarray,
    bands: tuple[str, ...],
    *,
    darkening: tuple[float, float],
    spread: tuple[float, float],
    snow: np.ndarray | None = None,
) -> np.ndarray:
    """(T, Y, X) bool: observations darker than their pixel's usual self in the way a cloud
    shadow darkens, to be kept out of the clear-sky baseline.

    The shadow test of ``shadow_probability`` (every band darker by a similar factor, the
    visible too; not over snow) against the median of all the pixel's snow-free dates, not
    of the dates that read clear: this runs before anything reads clear, and the median is
    robust to shadow and to cloud as long as each holds fewer than half of the dates. A
    cloud-dominated median does not turn the clear dates into outliers either: against a
    grey cloud the surface's spectrum has a large spread across bands (a bright, grey
    surface under a cloud on most dates is the exception, and leaves the envelope where it
    was without this step). False where unobserved.
    """
    observed = _observed(data)
    # the median is that of the snow-free dates (as the envelopes of ``snow_change``): after
    # a snowy season the ground is darker than a median of snow and would read as shadow
    if snow is None:
        snow = snow_score(data, bands)
    veto = np.zeros(observed.shape) if snow is None else np.nan_to_num(snow, nan=0.0)
    typical = observed & (veto < 0.5)
    # a median of few snow-free dates is one or two dates' value (a cloud, where clouds are
    # most of them): it cannot tell the ground from a shadow there
    candidates = typical.sum(axis=0) >= DARK_OUTLIER_MIN_DATES
    if not candidates.any():
        return np.zeros(observed.shape, dtype=bool)
    p, stats = _shadow(data, veto, darkening, spread, bands, 0.01, snow)
    # the shape of a cloud shadow: the diffuse skylight that still lights it is blue, so a
    # shadow takes a larger share of the light off the infrared than off the visible. The
    # ground against hazy or cloudy dates is the opposite (haze adds most in the blue), so
    # it is darker in the visible and stays in the baseline.
    with np.errstate(invalid="ignore"):
        shaped = stats.infrared <= stats.visible + SHADOW_IR_TOLERANCE
    shaped |= ~np.isfinite(stats.infrared) | ~np.isfinite(stats.visible)
    return observed & candidates[None] & shaped & (np.nan_to_num(p, nan=0.0) >= DARK_OUTLIER_AT)


#: Largest excess of the infrared's mean log darkening over the visible's that still reads
#: as a shadow (``dark_outliers``).
SHADOW_IR_TOLERANCE = 0.1


def stack_evidence(
    data: np.ndarray,
    bands: tuple[str, ...],
    *,
    scene_excess: np.ndarray | None = None,
    quantile: float = 0.25,
    radius: int = 1,
    haze_mid: float = 0.015,
    haze_scale: float = 0.005,
    scene_mid: float = 0.02,
    scene_scale: float = 0.005,
    darkening: tuple[float, float] = (0.2, 0.5),
    spread: tuple[float, float] = (0.3, 0.6),
) -> tuple[np.ndarray, np.ndarray]:
    """(p_cloud, p_shadow), each (T, Y, X) float32, from a (T, B, Y, X) reflectance block.

    See the module docstring. ``scene_excess`` (T,) is each date's dark-object excess
    (``scene_haze_excess``): where it is large the whole date is hazy, and its log-odds
    logistic((x - scene_mid) / scene_scale) is added where positive (it can only raise the
    belief in haze: a scene without dark-object excess can still hold local cloud).
    """
    # The clear-sky baseline leaves out the dates that are shadowed at a pixel: a low
    # quantile is robust to cloud (always brighter) but not to shadow, and where cloud
    # shadows fall on a quarter of the dates they *are* the envelope, so every clear date
    # reads as haze and is replaced (the demo stack's worst clear pixels: a bright surface
    # 0.42 in the blue on its clear dates, 0.13-0.25 on its three shadowed ones).
    observed = _observed(data)
    snow = snow_score(data, bands)
    snow_free = observed if snow is None else observed & (np.nan_to_num(snow) < SNOW_FREE_BELOW)
    baseline = ~dark_outliers(data, bands, darkening=darkening, spread=spread, snow=snow)
    e = haze_excess(data, bands, quantile, radius, baseline, snow_free)
    n = observed.sum(axis=0)
    # A lower envelope of few dates is a noisy view of the clear sky: the date-to-date
    # variation of a clear surface (and of the atmospheric correction) is read as excess.
    # The excess needed for haze grows as 1 + 1 / (n - 1): x2 with 2 dates, x1.1 with 10.
    few_dates = 1.0 + 1.0 / np.maximum(n - 1, 1)
    p = cloud_probability_from_excess(e / few_dates[None], haze_mid, haze_scale)
    # A baseline from few dates may itself be cloudy: its "clear" reading is worth less.
    # n = 1 gives no opinion at all (NaN); n = 2 at most p_cloud >= 0.3; n = 10 >= 0.033.
    with np.errstate(divide="ignore"):
        floor = np.where(n >= 2, FEW_DATES_FLOOR / np.maximum(n - 1, 1), np.nan)
    p = np.where(n >= 2, np.maximum(p, floor[None]), np.nan)
    if scene_excess is not None:
        x = np.asarray(scene_excess, dtype=np.float64)
        boost = np.maximum((x - scene_mid) / scene_scale, 0.0)  # log-odds, >= 0
        boost = np.where(np.isfinite(boost), boost, 0.0)
        with np.errstate(divide="ignore"):
            lo = np.log(p) - np.log1p(-np.minimum(p, 1.0 - 1e-12))
        p = 1.0 / (1.0 + np.exp(-(lo + boost[:, None, None])))
    if snow is not None:
        p = p * (1.0 - np.maximum(snow, snow_change(data, bands, quantile, snow, baseline)))
    shadow = shadow_probability(data, p, darkening=darkening, spread=spread, bands=bands, snow=snow)
    return p.astype(np.float32), shadow.astype(np.float32)


def snow_change(
    data: np.ndarray,
    bands: tuple[str, ...],
    quantile: float,
    snow: np.ndarray | None = None,
    baseline: np.ndarray | None = None,
) -> np.ndarray:
    """Likelihood (T, Y, X) that a date's brightening over the lower envelope is snow.

    The envelope here is that of the dates without snow (``snow_score`` < ``SNOW_FREE_BELOW``;
    ``snow``: that score when the caller has it) among the ``baseline`` observations (all
    when None; ``stack_evidence`` leaves out the shadowed ones), all dates where a pixel has
    none.

    The change's spectral shape, against the same per-pixel envelope as the haze index:
    snow brightens the visible and the NIR alike but not the SWIR (ice absorbs there); haze
    brightens the blue far more than the NIR, and water cloud brightens the SWIR too (about
    half as much as the blue); patchy or melting snow over a darker ground darkens the SWIR
    while it brightens the visible, which no cloud or haze does by more than ~0.1 of the
    blue rise. score = S(dB; 0.03, 0.06) max(S(dN / dB; 0.5, 0.8) (1 - S(dS / dB; 0.1,
    0.25)), S(-dS / dB; ``ICE_RAMP``) S(dN / dB; 0.2, 0.4)), d the excess over the envelope of
    B02, NIR (B08/B8A) and SWIR (B11/B12) over the snow-free dates. (Reading the change
    against one real date, all bands from the date of the blue envelope, sees more melting
    snow: on the synthetic stacks clear pixels gained 1.6-7.5 dB, but thick cloud lost 0.3-1
    dB and thin 0.1-0.3 dB, because the melting dates then become the nearest clear
    references of a snow-covered target and haze over a ground whose SWIR fell since reads
    as ice. The reference choice has to learn to avoid a surface in transition first.) Ice
    cloud (cirrus) also darkens in the SWIR; it is thin, and stays partly cloud here. 0
    without NIR or SWIR bands. It catches old and wet snow, whose NDSI (green against
    SWIR) is too low for ``snow_score``.
    """
    blue = band_index(bands, "B02")
    nir = band_index(bands, "B08", "B8A")
    swir = band_index(bands, "B11", "B12")
    shape = np.shape(data)
    if blue is None or nir is None or swir is None:
        return np.zeros((shape[0],) + tuple(shape[2:]))
    observed = _observed(data)
    # The envelope is taken over the dates that are not snow: snow is dark in the SWIR, so
    # snowy dates set a per-band SWIR envelope far below the ground's, and a half-melted snow
    # pixel (visible up, SWIR back near the ground's) then reads as a SWIR *rise*, the mark
    # of water cloud. A pixel snowy on every date keeps the envelope of all its dates.
    score = snow_score(data, bands) if snow is None else snow
    free = observed
    if score is not None:
        free = observed & (np.nan_to_num(np.asarray(score), nan=0.0) < SNOW_FREE_BELOW)

    def excess(k: int) -> np.ndarray:
        v = _band(data, k, observed)
        # over the snow-free dates, without the shadowed ones (lifted at most to their
        # median); over all dates where a pixel has no snow-free one
        envelope = _envelope_over(np.where(free, v, np.nan), baseline, quantile, free)
        return v - np.where(np.isfinite(envelope), envelope, lower_envelope(v, quantile))

    db, dn, ds = excess(blue), excess(nir), excess(swir)
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.where(db > 1e-6, db, np.nan)
        nir_ratio, swir_ratio = dn / safe, ds / safe
        # snow's shape: NIR up with the visible, SWIR not up
        alike = smoothstep(nir_ratio, 0.5, 0.8) * (1.0 - smoothstep(swir_ratio, 0.1, 0.25))
        # ice's mark: the SWIR goes *down* while the visible goes up (patchy or melting snow
        # over a darker ground, whose NIR rises less than the visible). Cloud and haze add
        # light in the SWIR or, over a bright-SWIR ground, take off at most ~0.1 of the blue
        # rise: aerosol haze barely reaches the SWIR (1 - t_s ~ 0.2 (1 - t_b)) and even grey
        # ice cloud over bare soil stays near -0.1. The NIR must still rise (a little).
        ice = smoothstep(-swir_ratio, *ICE_RAMP) * smoothstep(nir_ratio, 0.2, 0.4)
        score = smoothstep(db, 0.03, 0.06) * np.maximum(alike, ice)
    return np.where(np.isfinite(score), score, 0.0)


def scene_haze_excess(
    sample: np.ndarray, bands: tuple[str, ...], percentile: float = 1.0
) -> np.ndarray:
    """Per-date dark-object excess in the blue over the series' lowest, (T,) float64.

    ``sample`` (T, B, N): the scene sample. D_t = ``percentile`` of B02 over the date's valid
    pixels; excess_t = D_t - min_t D_t (NaN for a date without valid pixels).
    """
    blue = band_index(bands, "B02")
    if blue is None:
        return np.full(sample.shape[0], np.nan)
    b = np.asarray(sample[:, blue], dtype=np.float64)
    levels = np.array(
        [
            np.percentile(row[np.isfinite(row)], percentile) if np.isfinite(row).any() else np.nan
            for row in b
        ]
    )
    if not np.isfinite(levels).any():
        return levels
    return levels - np.nanmin(levels)


def scene_transmission_ceiling(
    excess: np.ndarray,
    airlight_blue: np.ndarray,
    dark_blue: float,
    tolerance: float,
) -> np.ndarray:
    """Per-date ceiling of t_ref (T,) float64 from each date's dark-object excess in the blue.

    The darkest surfaces of a date are no darker than the series' darkest, so whatever lifts
    the date's dark-object level above the series' lowest is path radiance, spread over the
    whole scene: ``excess >= (A - D) (1 - t)`` at every pixel of the date, with A its
    airlight and D the scene dark object in the blue. Hence ``t <= 1 - excess / (A - D)``.
    A dark-object level is a per-pixel statement no single pixel can make: a date under
    thick cloud everywhere (its darkest pixel a cloud at 0.5) has no pixel whose own cues
    (the dark channel against its own cloudy dates, HOT) see it as opaque, and a uniform
    haze is an affine map that only a comparison across the whole scene reveals.

    ``tolerance``: the excess that clear dates show from season, sun angle and the
    atmospheric correction (up to 0.014 on the real Austria crop and the synthetic stack's
    clear dates); only the excess beyond it bounds t, so a clear date keeps t = 1.
    1 (no bound) where the excess is unknown (NaN) or the airlight does not exceed D.
    """
    e = np.maximum(np.asarray(excess, np.float64) - tolerance, 0.0)
    span = np.asarray(airlight_blue, np.float64) - float(dark_blue)
    with np.errstate(invalid="ignore", divide="ignore"):
        ceiling = 1.0 - e / span
    ok = np.isfinite(ceiling) & (span > 0)
    return np.where(ok, np.clip(ceiling, 0.0, 1.0), 1.0)


# -- compiled passes ---------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
def lower_envelope_fit(values, quantile, out):
    """Per pixel: the k-th smallest finite value of ``values`` (T, N), k = floor(q (n - 1)).

    Semantics: ``lower_envelope``; ``out`` (N,) float64, NaN where no value is finite. The
    finite values of a pixel are insertion-sorted into a buffer (T is a few dozen at most),
    so the value picked is the one a full sort along time would give.
    """
    nt, n = values.shape
    buf = np.empty(nt)
    for p in range(n):
        m = 0
        for i in range(nt):
            v = np.float64(values[i, p])
            if np.isfinite(v):
                m = insert_sorted(buf, m, v)
        if m == 0:
            out[p] = np.nan
            continue
        k = int(np.floor(quantile * (m - 1)))
        out[p] = buf[k]


#: Pixels per run of ``darkening_fit``'s passes (its per-run sums stay in cache).
DARKENING_RUN = 256


@njit(cache=True, nogil=True, error_model="numpy")
def darkening_fit(data, dates, group, min_reflectance, mean, var, visible, infrared, count, median):
    """Per pixel of ``data`` (T, B, N): M_b, the lower median over the ``dates`` (T, N) of
    each band (NaN without any), into ``median`` (B, N); then per date, over the bands with
    M_b and I_b above ``min_reflectance``, log(I_b / M_b): its mean, variance (population),
    mean over the ``group`` 1 (visible) and 2 (infrared) bands (NaN without any) and count.

    Semantics: ``_darkening``; the medians are those of ``lower_envelope`` (q = 0.5).
    """
    nt, nb, n = data.shape
    buf = np.empty(nt)
    # the medians band by band over runs of pixels: each date's run is read contiguously
    # into a small tile (the dates of one pixel lie a whole (B, N) plane apart)
    tile = np.empty((nt, DARKENING_RUN))
    for k in range(nb):
        for p0 in range(0, n, DARKENING_RUN):
            p1 = min(p0 + DARKENING_RUN, n)
            for t in range(nt):
                for p in range(p0, p1):
                    tile[t, p - p0] = data[t, k, p] if dates[t, p] else np.nan
            for p in range(p0, p1):
                m = 0
                for t in range(nt):
                    v = tile[t, p - p0]
                    if np.isfinite(v):
                        m = insert_sorted(buf, m, v)
                median[k, p] = buf[int(np.floor(0.5 * (m - 1)))] if m > 0 else np.nan
    # then run by run of pixels, date by date, band by band: the sums of a run stay in small
    # arrays (in cache) and each date's band reads a contiguous row
    run = DARKENING_RUN
    c_ = np.empty(run, np.int32)
    tot = np.empty(run)
    sq = np.empty(run)
    vis = np.empty(run)
    ir = np.empty(run)
    vis_n = np.empty(run, np.int32)
    ir_n = np.empty(run, np.int32)
    for p0 in range(0, n, run):
        p1 = min(p0 + run, n)
        for t in range(nt):
            c_[:] = 0
            tot[:] = 0.0
            sq[:] = 0.0
            vis[:] = 0.0
            ir[:] = 0.0
            vis_n[:] = 0
            ir_n[:] = 0
            for k in range(nb):
                g = group[k]
                for p in range(p0, p1):
                    i = p - p0
                    mk = median[k, p]
                    v = np.float64(data[t, k, p])
                    if mk > min_reflectance and v > min_reflectance:
                        lr = np.log(v / mk)
                        c_[i] += 1
                        tot[i] += lr
                        sq[i] += lr * lr
                        if g == 1:
                            vis[i] += lr
                            vis_n[i] += 1
                        elif g == 2:
                            ir[i] += lr
                            ir_n[i] += 1
            for p in range(p0, p1):
                i = p - p0
                c = max(c_[i], 1)
                mu = tot[i] / c
                count[t, p] = c_[i]
                mean[t, p] = mu
                var[t, p] = max(sq[i] / c - mu * mu, 0.0)
                visible[t, p] = vis[i] / vis_n[i] if vis_n[i] > 0 else np.nan
                infrared[t, p] = ir[i] / ir_n[i] if ir_n[i] > 0 else np.nan
