"""Temporal reference kernels: the quality that ranks reference dates, spectral consistency, and
local radiometric harmonisation of one date onto another.

The choice of references and their blend are the fusion's (``_fusion``: the candidates
scoring within ``reference_blend_ratio`` of the best, weighted by score); this module gives
it the scores and the harmonised maps.

Limitations
-----------
* Harmonisation is a per-band affine map fitted in a square window (on a coarse grid,
  ``harmonise_grid_step``). The fusion's robust pre-weight (``_fusion._agreement``) keeps
  shadow, residual cloud and surface change on either date out of the fit, but a change that
  covers most of the window (harvest, flooding of a whole field) still biases it.
* Cost grows with (dates x candidates x bands) box filters per block; ``max_candidates``
  bounds it, and ``FusionConfig.time_window_dates`` (with ``restore``'s time blocks) bounds
  the dates a long series holds at once.
"""

from __future__ import annotations

import numpy as np

from ._common import F32, box_mean_nan, float_array
from ._numba import GAIN_BOUNDS, harmonise_fit, harmonise_fit_coarse, spectral_consistency_fit


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
    there is no anchor. One compiled pass per pixel (``_numba.spectral_consistency_fit``).
    """
    j = float_array(surface)
    if j.ndim != 4 or np.shape(eligible) != j.shape[:1] + j.shape[2:]:
        raise ValueError(
            f"spectral_consistency needs surface (T, B, Y, X) and eligible (T, Y, X), got "
            f"{j.shape} and {np.shape(eligible)}"
        )
    nt, nb = j.shape[:2]
    out = np.empty((nt, j[0, 0].size))
    spectral_consistency_fit(
        j.reshape(nt, nb, -1),
        np.ascontiguousarray(eligible, dtype=bool).reshape(nt, -1),
        float(sigma),
        out,
    )
    return out.reshape((nt,) + j.shape[2:])


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
    grid_step: int = 1,
    origin: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, ...]:
    """Local per-band gain/offset mapping ``source`` onto ``target`` (B, Y, X) each, float32.

    Fitted by weighted least squares in a (2r+1)^2 window from box-filter moments
    S0 = sum w, Sx, Sy, Sxx, Sxy (w = clear in both dates; a pixel not finite in every band
    of both dates has no weight; pixels outside the array are absent), so the map follows
    slow spatial changes of the radiometric difference (phenology, BRDF, residual haze)
    without a per-pixel loop. The gain is ridge-pulled toward the prior (scene-level pair fit) and the pair
    (g, o) shrinks to the prior where the window holds less than ``shrink_pixels`` clear
    weight: local where the data allow, global elsewhere, identity without either.

    With ``residual=True`` a third array (Y, X) is returned: the weighted mean squared
    residual of the fitted map over the window and the bands, mean_b E_w[(t - g s - o)^2]
    (NaN where the window holds no weight). It is the local error of the harmonised
    reference as a stand-in for the target's surface, measured where both are clear.

    One fused compiled pass (``_numba.harmonise_fit``): the moments (float64 running sums),
    the ridge fit (``_numba.ridge_fit_scalar``) and the residual for all bands.

    ``grid_step`` > 1: an approximation for speed. The map is smooth at the window's scale,
    so it is fitted once per cell of ``grid_step`` px on a grid anchored to multiples of
    ``grid_step`` in the whole array (``origin``: the block's first pixel there), over a
    window of (2m + 1) whole cells (``_numba.coarse_span``, the nearest to 2r + 1 px), and
    interpolated bilinearly between cell centres (``_numba.harmonise_fit_coarse``). A block
    whose halo covers ``_numba.coarse_reach(radius, grid_step)`` gives the same core as the
    whole array.
    """
    t, s = float_array(target), float_array(source)
    if t.ndim != 3 or s.shape != t.shape or np.shape(weight) != t.shape[1:]:
        raise ValueError(
            f"harmonise_local needs target and source (B, Y, X) and weight (Y, X), got "
            f"{t.shape}, {s.shape} and {np.shape(weight)}"
        )
    if grid_step < 1:
        raise ValueError(f"harmonise_local: grid_step must be >= 1 px, got {grid_step}")
    nb = t.shape[0]
    gains = np.empty(t.shape, F32)
    offsets = np.empty(t.shape, F32)
    resid = np.empty(t.shape[1:] if residual else (0, 0), F32)
    w = np.ascontiguousarray(weight, dtype=np.float64)
    g0 = np.broadcast_to(np.asarray(prior_gain, np.float64), (nb,)).copy()
    o0 = np.broadcast_to(np.asarray(prior_offset, np.float64), (nb,)).copy()
    fit = (float(ridge), float(shrink_pixels), *GAIN_BOUNDS, residual, gains, offsets, resid)
    if grid_step > 1:
        oy, ox = (int(v) for v in origin)
        harmonise_fit_coarse(t, s, w, int(radius), int(grid_step), oy, ox, g0, o0, *fit)
    else:
        harmonise_fit(t, s, w, int(radius), g0, o0, *fit)
    if residual:
        return gains, offsets, resid
    return gains, offsets


def smoothed_quality(q: np.ndarray, radius: int) -> np.ndarray:
    """Box mean of q (T, Y, X) over in-array pixels: makes the reference choice spatially coherent."""
    out = box_mean_nan(q, radius)
    return np.where(np.isfinite(out), out, 0.0)
