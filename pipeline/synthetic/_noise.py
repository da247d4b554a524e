"""Smooth random fields by spectral synthesis (pure numpy, no xarray).

A fractal (1/f^beta power spectrum) field is white Gaussian noise filtered in the Fourier domain by
``|k| ** (-beta / 2)``. beta about 2 gives rough, "billowy" texture (cumulus tops, soil texture);
beta 3-4 gives the smooth, large-scale variations of haze layers and terrain. This is the standard
way cloud-removal papers simulate thin cloud (e.g. the fractal "Perlin-like" transmission maps of
RICE / SEN12MS-CR-style simulators). The field is periodic across the image edges, which the cloud
shadow code uses: rolling the cloud field by the shadow offset stays self-consistent.
"""

from __future__ import annotations

import numpy as np


def fractal_noise(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    beta: float = 3.0,
    min_period_px: float = 2.0,
    max_period_px: float | None = None,
    anisotropy: float = 1.0,
) -> np.ndarray:
    """A (H, W) float32 field with power spectrum ~ 1/|k|^beta, zero mean, unit std.

    ``min_period_px`` removes detail finer than that many pixels; ``max_period_px`` caps the
    largest structures (default: the image size). ``anisotropy`` > 1 stretches features along x.
    """
    h, w = int(shape[0]), int(shape[1])
    white = rng.standard_normal((h, w))
    spec = np.fft.rfft2(white)
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :] * float(anisotropy)
    k = np.sqrt(ky * ky + kx * kx)
    k_min = 1.0 / float(max_period_px if max_period_px else max(h, w))
    k_eff = np.maximum(k, k_min)
    amp = k_eff ** (-beta / 2.0)
    amp[k > 1.0 / float(min_period_px)] = 0.0
    amp[0, 0] = 0.0
    field = np.fft.irfft2(spec * amp, s=(h, w))
    std = field.std()
    if std > 0:
        field = (field - field.mean()) / std
    return field.astype(np.float32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Hermite ramp 3x^2 - 2x^3 of x clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def threshold_for_fraction(
    field: np.ndarray, fraction: float, where: np.ndarray | None = None
) -> float:
    """Threshold ``thr`` such that ``field > thr`` covers ``fraction`` of (the ``where`` part of) the field."""
    values = field[where] if where is not None else field.ravel()
    if values.size == 0 or fraction <= 0:
        return float("inf")
    if fraction >= 1:
        return float("-inf")
    k = int(round((1.0 - fraction) * values.size))
    if k >= values.size:
        return float("inf")
    # partition is O(n): the k-th smallest value; field > kth covers size - k - 1 (+ties) values
    kth = np.partition(values, k - 1)[k - 1] if k > 0 else np.nextafter(values.min(), -np.inf)
    return float(kth)
