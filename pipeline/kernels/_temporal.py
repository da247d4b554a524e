"""Transmission from the harmonised temporal reference (the temporal haze cue).

The scattering model holds per band: ``I_b - R_b = (A_b - J_b)(1 - t_b) + (J_b - R_b)``. With
a harmonised reference ``R`` of the same place from another date (``R ~ J`` up to surface
change), the per-band haze fraction follows without any window prior or Angstrom fit::

    H_b = (I_b - R_b) / (A_b - R_b),      t_b = 1 - H_b

Why it beats the single-date cues where a good reference exists:

* it is exact for an unchanged surface, whatever the surface's brightness: bright sand or
  roofs, dark water and dense vegetation need no dark-object assumption;
* it gives every band its own transmission, so the inversion does not inherit an error of
  the scene Angstrom exponent (the bands where ``A_b - R_b`` is small carry little haze
  information and fall back to the prior's ``t_b``);
* opaque cloud gives ``H ~ 1`` in every band (decisive), cloud shadow ``H < 0`` (darker
  than the reference; the fusion step's darkening cue handles it).

Its error is the surface change ``(J_b - R_b) / (A_b - R_b)``: spatially rough where the
haze is smooth, so ``H`` is box-averaged over a small window (capped by the pixel's own
reading plus the noise level, so haze does not bleed onto clear neighbours), then shrunk to zero below the
noise level ``noise`` (a smooth dead zone: a clear pixel must not be "dehazed" by the
residual change between dates, a real veil of H > 2 noise is kept untouched).

Implementation: the numpy fronts first, then their compiled passes (numba, conventions in
``_common``). Two passes per target date, both over pixels with the bands innermost, so no
(B, Y, X) temporary other than the haze readings is ever made:

1. ``haze_readings_fit``: the per-band haze reading H_b = (I_b - R_b) / (A_b - R_b) of each
   pixel, NaN where the band is unusable, 0 where the pixel's surface changed;
2. ``bounded_transmission_fit`` / ``refine_fit``: the NaN-aware window mean of H (radius r,
   out-of-array pixels absent: chunking-invariant), the clips and dead zone, the Angstrom
   bounds, and (``refine_fit``, the fusion's step 4: ``_temporal_refinement``) the blend with
   the prior's transmission, the floor (``_transmission._floored``), the inversion
   (``_inversion._invert_at``) and the shortest band's transmission.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ._common import _smoothstep, float_array, wavelengths_of
from ._config import FusionConfig
from ._inversion import _invert_at
from ._transmission import _floored, snow_score

#: Surface-change tests of the faint readings (see ``temporal_band_transmission``): darkening
#: in units of H that marks a mixed-sign change, tolerated rise of H from the shortest band,
#: and the reading of the shortest band above which a veil is taken as haze regardless.
CHANGE_DARKENING = 0.1
CHANGE_RISE_TOLERANCE = 0.05
CHANGE_MAX_HAZE = 0.25


class HazeReadings(NamedTuple):
    """Pass 1 of the temporal cue for one date and what pass 2 needs to bound it."""

    h: np.ndarray  # (B, Y, X) float64 haze reading H_b; NaN = unusable band, 0 = changed surface
    shortest: int  # index of the shortest band (the most haze-sensitive one)
    order: np.ndarray  # (B,) band indices by wavelength
    exponents: np.ndarray  # (B,) (lambda_s / lambda_b) ** gamma_max, the Angstrom upper bound


def haze_readings(
    observed: np.ndarray,
    reference: np.ndarray,
    airlight: np.ndarray,
    wavelengths: np.ndarray,
    *,
    min_leverage: float,
    noise: float,
    gamma_max: float,
    darkening: float = CHANGE_DARKENING,
    rise_tolerance: float = CHANGE_RISE_TOLERANCE,
    max_change_haze: float = CHANGE_MAX_HAZE,
) -> HazeReadings:
    """Per-band haze readings of ``observed`` (B, Y, X) against ``reference`` (one compiled pass)."""
    obs, ref = float_array(observed), float_array(reference)
    nb = obs.shape[0]
    wl = np.asarray(wavelengths, np.float64)
    s = int(np.argmin(wl))
    h = np.empty(obs.shape, np.float64)
    haze_readings_fit(
        obs.reshape(nb, -1),
        ref.reshape(nb, -1),
        np.asarray(airlight, np.float64).reshape(-1),
        s,
        float(min_leverage),
        float(noise),
        float(darkening),
        float(rise_tolerance),
        float(max_change_haze),
        h.reshape(nb, -1),
    )
    order = np.argsort(wl, kind="stable").astype(np.intp)
    return HazeReadings(h, s, order, (wl[s] / wl) ** float(gamma_max))


def temporal_band_transmission(
    observed: np.ndarray,
    reference: np.ndarray,
    airlight: np.ndarray,
    wavelengths: np.ndarray,
    *,
    radius: int = 2,
    min_leverage: float = 0.15,
    noise: float = 0.03,
    gamma_max: float = 2.5,
    darkening: float = CHANGE_DARKENING,
    rise_tolerance: float = CHANGE_RISE_TOLERANCE,
    max_change_haze: float = CHANGE_MAX_HAZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band transmission of ``observed`` (B, Y, X) against ``reference`` (B, Y, X).

    Returns ``(t_b, usable)``: t_b (B, Y, X) float64 in [0, 1] (NaN where unusable) and a bool
    (B, Y, X) mask of the values backed by evidence: both inputs finite and leverage
    ``A_b - R_b >= min_leverage`` (the band distinguishes cloud light from the surface),
    A faint reading (H_s < ``max_change_haze``) that is brighter in some bands while darker
    by more than ``darkening`` (in units of H) in others, or whose H rises with wavelength
    above the shortest band's by more than
    ``rise_tolerance`` + 25 % (a bare field brightens the blue by ~0.1-0.15 at most),
    changed its surface: haze brightens every band and most at the
    shortest wavelength. There the reading is "no haze" (t_b = 1), not "no reading".

    Physical consistency: with an Angstrom exponent in [0, gamma_max], transmission cannot
    fall with wavelength, so every band is bounded by the shortest band's t_s (the most
    haze-sensitive one, ``wavelengths`` (B,) in nm):
    t_s <= t_b <= t_s ** ((lambda_s / lambda_b) ** gamma_max), and non-decreasing in lambda. A surface change confined to
    the NIR (harvest, senescence) is then not read as haze, which only the NIR sees.
    """
    readings = haze_readings(
        observed,
        reference,
        airlight,
        wavelengths,
        min_leverage=min_leverage,
        noise=noise,
        gamma_max=gamma_max,
        darkening=darkening,
        rise_tolerance=rise_tolerance,
        max_change_haze=max_change_haze,
    )
    t = np.empty(readings.h.shape, np.float64)
    # window mean, clips, dead zone and Angstrom bounds in one compiled pass per pixel
    bounded_transmission_fit(
        readings.h,
        int(radius),
        float(noise),
        readings.shortest,
        readings.order,
        readings.exponents,
        t,
    )
    return t, np.isfinite(t)


def _temporal_refinement(
    observed: np.ndarray,
    reference: np.ndarray,
    airlight: np.ndarray,
    prior_tb: np.ndarray,
    surface: np.ndarray,
    t_ref: np.ndarray,
    q_ref: np.ndarray,
    bands: tuple[str, ...],
    cfg: FusionConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 of ``fuse_dates`` for one date: (J_phys, t_ref) refined by the transmission
    read against the harmonised reference, weighted by the reference's quality.

    Where the temporal cue has no usable reading (a surface change, see
    ``temporal_band_transmission``) or the target is snow (``snow_score(strict=True)``:
    fresh snow against a snow-free reference reads as haze in every band) the prior's
    transmission stays.
    """
    readings = haze_readings(
        observed,
        reference,
        airlight,
        wavelengths_of(bands),
        min_leverage=cfg.temporal_min_leverage,
        noise=cfg.temporal_noise,
        gamma_max=cfg.gamma_max,
    )
    w = cfg.temporal_weight * np.clip(q_ref, 0.0, 1.0)
    snow = snow_score(np.asarray(observed)[None], bands, strict=True)
    if snow is not None:
        w = w * (1.0 - snow[0])
    surface = np.array(surface, dtype=np.float64, order="C")  # updated in place below
    t_out = np.array(t_ref, dtype=np.float64, order="C")
    # the window mean and bounds of the temporal cue, its blend with the prior's t_b, the
    # floor and the inversion: one compiled pass per pixel (``refine_fit``)
    refine_fit(
        readings.h,
        int(cfg.temporal_radius),
        float(cfg.temporal_noise),
        readings.shortest,
        readings.order,
        readings.exponents,
        float_array(observed),
        np.asarray(airlight, np.float64).reshape(-1),
        float_array(prior_tb),
        np.ascontiguousarray(w, dtype=np.float64),
        float(cfg.temporal_t_min),
        surface,
        t_out,
    )
    return surface, t_out


# -- compiled passes ---------------------------------------------------------------------


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
    """Pass 2 and the refinement (``_temporal_refinement``), in place on ``surface``, ``t_ref``.

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
                t = _floored(t, o, a if a > 1e-3 else 1e-3)  # a NaN observation: no cap
                if b == s:
                    t_new = t
                if w > 0.0:
                    j = _invert_at(o, a, t, t_min)
                    if np.isfinite(j):
                        surface[b, y, x] = j
            if np.isfinite(t_new):
                w_ref = w if usable else 0.0
                t_ref[y, x] = w_ref * t_new + (1.0 - w_ref) * t_ref[y, x]
