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

import numpy as np

from ._common import box_mean_nan, smoothstep


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
    darkening: float = 0.1,
    rise_tolerance: float = 0.05,
    max_change_haze: float = 0.25,
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
    obs = np.asarray(observed, np.float64)
    ref = np.asarray(reference, np.float64)
    a = np.asarray(airlight, np.float64).reshape(-1, 1, 1)
    leverage = a - ref
    usable = np.isfinite(obs) & np.isfinite(ref) & (leverage >= min_leverage)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(usable, (obs - ref) / np.where(usable, leverage, 1.0), np.nan)
    # Haze brightens every band it touches; a pixel brighter than the reference in some bands
    # and clearly darker in others changed its surface (snow over vegetation is darker in the
    # SWIR, brighter in the visible): no haze reading there.
    # (every observed band counts here, with the leverage floored: a SWIR band too close to
    # the cloud light to measure haze still shows that the surface got darker)
    with np.errstate(invalid="ignore", divide="ignore"):
        h_any = (obs - ref) / np.maximum(leverage, min_leverage)
    h_hi = np.where(np.isfinite(h), h, -np.inf).max(axis=0)
    h_lo = np.where(np.isfinite(h_any), h_any, np.inf).min(axis=0)
    mixed_signs = (h_hi > 2.0 * noise) & (h_lo < -darkening)
    # ... and it never grows with wavelength (Angstrom exponent >= 0, A_b - J_b about flat in
    # the visible): a brightening that rises from blue to red is bare soil, not a veil.
    wl = np.asarray(wavelengths, np.float64)
    s = int(np.argmin(wl))
    h_s = np.where(np.isfinite(h[s]), h[s], 0.0)
    excess = np.where(np.isfinite(h), h - h_s[None], -np.inf).max(axis=0)
    # Both tests apply to faint readings only: under a real veil (H_s > max_change_haze) the
    # surface change is the small term and the haze reading stands (haze over a shadow, for
    # one, brightens the visible and darkens the NIR).
    rising = excess > rise_tolerance + 0.25 * np.abs(h_s)
    changed = (mixed_signs | rising) & (h_s < max_change_haze)
    # a changed surface is evidence of *no* haze (not missing evidence): H = 0 there
    h = np.where(changed[None] & usable, 0.0, h)
    if radius > 0:
        # denoise, but never raise a pixel's haze above its own reading plus the noise (a
        # clear pixel next to a cloud keeps its value: no halo, no seam at the cloud edge)
        # nor lower it by more than 3 x the noise (a speck of opaque cloud among clear
        # pixels stays opaque instead of being averaged into a thin veil)
        h = np.clip(box_mean_nan(h, radius), h - 3.0 * noise, h + noise)
    # darker than the reference is not haze (shadow or change): no negative haze
    h = np.clip(h, 0.0, 1.0)
    h = h * smoothstep(h, noise, 2.0 * noise)
    t = np.where(usable, 1.0 - h, np.nan)
    t_s = t[s]
    upper = np.clip(t_s, 0.0, 1.0)[None] ** ((wl[s] / wl) ** gamma_max)[:, None, None]
    bounded = np.clip(t, t_s[None], upper)
    order = np.argsort(wl, kind="stable")  # and non-decreasing from band to band
    bounded[order] = np.fmax.accumulate(bounded[order], axis=0)
    usable = usable & np.isfinite(t_s)[None]
    return np.where(usable, bounded, np.nan), usable
