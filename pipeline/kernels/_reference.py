"""Temporal reference kernels: per-pixel reference choice and local radiometric harmonisation.

Limitations
-----------
* The reference is one date per pixel (hard argmax of a spatially smoothed score). Choices are
  spatially coherent and harmonised, so switches between dates are faint, but a soft blend of
  the best few dates would remove the residual seams entirely.
* Harmonisation is a per-band affine map fitted in a square window; surface change between the
  dates (harvest, flooding) within the window biases it. A robust (Huber) fit would help.
* Cost grows with (dates x candidates x bands) box filters per block; ``max_candidates`` bounds
  it, but long series should process the time axis in windows.
"""

from __future__ import annotations

import numpy as np

from ._common import box_mean_nan, box_sum, nanmedian0
from ._scene import _ridge_fit


def reference_quality(t_ref: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Quality of a date as a reference for other dates: q = c * t_ref (0 where unobserved).

    Clear (t ~ 1) and faithful (c ~ 1) observations are the best references; a thin-haze date
    that inverts well still counts, scaled by its transmission.
    """
    q = np.asarray(confidence, np.float64) * np.asarray(t_ref, np.float64)
    return np.where(np.isfinite(q), np.clip(q, 0.0, 1.0), 0.0)


def spectral_consistency(surface: np.ndarray, eligible: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-(d / sigma)^2), d = RMS over bands of (J_t - M), M = median of eligible dates (T,Y,X).

    The temporal median of the good observations is a robust anchor: a candidate whose
    spectrum departs from it (undetected cloud or shadow, a one-off) scores lower. 1 where
    there is no anchor.
    """
    masked = np.where(eligible[:, None], surface, np.nan)
    median = nanmedian0(masked, axis=0)  # (B, Y, X)
    diff = np.asarray(surface, np.float64) - median[None]
    fin = np.isfinite(diff)
    cnt = fin.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.sqrt(np.where(fin, diff * diff, 0.0).sum(axis=1) / cnt)
    cons = np.exp(-((d / sigma) ** 2))
    return np.where(np.isfinite(cons), cons, 1.0)


def harmonise_local(
    target: np.ndarray,
    source: np.ndarray,
    weight: np.ndarray,
    radius: int,
    prior_gain: np.ndarray,
    prior_offset: np.ndarray,
    *,
    ridge: float = 4e-3,
    shrink_pixels: float = 30.0,
    residual: bool = False,
) -> tuple[np.ndarray, ...]:
    """Local per-band gain/offset mapping ``source`` onto ``target`` (B, Y, X) each, float64.

    Fitted by weighted least squares in a (2r+1)^2 window from box-filter moments
    S0 = sum w, Sx, Sy, Sxx, Sxy (w = clear in both dates), so the map follows slow spatial
    changes of the radiometric difference (phenology, BRDF, residual haze) without a per-pixel
    loop. The gain is ridge-pulled toward the prior (scene-level pair fit) and the pair
    (g, o) shrinks to the prior where the window holds less than ``shrink_pixels`` clear
    weight: local where the data allow, global elsewhere, identity without either.

    With ``residual=True`` a third array (Y, X) is returned: the weighted mean squared
    residual of the fitted map over the window and the bands, mean_b E_w[(t - g s - o)^2]
    (NaN where the window holds no weight). It is the local error of the harmonised
    reference as a stand-in for the target's surface, measured where both are clear.
    """
    t = np.asarray(target, np.float64)
    s = np.asarray(source, np.float64)
    ok = np.isfinite(t).all(axis=0) & np.isfinite(s).all(axis=0)
    w = np.where(ok, np.asarray(weight, np.float64), 0.0)
    s0 = box_sum(w, radius)
    tz, sz = np.where(ok, t, 0.0), np.where(ok, s, 0.0)
    gains = np.empty(t.shape)
    offsets = np.empty(t.shape)
    for b in range(t.shape[0]):
        x, y = sz[b], tz[b]
        wx, wy = w * x, w * y
        g, o = _ridge_fit(
            s0,
            box_sum(wx, radius),
            box_sum(wy, radius),
            box_sum(wx * x, radius),
            box_sum(wx * y, radius),
            float(prior_gain[b]),
            float(prior_offset[b]),
            ridge,
            shrink_pixels,
        )
        gains[b], offsets[b] = g, o
        if residual:
            syy = box_sum(wy * y, radius)
            with np.errstate(invalid="ignore", divide="ignore"):
                n = np.where(s0 > 1e-9, s0, np.nan)
                sx, sy = box_sum(wx, radius), box_sum(wy, radius)
                sxx, sxy = box_sum(wx * x, radius), box_sum(wx * y, radius)
                mse = (syy - 2 * g * sxy - 2 * o * sy + g * g * sxx + 2 * g * o * sx) / n + o * o
            resid_sum = mse if b == 0 else resid_sum + mse
    if residual:
        return gains, offsets, np.maximum(resid_sum / t.shape[0], 0.0)
    return gains, offsets


def smoothed_quality(q: np.ndarray, radius: int) -> np.ndarray:
    """Box mean of q (T, Y, X) over in-array pixels: makes the reference choice spatially coherent."""
    out = box_mean_nan(q, radius)
    return np.where(np.isfinite(out), out, 0.0)
