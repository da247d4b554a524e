"""Scene-level (per date) parameter estimators, run once on a strided pixel sample.

``sample`` arrays are (T, B, N) float32 reflectance (N sampled pixels), NaN = nodata. The
caller draws the sample from GLOBAL pixel indices (every s-th row and column of the whole
cube), so these estimates do not depend on how the cube is chunked.

Limitations
-----------
* One airlight and one gamma per date: a date mixing grey cloud (gamma ~ 0) and blue haze
  (gamma ~ 1-2) gets a compromise gamma; per-region parameters would need a spatial model.
* Gamma is fitted against the clearest other date of each sampled pixel, so it assumes the
  surface did not change much between dates; with a single date it falls back to the scene
  dark object, which is biased by bright surfaces.
"""

from __future__ import annotations

import numpy as np

from ._common import F32, angstrom_exponent, nanmin0, visible_band_mask


def _default_airlight(wavelengths: np.ndarray) -> np.ndarray:
    """Typical L2A reflectance of optically thick water cloud: ~0.8 in the VNIR, lower in SWIR."""
    w = np.asarray(wavelengths, dtype=np.float64)
    return np.interp(w, [400.0, 1000.0, 1610.0, 2190.0], [0.8, 0.75, 0.55, 0.4])


def estimate_dark_object(sample: np.ndarray, percentile: float = 1.0) -> np.ndarray:
    """Scene dark-object reflectance D_b (B,): low percentile of each pixel's temporal minimum.

    The temporal minimum removes most haze (haze only brightens dark surfaces) and the low
    percentile picks the darkest surfaces (water, dense vegetation in the visible). Clipped to
    [0, 0.15].
    """
    tmin = nanmin0(sample, axis=0)  # (B, N)
    out = np.zeros(sample.shape[1], dtype=np.float64)
    for b in range(sample.shape[1]):
        v = tmin[b][np.isfinite(tmin[b])]
        if v.size:
            out[b] = np.percentile(v, percentile)
    return np.clip(out, 0.0, 0.15).astype(F32)


def estimate_airlight(
    sample: np.ndarray,
    wavelengths: np.ndarray,
    *,
    snow: np.ndarray | None = None,
    top_fraction: float = 0.002,
    min_pixels: int = 20,
    min_cloud_reflectance: float = 0.4,
    relative_level: float = 0.85,
    max_nm: float = 700.0,
) -> np.ndarray:
    """Airlight A_b per date (T, B) from the brightest pixels of the haze channel.

    haze channel h = min over visible bands of I_b (cloud is bright in every visible band,
    bright surfaces are usually dark in at least one). For each date take the top
    ``top_fraction`` of valid pixels by h (at least ``min_pixels``), excluding snow
    (``snow`` score > 0.5); A_b = median of I_b over them, and the date's cloud level is the
    median h of those pixels. Only opaque cloud reaches A, and from thin haze alone only the
    product (1 - t) A is identifiable, so a date keeps its own A only if its level reaches
    ``min_cloud_reflectance`` and ``relative_level`` times the brightest date's level; the
    other dates (thin haze only, or clear) take the median A of the dates that keep theirs,
    or a typical thick-cloud spectrum when none does. A_b may exceed 1.
    """
    t, nb, _ = sample.shape
    vis = visible_band_mask(wavelengths, max_nm)
    est = np.full((t, nb), np.nan, dtype=np.float64)
    level = np.full(t, -np.inf)
    for i in range(t):
        x = sample[i].astype(np.float64)
        valid = np.isfinite(x).all(axis=0)
        if snow is not None:
            valid &= ~(snow[i] > 0.5)
        n = int(valid.sum())
        if n < min_pixels:
            continue
        h = x[vis][:, valid].min(axis=0)
        k = max(min_pixels, int(np.ceil(top_fraction * n)))
        top = np.argpartition(h, n - k)[n - k :]
        level[i] = np.median(h[top])
        est[i] = np.median(x[:, valid][:, top], axis=1)
    keep = (level >= min_cloud_reflectance) & (level >= relative_level * level.max())
    fill = np.median(est[keep], axis=0) if keep.any() else _default_airlight(wavelengths)
    out = np.where(keep[:, None], est, fill[None])
    return out.astype(F32)


def fit_clear_line(
    sample: np.ndarray,
    blue: int | None,
    red: int | None,
    clear: np.ndarray,
    min_pixels: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Clear-sky line B04 = s B02 + k per date (T,), fitted by least squares on clear pixels.

    ``clear`` (T, N) bool marks pixels taken as haze-free. NaN slope where the fit is
    impossible or implausible (s outside [0.3, 5]): HOT is then not used for that date.
    """
    t = sample.shape[0]
    slope = np.full(t, np.nan, dtype=np.float64)
    icpt = np.full(t, np.nan, dtype=np.float64)
    if blue is None or red is None:
        return slope.astype(F32), icpt.astype(F32)
    for i in range(t):
        b, r = sample[i, blue].astype(np.float64), sample[i, red].astype(np.float64)
        m = clear[i] & np.isfinite(b) & np.isfinite(r)
        if m.sum() < min_pixels:
            continue
        bm, rm = b[m].mean(), r[m].mean()
        vb = ((b[m] - bm) ** 2).mean()
        if vb < 1e-6:
            continue
        s = ((b[m] - bm) * (r[m] - rm)).mean() / vb
        if 0.3 <= s <= 5.0:
            slope[i], icpt[i] = s, rm - s * bm
    return slope.astype(F32), icpt.astype(F32)


def estimate_gamma(
    sample: np.ndarray,
    airlight: np.ndarray,
    wavelengths: np.ndarray,
    dark: np.ndarray,
    *,
    default: float = 1.0,
    bounds: tuple[float, float] = (0.0, 2.5),
    min_pixels: int = 50,
    tau_range: tuple[float, float] = (0.05, 2.5),
) -> np.ndarray:
    """Angstrom exponent gamma per date (T,), fitted on hazy pixels.

    For each sampled pixel a clear surface estimate J is taken from the date where the pixel is
    darkest in the shortest band (haze brightens the blue most). On date i the model gives
    t_b = (A_b - I_b) / (A_b - J_b), tau_b = -log t_b, and the Angstrom law
    log tau_b = log tau_ref + gamma * log(lambda_ref / lambda_b): gamma is the slope of
    log(-log t_b) against log(lambda_ref / lambda_b). The slope is fitted per pixel (bands with
    tau_b > 0.01, pixel demeaned) on pixels with tau_ref in ``tau_range`` (hazy, not opaque),
    and the per-date gamma is the median over pixels, clipped to ``bounds``. Dates without
    enough hazy pixels (e.g. clear dates, where gamma does not matter) get ``default``. A
    single-date stack uses the scene dark object as J, on bands below 1000 nm.
    """
    t, nb, n = sample.shape
    x = np.log(angstrom_exponent(wavelengths, 1.0))  # log(lambda_ref / lambda_b), (B,)
    ref = int(np.argmin(wavelengths))
    x64 = sample.astype(np.float64)
    short = np.where(np.isfinite(x64[:, ref]), x64[:, ref], np.inf)  # (T, N)
    clearest = np.argmin(short, axis=0)  # (N,)
    j_temporal = np.take_along_axis(x64, clearest[None, None, :].repeat(nb, 1), axis=0)[0]
    gammas = np.full(t, np.nan, dtype=np.float64)

    def fit(i: int, j: np.ndarray, usable: np.ndarray) -> float | None:
        a = np.asarray(airlight[i], dtype=np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (a - x64[i]) / (a - j)
            tau = -np.log(ratio)
        tau_ref = tau[ref]
        good_px = usable & (tau_ref > tau_range[0]) & (tau_ref < tau_range[1])
        m = np.isfinite(tau) & (tau > 0.01) & (a - j > 0.05) & good_px[None, :]
        cnt = m.sum(axis=0)
        y = np.where(m, np.log(np.where(m, tau, 1.0)), 0.0)
        xb = np.where(m, x[:, None], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            xm = xb.sum(axis=0) / cnt
            ym = y.sum(axis=0) / cnt
            sxx = (np.where(m, (x[:, None] - xm) ** 2, 0.0)).sum(axis=0)
            sxy = (np.where(m, (x[:, None] - xm) * (y - ym), 0.0)).sum(axis=0)
        ok = (cnt >= 2) & (sxx > 0.01)
        if ok.sum() < min_pixels:
            return None
        return float(np.median(sxy[ok] / sxx[ok]))

    vis = visible_band_mask(wavelengths, 1000.0)
    j_dark = np.broadcast_to(np.asarray(dark, np.float64)[:, None], (nb, n)).copy()
    j_dark[~vis] = np.nan  # bright NIR/SWIR surfaces would read as haze against D
    for i in range(t):
        if t > 1:
            g = fit(i, j_temporal, clearest != i)
        else:
            g = fit(i, j_dark, np.ones(n, dtype=bool))
        gammas[i] = default if g is None else g
    return np.clip(gammas, *bounds).astype(F32)
