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
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._common import float_array
from ._numba_temporal import bounded_transmission_fit, haze_readings_fit

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
