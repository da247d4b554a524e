"""Small numerical helpers shared by the block kernels: numpy fronts, array layouts for the
compiled passes, and the compiled (numba) scalars and windows several concepts use.

Every spatial window here treats pixels outside the array as *absent* (not as zeros, not
mirrored), so a block processed with a halo of at least the window radius gives exactly the
same interior values as the whole array: this is what makes the dask path chunking-invariant.

Compiled functions (here and in every kernel module) are ``cache=True`` (compiled once per
installation and dtype signature, not once per process) and ``nogil=True`` (several Dask
threads run them at once). None is ``parallel``: a Dask worker already runs one kernel per
thread, and ``pipeline.cluster`` pins ``NUMBA_NUM_THREADS=1`` so nothing oversubscribes.
``error_model="numpy"``: a division by zero gives inf / NaN as in numpy (the callers rely on
NaN propagation), never a ZeroDivisionError. Arithmetic is float64 whatever the input dtype.
Each compiled function is the single implementation of its computation; the numpy front
beside it checks and reshapes the inputs and states the science.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import njit

from .._bands import REFERENCE_WAVELENGTH_NM, WAVELENGTH_NM

F32 = np.float32

#: An empty operand: tells a compiled kernel that an optional input (HOT, SCL, floor) is absent.
ABSENT = np.empty((0, 0))
#: Pixels per chunk of the per-pixel passes that loop band-outer over a chunk of pixels
#: (``_reference.add_candidate_fit``, ``_harmonisation.agreement_fit``): each pixel's
#: arithmetic is unchanged, but a chunk's independent pixels run side by side (the
#: divisions and square roots overlap) and the (B, chunk) scratch stays in L1/L2.
LANE_CHUNK = 256


@njit(cache=True, nogil=True, error_model="numpy")
def _smoothstep(x: float, lo: float, hi: float) -> float:
    """Scalar ``smoothstep``: 0 for x <= lo, 1 for x >= hi, 3u^2 - 2u^3 between.

    NaN stays NaN; with hi == lo it is the step x >= hi (NaN -> 0), as in numpy's version.
    """
    if hi == lo:
        return 1.0 if x >= hi else 0.0
    u = (x - lo) / (hi - lo)
    if u < 0.0:
        u = 0.0
    elif u > 1.0:
        u = 1.0
    return u * u * (3.0 - 2.0 * u)


@njit(cache=True, nogil=True, error_model="numpy")
def smoothstep_fit(x, lo, hi, out):
    """``_smoothstep`` over a 1-D array into ``out`` (float64)."""
    for k in range(x.shape[0]):
        out[k] = _smoothstep(np.float64(x[k]), lo, hi)


@njit(cache=True, nogil=True, error_model="numpy")
def _fmin(a: float, b: float) -> float:
    """``np.fmin``: the smaller of a and b, ignoring a NaN (NaN only if both are)."""
    if a != a:
        return b
    if b != b:
        return a
    return a if a <= b else b


@njit(cache=True, nogil=True, error_model="numpy")
def _clip01(x: float) -> float:
    """``np.clip(x, 0, 1)``: NaN stays NaN."""
    if x < 0.0:
        return 0.0
    if x > 1.0:
        return 1.0
    return x


@njit(cache=True, nogil=True, error_model="numpy")
def _darkening_at(st, sr, any_both, low, high):
    """1 - S(sum_b target / sum_b reference; low, high) over the bands finite in both; 0 if unknown.

    The darkening (shadow) cue: the harmonisation's robust pre-weight
    (``_harmonisation.agreement_fit``) and the gate (``_inversion.gate_fit``) both read it.
    """
    if not any_both:
        return 0.0
    dark = 1.0 - _smoothstep(st / sr, low, high)
    return dark if np.isfinite(dark) else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _scl_code(value: float) -> int:
    """Lookup-table index of an SCL value: NaN -> 0, clipped to [0, 255], truncated."""
    if value != value:
        return 0
    if value < 0.0:
        return 0
    if value > 255.0:
        return 255
    return int(value)


@njit(cache=True, nogil=True, error_model="numpy")
def insert_sorted(buf, m, v):
    """Insert ``v`` into the sorted first ``m`` values of ``buf``; returns m + 1.

    The per-pixel sort of the time-series kernels (T is a few dozen at most, so an
    insertion sort beats a general one and needs no temporary).
    """
    j = m
    while j > 0 and buf[j - 1] > v:
        buf[j] = buf[j - 1]
        j -= 1
    buf[j] = v
    return m + 1


@njit(cache=True, nogil=True, error_model="numpy")
def _row_extreme(src, y, radius, sign, row_out):
    """Row ``y`` of ``src`` (Y, X): sign * max over the in-array [x - r, x + r] of sign * v.

    sign = -1 gives the minimum, +1 the maximum. NaN values are skipped; a window with no
    value gives -sign * inf.
    """
    nx = src.shape[1]
    for x in range(nx):
        best = -np.inf
        for xx in range(max(0, x - radius), min(nx, x + radius + 1)):
            v = sign * src[y, xx]
            if v > best:
                best = v
        row_out[x] = sign * best


@njit(cache=True, nogil=True, error_model="numpy")
def window_extreme(src, radius, sign, rows, out):
    """(2r+1)^2 window minimum (sign -1) or maximum (+1) of ``src`` (Y, X) into ``out``.

    Separable: along rows into ``rows`` (Y, X scratch), then down the columns. NaN and
    out-of-array pixels are absent; a window with no value gives NaN, and so does an
    infinite result (``min_filter_nan`` / ``max_filter_nan`` are this kernel).
    """
    ny, nx = src.shape
    for y in range(ny):
        _row_extreme(src, y, radius, sign, rows[y])
    for y in range(ny):
        for x in range(nx):
            best = -np.inf
            for yy in range(max(0, y - radius), min(ny, y + radius + 1)):
                v = sign * rows[yy, x]
                if v > best:
                    best = v
            out[y, x] = sign * best if np.isfinite(best) else np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def box_mean_nan_fit(a, radius, out):
    """Mean over the (2r+1)^2 window of ``a`` (T, Y, X), ignoring non-finite and out-of-array
    pixels, into ``out`` (T, Y, X) float64; NaN where the window holds no finite value.

    The kernel of ``box_mean_nan``; separable row and column sums.
    """
    nt, ny, nx = a.shape
    row_sum = np.empty((ny, nx))
    row_cnt = np.empty((ny, nx))
    for i in range(nt):
        for y in range(ny):
            for x in range(nx):
                s = 0.0
                c = 0.0
                for xx in range(max(0, x - radius), min(nx, x + radius + 1)):
                    v = np.float64(a[i, y, xx])
                    if np.isfinite(v):
                        s += v
                        c += 1.0
                row_sum[y, x] = s
                row_cnt[y, x] = c
        for y in range(ny):
            for x in range(nx):
                s = 0.0
                c = 0.0
                for yy in range(max(0, y - radius), min(ny, y + radius + 1)):
                    s += row_sum[yy, x]
                    c += row_cnt[yy, x]
                out[i, y, x] = s / c if c > 0.0 else np.nan


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
    # one compiled pass (``_smoothstep``), float64 arithmetic, no full-size temporaries
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

    One compiled pass (``box_mean_nan_fit``, separable row and column sums).
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
    pixels (NaN where the window holds no value); compiled (``window_extreme``)."""
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


def spectral_pixels(observed: np.ndarray) -> np.ndarray:
    """(T, B, N) view of reflectance (T, B, ...) for the compiled kernels (N: pixels, 1 if none)."""
    obs = float_array(observed)
    if obs.ndim < 2:
        raise ValueError(f"reflectance must be (T, B, ...) with pixel axes last, got {obs.shape}")
    return obs.reshape(obs.shape[0], obs.shape[1], -1)


def layer_pixels(layer: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    """(T, N) float view of a per-pixel layer of ``shape`` (T, ...); ``ABSENT`` for None."""
    if layer is None:
        return ABSENT
    a = np.asarray(layer)
    try:
        a = np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {a.shape} does not match the pixel layers {shape}"
        ) from None
    return float_array(a).reshape(shape[0], -1)


def per_value_operands(
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


def band_lanes(a: np.ndarray) -> np.ndarray:
    """(B, Y, X) as a C-contiguous float (B, Y * X) view for the compiled per-pixel kernels."""
    a = float_array(a)
    return a.reshape(a.shape[0], -1)


def scl_table(table: dict, column: int, default: float) -> np.ndarray:
    """256-entry lookup table of an SCL evidence table (``column`` of tuple values).

    The compiled kernels index it with the SCL value read as: NaN -> 0 (no data), clipped
    to [0, 255], truncated (``_scl_code``); classes missing from ``table`` get ``default``.
    """
    lut = np.full(256, default, dtype=np.float64)
    for cls, value in table.items():
        lut[int(cls)] = value[column] if isinstance(value, tuple) else value
    return lut
