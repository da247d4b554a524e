"""Small numerical helpers shared by the block kernels (numpy fronts of compiled ``_numba*`` passes).

Every spatial window here treats pixels outside the array as *absent* (not as zeros, not
mirrored), so a block processed with a halo of at least the window radius gives exactly the
same interior values as the whole array: this is what makes the dask path chunking-invariant.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._bands import REFERENCE_WAVELENGTH_NM, WAVELENGTH_NM
from ._numba import smoothstep_fit
from ._numba_physics import box_mean_nan_fit, window_extreme

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


def float_array(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous float32 or float64 array (no copy when it already is one): what
    the compiled passes read, always into float64 arithmetic."""
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return np.ascontiguousarray(a)


def box_mean_nan(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window on the last two axes, ignoring NaN/inf and out-of-array
    pixels (float64); NaN where the window holds no finite value.

    One compiled pass (``_numba_physics.box_mean_nan_fit``, separable row and column sums).
    """
    arr = float_array(a)
    flat = arr.reshape((-1,) + arr.shape[-2:])
    out = np.empty(flat.shape)
    box_mean_nan_fit(flat, int(radius), out)
    return out.reshape(arr.shape)


def _window_extreme_nan(a: np.ndarray, radius: int, sign: float) -> np.ndarray:
    arr = np.asarray(a)
    if radius <= 0:
        return np.array(arr, copy=True)
    flat = np.ascontiguousarray(arr, dtype=np.float64).reshape((-1,) + arr.shape[-2:])
    out = np.empty(flat.shape)
    rows = np.empty(flat.shape[1:])
    for k in range(flat.shape[0]):
        window_extreme(flat[k], int(radius), sign, rows, out[k])
    return out.reshape(arr.shape).astype(arr.dtype, copy=False)


def min_filter_nan(a: np.ndarray, radius: int) -> np.ndarray:
    """Minimum over a (2r+1)^2 window on the last two axes, ignoring NaN and out-of-array
    pixels (NaN where the window holds no value); compiled (``_numba_physics.window_extreme``)."""
    return _window_extreme_nan(a, radius, -1.0)


def max_filter_nan(a: np.ndarray, radius: int) -> np.ndarray:
    """Maximum over a (2r+1)^2 window on the last two axes, ignoring NaN (NaN if all NaN)."""
    return _window_extreme_nan(a, radius, 1.0)


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
