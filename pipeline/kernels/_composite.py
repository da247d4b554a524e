"""Composite kernel: one quality-weighted, outlier-robust value per pixel over a set of dates.

Limitations
-----------
* Robust weights come from the spectral distance to the running weighted mean (an iterated
  Cauchy M-estimator); with only two conflicting dates nothing can tell which one is right,
  the quality weights decide.
* Filled pixels (gate ~ 0) repeat another date's observation; their floor weight keeps them
  from dominating but a filled pixel may carry a value from outside the period
  (``reference_days`` of the restored stack says from when).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._common import F32


class CompositeResult(NamedTuple):
    values: np.ndarray  # (B, Y, X) float32
    confidence: np.ndarray  # (Y, X) float32
    observation_count: np.ndarray  # (Y, X) uint16: dates with a restored value
    direct_count: np.ndarray  # (Y, X) uint16: dates mostly from their own observation
    no_valid_observation: np.ndarray  # (Y, X) uint8


def composite_block(
    values: np.ndarray,
    confidence: np.ndarray | None = None,
    gate: np.ndarray | None = None,
    *,
    floor_weight: float = 1e-3,
    iterations: int = 3,
    scale_floor: float = 0.02,
    cauchy_k: float = 2.0,
) -> CompositeResult:
    """Reduce (T, B, Y, X) restored values to (B, Y, X).

    Weight of date t: w_t = c_t g_t + floor_weight (direct, confident observations first;
    dates filled from a reference count only when nothing better exists). Then an iterated
    Cauchy M-estimate with the same weight for every band (keeps spectra consistent):
    mu = sum w_t u_t x_t / sum w_t u_t, u_t = 1 / (1 + (r_t / (k s))^2), r_t the RMS over
    bands of x_t - mu, s = max(weighted RMS of r, scale_floor). Composite confidence is the
    final weighted mean of c_t. NaN and the no-valid flag where no date has a value.
    """
    x = np.asarray(values, dtype=np.float64)
    nt = x.shape[0]
    shape = x.shape[2:]
    c = np.ones((nt,) + shape) if confidence is None else np.asarray(confidence, np.float64)
    g = np.ones((nt,) + shape) if gate is None else np.asarray(gate, np.float64)
    c = np.nan_to_num(c, nan=0.0)
    g = np.nan_to_num(g, nan=0.0)
    has: np.ndarray = np.asarray(np.isfinite(x).all(axis=1))  # (T, Y, X)
    w = np.where(has, c * g + floor_weight, 0.0)
    xz = np.where(has[:, None], x, 0.0)
    none: np.ndarray = np.asarray(~has.any(axis=0))
    u = np.ones_like(w)
    for _ in range(max(iterations, 0) + 1):
        wu = w * u
        den = wu.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = (wu[:, None] * xz).sum(axis=0) / den
        r = np.sqrt(((xz - mu[None]) ** 2).mean(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.sqrt((wu * r * r).sum(axis=0) / den)
        s = np.maximum(np.nan_to_num(s, nan=scale_floor), scale_floor)
        u = np.nan_to_num(1.0 / (1.0 + (r / (cauchy_k * s)) ** 2), nan=0.0)
    mu[:, none] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = (wu * c).sum(axis=0) / den
    conf = np.where(none, 0.0, conf)
    return CompositeResult(
        mu.astype(F32),
        np.clip(conf, 0, 1).astype(F32),
        has.sum(axis=0).astype(np.uint16),
        (has & (g >= 0.5)).sum(axis=0).astype(np.uint16),
        none.astype(np.uint8),
    )
