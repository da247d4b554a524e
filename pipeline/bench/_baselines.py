"""Peer methods the benchmark compares against (DESIGN.md section 5).

Each is a pure function ``(cloudy (T, B, Y, X), target, days (T,), **kw) -> (B, Y, X)``
restoring date ``target``; vectorised numpy / scipy, NaN = nodata.

Visible bands (for the cloud test and the dark channel): the bands with a wavelength in
[400, 700] nm when ``wavelengths_nm`` is given, else the first three bands (the
``DEFAULT_BANDS`` order B02, B03, B04).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import binary_dilation, minimum_filter, uniform_filter

#: clear test defaults (see ``clear_test``)
CLOUD_BRIGHTNESS = 0.2
CLOUD_WHITENESS = 0.7
#: two-stage hard thresholds
THICK_BRIGHTNESS = 0.45
THIN_T = 0.85


def _visible(n_bands: int, wavelengths_nm) -> np.ndarray:
    if wavelengths_nm is None:
        return np.arange(min(3, n_bands))
    wl = np.asarray(wavelengths_nm, dtype="float64")
    idx = np.flatnonzero((wl >= 400) & (wl <= 700))
    return idx if idx.size else np.arange(min(3, n_bands))


def _brightness_whiteness(vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """vis (..., V, Y, X) -> mean visible reflectance and Fmask whiteness."""
    mean = vis.mean(axis=-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        white = np.abs(vis - mean[..., None, :, :]).sum(axis=-3) / (vis.shape[-3] * mean)
    return mean, white


def clear_test(
    cloudy: np.ndarray,
    *,
    wavelengths_nm=None,
    brightness: float = CLOUD_BRIGHTNESS,
    whiteness: float = CLOUD_WHITENESS,
) -> np.ndarray:
    """Simple per-pixel cloud test, (T, B, Y, X) -> clear (T, Y, X) bool.

    A pixel is cloudy when its mean visible reflectance exceeds ``brightness`` (0.2) AND it
    is white: Fmask whiteness mean_b |v_b - m| / m over the visible bands below ``whiteness``
    (0.7). Pixels with any NaN band are not clear. Shadows are not tested (as in most
    tutorials)."""
    x = np.asarray(cloudy, dtype="float64")
    vis = x[:, _visible(x.shape[1], wavelengths_nm)]
    mean, white = _brightness_whiteness(vis)
    cloud = (mean > brightness) & (white < whiteness)
    return ~cloud & np.isfinite(x).all(axis=1)


def _nearest_other(x, target, days, clear):
    """Value from the temporally nearest clear date other than ``target`` and where one exists."""
    days = np.asarray(days, dtype="float64")
    dist = np.abs(days - days[target])
    dist[target] = np.inf
    cost = np.where(clear, dist[:, None, None], np.inf)
    idx = np.argmin(cost, axis=0)
    found = np.isfinite(np.take_along_axis(cost, idx[None], axis=0)[0])
    pick = np.take_along_axis(x, idx[None, None], axis=0)[0]
    return pick, found


def nearest_clear_date(cloudy, target: int, days, **kw) -> np.ndarray:
    """Target pixel if clear, else the value from the temporally nearest OTHER clear date
    (``clear_test``; ties go to the earlier index); no clear date -> the target value.
    kw: passed to ``clear_test``."""
    x = np.asarray(cloudy, dtype="float32")
    clear = clear_test(x, **kw)
    pick, found = _nearest_other(x, target, days, clear)
    use = found & ~clear[target]
    return np.where(use[None], pick, x[target]).astype("float32")


def masked_median(cloudy, target: int, days=None, **kw) -> np.ndarray:
    """Per-pixel median over all dates (target included) of the pixels passing ``clear_test``;
    no clear date -> the target value. ``days`` is unused (same signature as the others)."""
    x = np.asarray(cloudy, dtype="float32")
    clear = np.asarray(clear_test(x, **kw), dtype=bool)
    masked = np.where(clear[:, None], x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(masked, axis=0)
    any_clear: np.ndarray = np.asarray(clear.any(axis=0))
    return np.where(any_clear[None], med, x[target]).astype("float32")


def _guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    size = 2 * radius + 1
    mean_i = uniform_filter(guide, size, mode="nearest")
    mean_p = uniform_filter(src, size, mode="nearest")
    cov = uniform_filter(guide * src, size, mode="nearest") - mean_i * mean_p
    var = uniform_filter(guide * guide, size, mode="nearest") - mean_i**2
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return uniform_filter(a, size, mode="nearest") * guide + uniform_filter(b, size, mode="nearest")


def _dark_channel_parts(img, vis, patch, omega, airlight, refine_radius, refine_eps):
    """img (B, Y, X) float64 NaN-free -> (A (B,), refined t (Y, X))."""
    dark = minimum_filter(img[vis].min(axis=0), size=patch, mode="nearest")
    if airlight is None:
        n = max(1, int(round(0.001 * dark.size)))
        top = np.argpartition(dark.ravel(), -n)[-n:]
        airlight = img.reshape(img.shape[0], -1)[:, top].mean(axis=1)
    a = np.maximum(np.asarray(airlight, dtype="float64"), 1e-6)
    norm = img[vis] / a[vis, None, None]
    t = 1.0 - omega * minimum_filter(norm.min(axis=0), size=patch, mode="nearest")
    if refine_radius > 0:
        t = _guided_filter(img[vis].mean(axis=0), t, refine_radius, refine_eps)
    return a, np.clip(t, 0.0, 1.0)


def dark_channel_dehaze(
    cloudy,
    target: int,
    days=None,
    *,
    wavelengths_nm=None,
    patch: int = 15,
    omega: float = 0.95,
    t_min: float = 0.1,
    airlight=None,
    refine_radius: int = 30,
    refine_eps: float = 1e-3,
) -> np.ndarray:
    """He et al. (2009) dark channel prior on the target date alone.

    dark = patch minimum (``patch`` px box) of the minimum over visible bands; A per band =
    mean of the target pixels in the brightest 0.1 % of the dark channel (or ``airlight``);
    t = 1 - omega * dark(I / A), refined by a grey-guided filter (He et al. 2013; radius
    ``refine_radius``, 0 = off); J = (I - A) / max(t, t_min) + A, the same t for every band
    (the method is wavelength agnostic). NaN pixels stay NaN."""
    img = np.asarray(cloudy, dtype="float64")[target]
    nan = ~np.isfinite(img).all(axis=0)
    filled = np.where(nan[None], 1.0, img)
    vis = _visible(img.shape[0], wavelengths_nm)
    a, t = _dark_channel_parts(filled, vis, patch, omega, airlight, refine_radius, refine_eps)
    out = (img - a[:, None, None]) / np.maximum(t, t_min)[None] + a[:, None, None]
    return np.where(nan[None], np.nan, out).astype("float32")


def two_stage(
    cloudy,
    target: int,
    days,
    *,
    wavelengths_nm=None,
    thick_brightness: float = THICK_BRIGHTNESS,
    whiteness: float = CLOUD_WHITENESS,
    thin_t: float = THIN_T,
    buffer: int = 1,
    patch: int = 15,
    omega: float = 0.95,
    t_min: float = 0.1,
    refine_radius: int = 30,
) -> np.ndarray:
    """Hard-mask two-stage pipeline (the approach the paper argues against).

    1. classify the target pixels with hard thresholds: thick = mean visible >
       ``thick_brightness`` (0.45) and whiteness < ``whiteness`` (0.7), dilated by ``buffer``
       px; thin = not thick and dark-channel transmission < ``thin_t`` (0.85); else clear;
    2. thin pixels: the ``dark_channel_dehaze`` result;
    3. thick pixels: ``nearest_clear_date`` (another date passing ``clear_test``); if none is
       clear there, the dehazed value;
    4. clear pixels: unchanged."""
    x = np.asarray(cloudy, dtype="float64")
    img = x[target]
    nan = ~np.isfinite(img).all(axis=0)
    filled = np.where(nan[None], 1.0, img)
    vis = _visible(img.shape[0], wavelengths_nm)
    mean, white = _brightness_whiteness(filled[vis])
    thick = (mean > thick_brightness) & (white < whiteness)
    if buffer > 0 and thick.any():
        thick = binary_dilation(thick, np.ones((3, 3), bool), iterations=buffer)
    a, t = _dark_channel_parts(filled, vis, patch, omega, None, refine_radius, 1e-3)
    thin = ~thick & (t < thin_t)
    dehazed = (img - a[:, None, None]) / np.maximum(t, t_min)[None] + a[:, None, None]
    pick, found = _nearest_other(x, target, days, clear_test(x, wavelengths_nm=wavelengths_nm))
    fill = np.where(found[None], pick, dehazed)
    out = np.where(thin[None], dehazed, img)
    out = np.where(thick[None], fill, out)
    return out.astype("float32")
