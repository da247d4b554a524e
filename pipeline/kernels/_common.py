"""Small numerical helpers shared by the block kernels (numpy, scipy.ndimage, ``_numba``).

Every spatial window here treats pixels outside the array as *absent* (not as zeros, not
mirrored), so a block processed with a halo of at least the window radius gives exactly the
same interior values as the whole array: this is what makes the dask path chunking-invariant.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from .._bands import REFERENCE_WAVELENGTH_NM, WAVELENGTH_NM
from ._numba import smoothstep_fit

F32 = np.float32


def smoothstep(x: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """C1-smooth ramp: 0 for x <= lo, 1 for x >= hi, 3u^2 - 2u^3 in between (u = (x-lo)/(hi-lo)).

    Used for every soft threshold so that no quality layer, and hence no output, jumps at a
    threshold (no seams at cloud boundaries). NaN stays NaN (with hi == lo, a plain step,
    NaN gives 0). float64 array of x's shape.
    """
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    out = np.empty(a.shape)
    # one compiled pass (``_numba._smoothstep``), float64 arithmetic, no full-size temporaries
    smoothstep_fit(np.ascontiguousarray(a).reshape(-1), float(lo), float(hi), out.reshape(-1))
    return out if out.ndim else out[()]


def _spatial_size(ndim: int, radius: int) -> tuple[int, ...]:
    return (1,) * (ndim - 2) + (2 * radius + 1, 2 * radius + 1)


def box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum over a (2r+1)^2 window on the last two axes, out-of-array pixels counted as 0 (float64).

    ``uniform_filter`` with ``mode="constant"`` is a running mean; multiplying by the window
    area gives the sum. Callers divide two box sums, so the area cancels.
    """
    a = np.asarray(a, dtype=np.float64)
    if radius <= 0:
        return a.copy()
    size = _spatial_size(a.ndim, radius)
    return ndimage.uniform_filter(a, size=size, mode="constant", cval=0.0) * float(
        (2 * radius + 1) ** 2
    )


def box_mean_nan(a: np.ndarray, radius: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean over a (2r+1)^2 window ignoring NaN and out-of-array pixels (float64).

    mean = sum(w * a) / sum(w) over the window; NaN where the window holds no weight.
    """
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    w = finite.astype(np.float64) if weights is None else np.where(finite, weights, 0.0)
    num = box_sum(np.where(finite, a, 0.0) * w, radius)
    den = box_sum(w, radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den <= 1e-12] = np.nan
    return out


def min_filter_nan(a: np.ndarray, radius: int) -> np.ndarray:
    """Minimum over a (2r+1)^2 window on the last two axes, ignoring NaN (NaN if all NaN).

    ``mode="nearest"`` only repeats in-window edge values, so the result equals the minimum
    over the in-array part of the window (chunking-invariant).
    """
    if radius <= 0:
        return np.array(a, copy=True)
    filled = np.where(np.isnan(a), np.inf, a)
    out = ndimage.minimum_filter(filled, size=_spatial_size(a.ndim, radius), mode="nearest")
    out = out.astype(a.dtype, copy=False)
    out[np.isinf(out)] = np.nan
    return out


def max_filter_nan(a: np.ndarray, radius: int) -> np.ndarray:
    """Maximum over a (2r+1)^2 window on the last two axes, ignoring NaN (NaN if all NaN)."""
    if radius <= 0:
        return np.array(a, copy=True)
    filled = np.where(np.isnan(a), -np.inf, a)
    out = ndimage.maximum_filter(filled, size=_spatial_size(a.ndim, radius), mode="nearest")
    out = out.astype(a.dtype, copy=False)
    out[np.isinf(out)] = np.nan
    return out


def nanmin0(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmin`` without the all-NaN RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmin(a, axis=axis)


def wavelengths_of(bands: tuple[str, ...] | list[str]) -> np.ndarray:
    """Central wavelengths (nm, float64) of the given asset keys."""
    return np.array([WAVELENGTH_NM[b] for b in bands], dtype=np.float64)


def angstrom_exponent(wavelengths: np.ndarray, gamma: np.ndarray | float) -> np.ndarray:
    """(lambda_ref / lambda_b) ** gamma with shape (..., B) for gamma of shape (...).

    Angstrom law: tau_b = tau_ref * (lambda_ref / lambda_b) ** gamma, so
    t_b = exp(-tau_b) = t_ref ** ((lambda_ref / lambda_b) ** gamma).
    """
    g = np.asarray(gamma, dtype=np.float64)[..., None]
    return (REFERENCE_WAVELENGTH_NM / np.asarray(wavelengths, dtype=np.float64)) ** g


def visible_band_mask(wavelengths: np.ndarray, max_nm: float) -> np.ndarray:
    """Bands shorter than ``max_nm``; the shortest available band when none is."""
    mask = np.asarray(wavelengths) < max_nm
    if not mask.any():
        mask = np.zeros(len(wavelengths), dtype=bool)
        mask[int(np.argmin(wavelengths))] = True
    return mask


def band_index(bands: tuple[str, ...] | list[str], *names: str) -> int | None:
    """Index of the first of ``names`` present in ``bands``, else None."""
    for name in names:
        if name in bands:
            return list(bands).index(name)
    return None
