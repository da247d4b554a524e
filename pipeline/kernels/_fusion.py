"""Soft-gated fusion of the physical inversion with the harmonised temporal reference.

    J_out = g(c) J_phys + (1 - g(c)) R,   g(c) = S(c; gate_low, gate_high)   (smoothstep)

Limitations
-----------
* The temporal shadow cue compares brightness with the reference only; a real surface change
  to darker (burn scar, flooding) is also handed to the reference. Cloud-shadow geometry
  (projection of detected clouds along the sun azimuth) would make it specific.
* A pixel with no reference and a low confidence is flagged and set to NaN rather than
  inpainted spatially.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from ._common import F32, smoothstep
from ._reference import (
    harmonise_local,
    reference_quality,
    smoothed_quality,
    spectral_consistency,
)


@dataclass(frozen=True)
class FusionConfig:
    """Settings of the reference choice, harmonisation and gate (frozen, tokenizable).

    gate_low, gate_high: confidence where the gate starts to open / is fully open.
    min_confidence_without_reference: below it a pixel with no reference is flagged, NaN.
    reference_min_quality: least q = c * t of a date to serve as a reference at a pixel.
    time_scale_days: e-folding time of the closeness-in-time factor exp(-|dt| / scale).
    max_candidates: the reference is sought among this many dates nearest in time.
    consistency_sigma: reflectance RMS scale of the spectral-consistency factor.
    reference_smooth_radius: window radius (px) of the quality smoothing for the choice.
    harmonise_radius: window radius (px) of the local gain/offset fit.
    harmonise_shrink_pixels, harmonise_ridge: fallback strength toward the global fit.
    shadow_ratio_low, shadow_ratio_high: brightness ratio J / R below which the pixel is
        taken as shadowed (confidence scaled down smoothly between the two).
    """

    gate_low: float = 0.2
    gate_high: float = 0.7
    min_confidence_without_reference: float = 0.1
    reference_min_quality: float = 0.5
    time_scale_days: float = 30.0
    max_candidates: int = 8
    consistency_sigma: float = 0.05
    reference_smooth_radius: int = 3
    harmonise_radius: int = 12
    harmonise_shrink_pixels: float = 30.0
    harmonise_ridge: float = 4e-3
    shadow_ratio_low: float = 0.5
    shadow_ratio_high: float = 0.85

    def __post_init__(self) -> None:
        if not 0.0 <= self.gate_low < self.gate_high <= 1.0:
            raise ValueError(
                f"FusionConfig needs 0 <= gate_low < gate_high <= 1, got {self.gate_low}, "
                f"{self.gate_high}"
            )
        if self.max_candidates < 1:
            raise ValueError("FusionConfig.max_candidates must be >= 1")
        if self.reference_smooth_radius < 0 or self.harmonise_radius < 0:
            raise ValueError("FusionConfig radii must be >= 0")

    @property
    def halo(self) -> int:
        """Spatial radius (px) the fusion step reads around each output pixel."""
        return max(self.reference_smooth_radius, self.harmonise_radius)

    def params(self) -> dict:
        return asdict(self)


class FusionResult(NamedTuple):
    output: np.ndarray  # (T, B, Y, X) float32
    confidence: np.ndarray  # (T, Y, X) float32
    gate: np.ndarray  # (T, Y, X) float32
    reference_days: np.ndarray  # (T, Y, X) float32, NaN = no reference
    no_valid_observation: np.ndarray  # (T, Y, X) uint8


def gate(confidence: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """g(c) = S(c; gate_low, gate_high): weight of the physical inversion, C1-smooth in c."""
    return smoothstep(confidence, cfg.gate_low, cfg.gate_high)


def _darkening(target: np.ndarray, reference: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """Shadow evidence 1 - S(rho; low, high), rho = sum_b target / sum_b reference (0 if unknown)."""
    both = np.isfinite(target) & np.isfinite(reference)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(both, target, 0.0).sum(0) / np.where(both, reference, 0.0).sum(0)
    dark = 1.0 - smoothstep(rho, cfg.shadow_ratio_low, cfg.shadow_ratio_high)
    return np.where(np.isfinite(dark) & both.any(0), dark, 0.0)


def _agreement(
    target: np.ndarray, source: np.ndarray, gain: np.ndarray, offset: np.ndarray, cfg: FusionConfig
) -> np.ndarray:
    """Robust pre-weight of the harmonisation fit: pixels where the two dates disagree.

    With the scene-level map R0 = g0 J_j + o0: w = (1 - darkening(J_i, R0)) / (1 + (d / s)^2),
    d = RMS_b(J_i - R0), s = 2 * consistency_sigma. Shadow, residual cloud and surface
    change on either date then do not bend the local fit.
    """
    r0 = gain[:, None, None] * source + offset[:, None, None]
    diff = target - r0
    fin = np.isfinite(diff)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.sqrt(np.where(fin, diff * diff, 0.0).sum(0) / fin.sum(0))
    w = 1.0 / (1.0 + (d / (2.0 * cfg.consistency_sigma)) ** 2)
    w = w * (1.0 - _darkening(target, r0, cfg))
    return np.where(np.isfinite(w), w, 0.0)


def fuse_dates(
    observed: np.ndarray,
    surface: np.ndarray,
    t_ref: np.ndarray,
    confidence: np.ndarray,
    days: np.ndarray,
    pair_gain: np.ndarray,
    pair_offset: np.ndarray,
    cfg: FusionConfig,
) -> FusionResult:
    """Per-pixel temporal reference, harmonisation and soft-gated fusion for one block.

    observed, surface: (T, B, Y, X) input I and physical inversion J_phys; t_ref, confidence:
    (T, Y, X) from the prior; days: (T,) float days; pair_gain/offset: (T, T, B) scene-level
    map of date j onto date i (fallback of the local fit).

    For every target date i and pixel:

    1. candidates: the ``max_candidates`` other dates nearest in time where the pixel is
       observed with quality q_j = c_j t_j >= ``reference_min_quality``;
    2. score_j = qbar_j * exp(-|d_j - d_i| / time_scale) * consistency_j, qbar the box-mean
       of q (coherent choices), consistency = ``spectral_consistency``; best j wins (scores
       rounded to 1e-6 and ties broken toward the nearest date, so the choice is stable);
    3. R = g_ij J_j + o_ij with the local gain/offset of ``harmonise_local`` fitted on pixels
       clear in both dates (weights (q_i q_j)^2, emphasising the clearest pixels, times the
       robust ``_agreement`` pre-weight);
    4. shadow cue: rho = sum_b J_i / sum_b R; c_i *= 1 - q_j (1 - S(rho; low, high));
    5. J_out = g(c) J_phys + (1 - g(c)) R. Without a reference J_out = J_phys (gate 1) if
       c >= ``min_confidence_without_reference``, else NaN with the no-valid-observation flag;
       an unobserved target pixel with a reference gets R (gate 0).
    """
    obs = np.asarray(observed)
    nt, nb = obs.shape[:2]
    days = np.asarray(days, dtype=np.float64)
    j64 = np.asarray(surface, dtype=np.float64)
    valid = np.isfinite(obs).any(axis=1)
    q = np.where(valid, reference_quality(t_ref, confidence), 0.0)
    eligible = valid & (q >= cfg.reference_min_quality)
    cons = spectral_consistency(j64, eligible, cfg.consistency_sigma)
    base = smoothed_quality(q, cfg.reference_smooth_radius) * cons * eligible

    out = np.full(obs.shape, np.nan, dtype=F32)
    conf_out = np.zeros((nt,) + obs.shape[2:], dtype=F32)
    gate_out = np.zeros_like(conf_out)
    ref_days = np.full_like(conf_out, np.nan)
    flag = np.zeros(conf_out.shape, dtype=np.uint8)

    for i in range(nt):
        dt = days - days[i]
        order = [j for j in np.argsort(np.abs(dt), kind="stable") if j != i]
        cand = np.asarray(order[: cfg.max_candidates], dtype=np.intp)
        reference = np.full((nb,) + obs.shape[2:], np.nan)
        has = np.zeros(obs.shape[2:], dtype=bool)
        q_ref = np.zeros(obs.shape[2:])
        if cand.size:
            score = base[cand] * np.exp(-np.abs(dt[cand]) / cfg.time_scale_days)[:, None, None]
            score = np.round(score, 6)
            best = np.argmax(score, axis=0)
            has = np.take_along_axis(score, best[None], 0)[0] > 0
            jstar = cand[best]
            q_ref = np.where(has, np.take_along_axis(q, jstar[None], 0)[0], 0.0)
            ref_days[i] = np.where(has, dt[jstar], np.nan)
            for j in np.unique(jstar[has]):
                m = has & (jstar == j)
                g, o = harmonise_local(
                    j64[i],
                    j64[j],
                    (q[i] * q[j]) ** 2
                    * _agreement(j64[i], j64[j], pair_gain[i, j], pair_offset[i, j], cfg),
                    cfg.harmonise_radius,
                    pair_gain[i, j],
                    pair_offset[i, j],
                    ridge=cfg.harmonise_ridge,
                    shrink_pixels=cfg.harmonise_shrink_pixels,
                )
                reference[:, m] = (g * j64[j] + o)[:, m]

        ji = j64[i]
        dark = _darkening(ji, reference, cfg)
        c = np.asarray(confidence[i], np.float64) * (1.0 - dark * q_ref)
        c = np.where(valid[i], c, 0.0)
        g = gate(c, cfg)
        g = np.where(has, np.where(valid[i], g, 0.0), 1.0)
        blend = g * ji + (1.0 - g) * reference
        res = np.where(np.isnan(ji), reference, np.where(np.isnan(reference), ji, blend))
        bad = ~has & (~valid[i] | (c < cfg.min_confidence_without_reference))
        res[:, bad] = np.nan
        g = np.where(bad, 0.0, g)
        out[i] = res
        conf_out[i] = c
        gate_out[i] = g
        flag[i] = bad
    return FusionResult(out, conf_out, gate_out, ref_days, flag)
