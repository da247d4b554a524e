"""Compiled (numba) per-pixel passes of ``_fusion.fuse_dates``: the reference choice and the gate.

Semantics are those of ``fuse_dates`` (steps 2, 5 and 6 of its docstring) and of
``_physics_weight``; each pass replaces a dozen whole-array numpy
temporaries per target date with one sweep over the pixels, bands innermost. Conventions as
in ``_numba`` (``cache=True``, ``nogil=True``, not parallel, float64 arithmetic,
``error_model="numpy"``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ._numba import _darkening_at, _smoothstep


class GateParams(NamedTuple):
    """The ``FusionConfig`` settings ``gate_fit`` reads (a tuple of floats numba can take)."""

    gate_low: float
    gate_high: float
    min_confidence: float  # min_confidence_without_reference
    shadow_low: float
    shadow_high: float
    t_min: float  # temporal_t_min
    t_low: float  # temporal_t_low
    t_high: float  # temporal_t_high
    sigma_t_clear: float
    sigma_t_haze: float
    reference_var: float  # reference_sigma ** 2
    reference_var_floor: float  # reference_sigma_floor ** 2


@njit(cache=True, nogil=True, error_model="numpy")
def candidate_weights_fit(base, cand, decay, ratio, power, weights, best):
    """Step 2 of ``fuse_dates``: blend weights of the candidate dates per pixel.

    ``base`` (T, N) the choice score of every date (smoothed quality x consistency x
    eligible); ``cand`` (K,) the candidate dates, ``decay`` (K,) their closeness in time
    exp(-|dt| / scale). score_k = round(base[cand_k] decay_k, 6) (rounded so the choice is
    stable); the best candidate is the first of the highest scores (``best``, -1 where no
    score is positive); candidates scoring > 0 and >= ``ratio`` x the best get weights
    score ** ``power`` normalised to sum 1 (``weights`` (K, N), 0 elsewhere).
    """
    nk = cand.shape[0]
    n = base.shape[1]
    score = np.empty(nk)
    for p in range(n):
        top = -np.inf
        arg = 0
        for k in range(nk):
            v = np.rint(np.float64(base[cand[k], p]) * decay[k] * 1e6) / 1e6
            score[k] = v
            if v > top:
                top = v
                arg = k
        if not top > 0.0:
            best[p] = -1
            for k in range(nk):
                weights[k, p] = 0.0
            continue
        best[p] = arg
        total = 0.0
        for k in range(nk):
            v = score[k]
            wk = v**power if (v > 0.0 and v >= ratio * top) else 0.0
            weights[k, p] = wk
            total += wk
        for k in range(nk):
            weights[k, p] /= total


@njit(cache=True, nogil=True, error_model="numpy")
def _physics_weight_at(reference, p, t, airlight, reference_var, q_ref, prm):
    """Inverse-variance share of the inversion at pixel p (science: ``_fusion._physics_weight``).

    spread = RMS_b(A_b - R_b) over the finite bands; sigma_t = sigma_t_clear + sigma_t_haze
    (1 - t), t clipped to [0, 1]; var_J = (sigma_t spread / max(t, t_min))^2; var_R =
    max(reference_var or reference_sigma^2 where unknown, floor^2) / max(q_ref, 0.05)^2;
    w = var_R / (var_R + var_J), 0 where not finite.
    """
    nb = reference.shape[0]
    total = 0.0
    count = 0
    for b in range(nb):
        dev = airlight[b] - reference[b, p]
        if np.isfinite(dev):
            total += dev * dev
            count += 1
    spread = np.sqrt(total / count)
    tc = t
    if tc < 0.0:
        tc = 0.0
    elif tc > 1.0:
        tc = 1.0
    sigma_t = prm.sigma_t_clear + prm.sigma_t_haze * (1.0 - tc)
    var_j = (sigma_t * spread / (tc if tc >= prm.t_min or tc != tc else prm.t_min)) ** 2
    var_r = reference_var if np.isfinite(reference_var) else prm.reference_var
    if var_r < prm.reference_var_floor:
        var_r = prm.reference_var_floor
    qq = q_ref if (q_ref >= 0.05 or q_ref != q_ref) else 0.05
    var_r = var_r / (qq * qq)
    w = var_r / (var_r + var_j)
    return w if np.isfinite(w) else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def physics_weight_fit(reference, t_ref, airlight, reference_var, q_ref, prm, out):
    """``_physics_weight_at`` over all pixels: ``reference`` (B, N), the rest (N,), ``out`` (N,)."""
    for p in range(out.shape[0]):
        out[p] = _physics_weight_at(
            reference, p, np.float64(t_ref[p]), airlight, reference_var[p], q_ref[p], prm
        )


@njit(cache=True, nogil=True, error_model="numpy")
def _plausible_at(surface, p):
    """Plausibility of the inverted surface at pixel p: S(min_b J; -0.05, 0) (1 - S(max_b J; 1, 1.3)).

    A negative or implausibly bright inverted surface means the model does not hold there
    (as ``_physics.inversion_confidence``); bands that are NaN are skipped, 1 if all are.
    """
    lo = np.inf
    hi = -np.inf
    for b in range(surface.shape[0]):
        v = surface[b, p]
        if v == v:
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    out = _smoothstep(lo, -0.05, 0.0) * (1.0 - _smoothstep(hi, 1.0, 1.3))
    return out if np.isfinite(out) else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def gate_fit(
    observed,
    surface,
    reference,
    has,
    valid,
    confidence,
    t_ref,
    q_ref,
    reference_var,
    airlight,
    prior_factor,
    relative,
    shadow_evidence,
    passthrough,
    prm,
    out,
    conf_out,
    gate_out,
    flag_out,
):
    """Steps 5 to 7 of ``fuse_dates`` for one target date, per pixel.

    ``observed`` I, ``surface`` J_phys and ``reference`` R (B, N) float64; ``has`` (N,) a reference exists;
    ``valid`` (N,) the target is observed; ``confidence``, ``t_ref``, ``q_ref``,
    ``reference_var``, ``prior_factor`` (N,); ``airlight`` (B,). With ``relative`` the
    confidence of a pixel with a reference is the inverse-variance share of the inversion
    (``_physics_weight``) x plausibility x S(t; t_low, t_high) x the prior's own factor.
    c = confidence (1 - min(darkening(J, R), shadow_evidence) q_ref), 0 where unobserved
    (``shadow_evidence`` (N,): how much the darkening looks like shadow, ``_fusion.
    _shadow_specificity``; 1 = the darkening cue alone); g = S(c; gate_low, gate_high) (0 unobserved, 1 without a reference); J_out =
    g J + (1 - g) R per band (the finite one where the other is NaN); flagged, NaN and g = 0
    where there is no reference and the pixel is unobserved or c < ``min_confidence``.
    Clear pass-through: with w = ``passthrough`` (N,) on an observed pixel, J_out <- w I +
    (1 - w) J_out and g <- w + (1 - w) g; a pixel the evidence calls clear (w >= 0.5) is
    never flagged for want of a reference (it is its own observation).
    Writes ``out`` (B, N), ``conf_out``, ``gate_out`` (N,) and ``flag_out`` (N,) uint8.
    """
    nb, n = surface.shape
    for p in range(n):
        st = 0.0
        sr = 0.0
        any_both = False
        for b in range(nb):
            j = surface[b, p]
            r = reference[b, p]
            if np.isfinite(j) and np.isfinite(r):
                st += j
                sr += r
                any_both = True
        dark = _darkening_at(st, sr, any_both, prm.shadow_low, prm.shadow_high)
        if shadow_evidence[p] < dark:
            dark = shadow_evidence[p]
        t = np.float64(t_ref[p])
        c = np.float64(confidence[p])
        if relative and has[p]:
            c = (
                _physics_weight_at(reference, p, t, airlight, reference_var[p], q_ref[p], prm)
                * _plausible_at(surface, p)
                * _smoothstep(t, prm.t_low, prm.t_high)
                * prior_factor[p]
            )
        c = c * (1.0 - dark * q_ref[p]) if valid[p] else 0.0
        if not has[p]:
            g = 1.0
        elif valid[p]:
            g = _smoothstep(c, prm.gate_low, prm.gate_high)
        else:
            g = 0.0
        w = passthrough[p] if valid[p] else 0.0
        if not w == w:
            w = 0.0
        bad = not has[p] and (not valid[p] or c < prm.min_confidence) and w < 0.5
        if bad:
            g = 0.0
            w = 0.0
        for b in range(nb):
            j = surface[b, p]
            r = reference[b, p]
            if bad:
                v = np.nan
            elif j != j:
                v = r
            elif r != r:
                v = j
            else:
                v = g * j + (1.0 - g) * r
            i_b = observed[b, p]
            if w > 0.0 and i_b == i_b:
                v = w * i_b + (1.0 - w) * v if v == v else i_b
            out[b, p] = v
        g = w + (1.0 - w) * g
        conf_out[p] = c
        gate_out[p] = g
        flag_out[p] = 1 if bad else 0


@njit(cache=True, nogil=True, error_model="numpy")
def shrink_correction_fit(observed, surface, t_ref, sigma_clear, sigma_haze, out):
    """``_fusion._shrink_correction`` in one pass: out = I - k (I - J), J where not finite.

    ``observed``, ``surface`` (B, N); ``t_ref`` (N,); ``out`` (B, N) float64.
    k = (1 - t)^2 / ((1 - t)^2 + sigma_t^2), t clipped to [0, 1] (NaN stays NaN),
    sigma_t = sigma_clear + sigma_haze (1 - t).
    """
    nb, n = observed.shape
    for k in range(n):
        t = np.float64(t_ref[k])
        if t < 0.0:
            t = 0.0
        elif t > 1.0:
            t = 1.0
        haze = 1.0 - t
        sigma = sigma_clear + sigma_haze * haze
        factor = haze * haze / (haze * haze + sigma * sigma)
        for b in range(nb):
            o = np.float64(observed[b, k])
            j = np.float64(surface[b, k])
            v = o - factor * (o - j)
            out[b, k] = v if np.isfinite(v) else j
