"""Compiled (numba) passes of the csmask evidence source: cell means and the upsampling.

Both run once over the block's pixels where numpy needs many full-size temporaries (NaN
masks, counts, gathers for the bilinear step). Conventions as in ``pipeline.kernels._common``:
``cache=True``, ``nogil=True`` (Dask threads run them at once), not ``parallel``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def cell_means(
    data: np.ndarray,
    band_index: np.ndarray,
    first_row: int,
    first_col: int,
    ncells_y: int,
    ncells_x: int,
    scale: int,
) -> np.ndarray:
    """(T, C, Cy, Cx) float32 means of ``scale`` x ``scale`` pixel cells of chosen bands.

    data (T, B, Y, X); band_index (C,) picks and orders the bands; cell (i, j) covers block
    rows first_row + i scale .. + scale - 1 (cut at the block's end, which for a complete
    cell is the array's end), likewise columns. NaN pixels are left out; a cell without any
    finite value is NaN.
    """
    ntime = data.shape[0]
    ny, nx = data.shape[2], data.shape[3]
    nb = band_index.shape[0]
    out = np.empty((ntime, nb, ncells_y, ncells_x), dtype=np.float32)
    for t in range(ntime):
        for c in range(nb):
            b = band_index[c]
            for i in range(ncells_y):
                r0 = first_row + i * scale
                r1 = min(r0 + scale, ny)
                for j in range(ncells_x):
                    c0 = first_col + j * scale
                    c1 = min(c0 + scale, nx)
                    total = 0.0
                    count = 0
                    for r in range(r0, r1):
                        for q in range(c0, c1):
                            v = data[t, b, r, q]
                            if v == v:
                                total += v
                                count += 1
                    out[t, c, i, j] = total / count if count > 0 else np.nan
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def upsample_masked(
    values: np.ndarray,
    has_value: np.ndarray,
    ylo: np.ndarray,
    yhi: np.ndarray,
    wy: np.ndarray,
    xlo: np.ndarray,
    xhi: np.ndarray,
    wx: np.ndarray,
    data: np.ndarray,
    band_index: np.ndarray,
) -> np.ndarray:
    """(T, L, Y, X) float32 bilinear interpolation of (T, L, Cy, Cx) cell values to pixels.

    Per pixel the four cells (ylo|yhi, xlo|xhi) with weights from (wy, wx); cells without a
    value (``has_value`` False) are left out and the others' weights re-normalised (NaN where
    none has one). Pixels where any band of ``band_index`` in ``data`` is NaN are NaN.
    """
    ntime, nlab = values.shape[0], values.shape[1]
    ny, nx = ylo.shape[0], xlo.shape[0]
    nb = band_index.shape[0]
    out = np.empty((ntime, nlab, ny, nx), dtype=np.float32)
    for t in range(ntime):
        for y in range(ny):
            a, b, fy = ylo[y], yhi[y], wy[y]
            for x in range(nx):
                observed = True
                for k in range(nb):
                    v = data[t, band_index[k], y, x]
                    if v != v:
                        observed = False
                        break
                c, d, fx = xlo[x], xhi[x], wx[x]
                w00 = (1.0 - fy) * (1.0 - fx) if has_value[t, a, c] else 0.0
                w01 = (1.0 - fy) * fx if has_value[t, a, d] else 0.0
                w10 = fy * (1.0 - fx) if has_value[t, b, c] else 0.0
                w11 = fy * fx if has_value[t, b, d] else 0.0
                den = w00 + w01 + w10 + w11
                if not observed or den <= 1e-6:
                    for lab in range(nlab):
                        out[t, lab, y, x] = np.nan
                    continue
                for lab in range(nlab):
                    acc = 0.0
                    if w00 > 0.0:
                        acc += w00 * values[t, lab, a, c]
                    if w01 > 0.0:
                        acc += w01 * values[t, lab, a, d]
                    if w10 > 0.0:
                        acc += w10 * values[t, lab, b, c]
                    if w11 > 0.0:
                        acc += w11 * values[t, lab, b, d]
                    out[t, lab, y, x] = acc / den
    return out
