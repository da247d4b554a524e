"""Restoration metrics against known truth (DESIGN.md section 5).

All metrics work on reflectance clipped to [0, 1], as in the cloud-removal literature, on
arrays shaped (bands, y, x) with an optional boolean pixel mask (y, x). Pixels that are NaN
in either array are left out (and counted, so a table can say how many were scored).

- RMSE, MAE over every (band, pixel) value;
- PSNR = 20 log10(1 / RMSE) from the global RMSE (not a mean of per-image PSNRs);
- SAM: mean spectral angle in degrees between the truth and estimate spectra;
- SSIM: Wang et al. (2004), Gaussian window sigma 1.5, data range 1, averaged over bands;
  on a mask it is the mean of the SSIM map over the masked pixels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.ndimage import gaussian_filter


def _prepare(truth: np.ndarray, estimate: np.ndarray, mask: np.ndarray | None):
    truth = np.asarray(truth, dtype="float64")
    estimate = np.asarray(estimate, dtype="float64")
    if truth.shape != estimate.shape or truth.ndim != 3:
        raise ValueError(
            f"truth {truth.shape} and estimate {estimate.shape} must both be (bands, y, x)"
        )
    valid = np.isfinite(truth).all(axis=0) & np.isfinite(estimate).all(axis=0)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    return np.clip(truth, 0, 1), np.clip(estimate, 0, 1), valid


def rmse(truth, estimate, mask=None) -> float:
    t, e, valid = _prepare(truth, estimate, mask)
    if not valid.any():
        return float("nan")
    return float(np.sqrt(np.mean((t[:, valid] - e[:, valid]) ** 2)))


def mae(truth, estimate, mask=None) -> float:
    t, e, valid = _prepare(truth, estimate, mask)
    if not valid.any():
        return float("nan")
    return float(np.mean(np.abs(t[:, valid] - e[:, valid])))


def psnr(truth, estimate, mask=None) -> float:
    err = rmse(truth, estimate, mask)
    if np.isnan(err):
        return float("nan")
    return float("inf") if err == 0 else float(20 * np.log10(1.0 / err))


def sam(truth, estimate, mask=None) -> float:
    """Mean spectral angle (degrees); pixels with a zero spectrum are skipped."""
    t, e, valid = _prepare(truth, estimate, mask)
    tv, ev = t[:, valid], e[:, valid]
    norms = np.linalg.norm(tv, axis=0) * np.linalg.norm(ev, axis=0)
    ok = norms > 0
    if not ok.any():
        return float("nan")
    cos = np.clip((tv[:, ok] * ev[:, ok]).sum(axis=0) / norms[ok], -1, 1)
    return float(np.degrees(np.arccos(cos)).mean())


def ssim_map(truth, estimate, *, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel SSIM (y, x), averaged over bands; NaN where either input is NaN."""
    t, e, _ = _prepare(truth, estimate, None)
    c1, c2 = 0.01**2, 0.03**2
    # NaN pixels would spread through the filter: fill them with the truth (zero error there).
    finite = np.isfinite(truth).all(axis=0) & np.isfinite(estimate).all(axis=0)
    t = np.where(finite, t, 0.0)
    e = np.where(finite, e, t)
    total = np.zeros(t.shape[1:], dtype="float64")
    for tb, eb in zip(t, e, strict=True):
        mu_t, mu_e = gaussian_filter(tb, sigma), gaussian_filter(eb, sigma)
        var_t = gaussian_filter(tb * tb, sigma) - mu_t**2
        var_e = gaussian_filter(eb * eb, sigma) - mu_e**2
        cov = gaussian_filter(tb * eb, sigma) - mu_t * mu_e
        total += (
            (2 * mu_t * mu_e + c1)
            * (2 * cov + c2)
            / ((mu_t**2 + mu_e**2 + c1) * (var_t + var_e + c2))
        )
    return np.where(finite, total / len(t), np.nan)


def ssim(truth, estimate, mask=None, *, sigma: float = 1.5) -> float:
    _, _, valid = _prepare(truth, estimate, mask)
    if not valid.any():
        return float("nan")
    return float(np.mean(ssim_map(truth, estimate, sigma=sigma)[valid]))


def score(truth, estimate, masks: Mapping[str, np.ndarray | None]) -> dict[str, dict[str, float]]:
    """{mask name: {psnr, ssim, sam, rmse, mae, pixels}} for each named pixel set."""
    smap = ssim_map(truth, estimate)  # once: the Gaussian filters dominate the cost
    out = {}
    for name, mask in masks.items():
        _, _, valid = _prepare(truth, estimate, mask)
        out[name] = {
            "psnr": psnr(truth, estimate, mask),
            "ssim": float(np.mean(smap[valid])) if valid.any() else float("nan"),
            "sam": sam(truth, estimate, mask),
            "rmse": rmse(truth, estimate, mask),
            "mae": mae(truth, estimate, mask),
            "pixels": int(valid.sum()),
        }
    return out


def format_table(scores: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """A fixed-width table of ``score`` output, one row per pixel set."""
    cols = ("pixels", "psnr", "ssim", "sam", "rmse", "mae")
    head = f"{'pixels set':<12}" + "".join(f"{c:>10}" for c in cols)
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    for name, row in scores.items():
        cells = [f"{int(row['pixels']):>10d}"]
        for c in cols[1:]:
            v = row[c]
            cells.append(f"{v:>10.4f}" if c in ("ssim", "rmse", "mae") else f"{v:>10.2f}")
        lines.append(f"{name:<12}" + "".join(cells))
    return "\n".join(lines)
