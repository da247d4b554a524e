"""Extra restoration metrics for the benchmark (DESIGN.md section 5)."""

from __future__ import annotations

import numpy as np


def _grad_mag(img: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(img, axis=(-2, -1))
    return np.hypot(gy, gx)


def seam_error(truth: np.ndarray, estimate: np.ndarray, boundary_mask: np.ndarray) -> float:
    """Seam error at cloud boundaries.

    Mean absolute difference of the spatial gradient magnitude (central differences,
    ``np.gradient``, per band) between estimate and truth, averaged over bands and over the
    boundary pixels (e.g. ``boundary_mask(thin | thick | shadow, width=2)``). Inputs are
    (B, Y, X) reflectance, clipped to [0, 1] as in ``pipeline.metrics``; pixels NaN in either
    image are left out. 0 for identical images; NaN when no boundary pixel is valid.
    """
    t = np.clip(np.asarray(truth, dtype="float64"), 0, 1)
    e = np.clip(np.asarray(estimate, dtype="float64"), 0, 1)
    if t.shape != e.shape or t.ndim != 3:
        raise ValueError(f"truth {t.shape} and estimate {e.shape} must both be (bands, y, x)")
    diff = np.abs(_grad_mag(e) - _grad_mag(t))
    valid = np.asarray(boundary_mask, dtype=bool) & np.isfinite(diff).all(axis=0)
    if not valid.any():
        return float("nan")
    return float(diff[:, valid].mean())
