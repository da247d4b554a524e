"""Fusion of one block: the time neighbourhood and ``fuse_dates`` (its settings: ``_config``),
which runs per target date the reference choice (``_reference``), the harmonisation of the candidates
(``_harmonisation``, or its torch twin ``_harmonisation_torch`` with ``FusionConfig.backend``), the transmission read against the reference (``_temporal``) and the
soft gate of the inversion against the reference (``_inversion``):

    J_out = g(c) J_phys + (1 - g(c)) R,   g(c) = S(c; gate_low, gate_high)   (smoothstep)

then, with the priors' cloud evidence, the clear pass-through J <- p_clear I + (1 - p_clear)
J_out (see ``fuse_dates``). The limitations of each step are stated in its module.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._common import F32, band_lanes, float_array, smoothstep
from ._config import FusionConfig
from ._harmonisation import _agreement, harmonise_local
from ._inversion import (
    _gate_params,
    _prior_factor,
    _shadow_specificity,
    _shrink_correction,
    gate_fit,
)
from ._reference import (
    _add_candidate,
    _force_reference,
    candidate_weights_fit,
    reference_quality,
    smoothed_quality,
    spectral_consistency,
)
from ._temporal import _temporal_refinement


def time_neighbourhood(days: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """(T, T) bool: date j may serve as a reference of date i (FusionConfig's time window).

    Positions count in the order of ``days`` (the series' order); a date is its own neighbour.
    """
    d = np.asarray(days, dtype=np.float64)
    idx = np.arange(d.size)
    near = np.ones((d.size, d.size), dtype=bool)
    if cfg.time_window_dates is not None:
        near &= np.abs(idx[:, None] - idx[None, :]) <= cfg.time_window_dates
    if cfg.time_window_days is not None:
        near &= np.abs(d[:, None] - d[None, :]) <= cfg.time_window_days
    return near


def time_context(days: np.ndarray, start: int, stop: int, cfg: FusionConfig) -> tuple[int, int]:
    """[c0, c1): the dates that targets ``start..stop-1`` may draw on (their neighbourhoods' union).

    Contiguous because each neighbourhood is an interval of a sorted series.
    """
    near = time_neighbourhood(days, cfg)[start:stop].any(axis=0)
    hit = np.flatnonzero(near)
    return int(hit[0]), int(hit[-1]) + 1


class FusionResult(NamedTuple):
    output: np.ndarray  # (T, B, Y, X) float32
    confidence: np.ndarray  # (T, Y, X) float32
    gate: np.ndarray  # (T, Y, X) float32
    reference_days: np.ndarray  # (T, Y, X) float32, NaN = no reference
    no_valid_observation: np.ndarray  # (T, Y, X) uint8
    transmission: np.ndarray  # (T, Y, X) float32, t_ref after the temporal refinement
    cloud_probability: np.ndarray  # (T, Y, X) float32, 1 - evidence's clear probability
    #: (T, Y, X) float32: RMS over bands of observation - harmonised reference (the
    #: harmonisation residual at the target pixel); NaN where there is no reference
    reference_departure: np.ndarray


def fuse_dates(
    observed: np.ndarray,
    surface: np.ndarray,
    t_ref: np.ndarray,
    confidence: np.ndarray,
    days: np.ndarray,
    pair_gain: np.ndarray,
    pair_offset: np.ndarray,
    cfg: FusionConfig,
    band_transmission: np.ndarray | None = None,
    airlight: np.ndarray | None = None,
    bands: tuple[str, ...] | None = None,
    evidence: tuple[np.ndarray, np.ndarray | None] | None = None,
    date_clearness: np.ndarray | None = None,
    forced_reference: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    origin: tuple[int, int] = (0, 0),
) -> FusionResult:
    """Per-pixel temporal reference, harmonisation and soft-gated fusion for one block.

    observed, surface: (T, B, Y, X) input I and physical inversion J_phys; t_ref, confidence:
    (T, Y, X) from the prior; days: (T,) float days; pair_gain/offset: (T, T, B) scene-level
    map of date j onto date i (fallback of the local fit).

    For every target date i and pixel:

    1. candidates: the ``max_candidates`` other dates nearest in time where the pixel is
       observed with quality q_j = c_j t_j >= ``reference_min_quality``;
    2. score_j = qbar_j * exp(-|d_j - d_i| / time_scale) * consistency_j, qbar the box-mean
       of q (coherent choices), consistency = ``spectral_consistency`` (floored); scores are
       rounded to 1e-6 so the choice is stable; ``reference_days`` reports the best date;
    3. R = sum_j w_j (g_ij J_j + o_ij) over the candidates within ``reference_blend_ratio``
       of the best score (w_j ~ score_j ** power), each mapped by the local gain/offset of
       ``harmonise_local`` fitted on pixels clear on the target that show the reference's
       surface (weights (c S(t) p_clear)_i^2 q_j^2, times the robust ``_agreement``
       pre-weight); q_j and the harmonisation residual are blended alike;
    4. temporal transmission (with ``band_transmission`` (T, B, Y, X) and ``airlight`` (T, B)
       of the prior): t_b = w t_b,temporal + (1 - w) t_b,prior with w = temporal_weight * q_j
       per usable band (``temporal_band_transmission``; ``bands``: the asset keys), then
       J_phys, t_ref (the shortest band) and the confidence are recomputed from it (blended by w likewise);
    5. shadow cue: rho = sum_b J_i / sum_b R; c_i *= 1 - q_j (1 - S(rho; low, high));
    6. J_out = g(c) J_phys + (1 - g(c)) R. Without a reference J_out = J_phys (gate 1) if
       c >= ``min_confidence_without_reference``, else NaN with the no-valid-observation flag;
       an unobserved target pixel with a reference gets R (gate 0);
    7. clear pass-through: J_out <- w I + (1 - w) J_out, w = S(p_clear; pass_low, pass_high).

    ``evidence`` (p_cloud, p_shadow or None), each (T, Y, X): the priors' fused cloud
    evidence (``pipeline.priors.CloudEvidence``); p_clear = (1 - p_cloud)(1 - p_shadow). It
    enters three places: a candidate's score is multiplied by max(p_clear_j,
    ``evidence_floor``) (a date the evidence calls cloudy or hazy is not a reference while a
    clearer one exists), the local harmonisation is fitted only where the target reads clear
    (a target's scene-wide haze, an affine map per band, would otherwise be absorbed by the
    fit and kept in the output; the reference's haze is what the fit absorbs), and step 7.
    With evidence the darkening cue of step 5 is also made specific
    (``_shadow_specificity``: snow melt or a harvest darkens a pixel against its reference
    without being shadow; shadow dims every band alike). Without
    evidence, p_clear = 1 in the scores and harmonisation, and step 7 is skipped.
    ``date_clearness`` (T,): each date's clear share over the scene; candidates are the
    ``max_candidates`` dates with the highest exp(-|dt| / time_scale) max(clearness, 0.05)
    rather than the nearest (a date clouded over the whole scene is no candidate while a
    clear one exists). ``forced_reference`` (N, Y, X) int: the reference date per target
    date and pixel (-1 = choose as above), for the benchmark's oracle.

    ``targets`` (N,) int: the dates to restore (default: all); every date of the block still
    serves as a candidate and enters the per-pixel statistics (the spectral-consistency
    median), so a time block of ``restore`` passes its dates plus the overlap that covers the
    targets' neighbourhoods and restores its own dates only. Candidates are limited to the
    target's neighbourhood in time (``FusionConfig.time_window_dates`` / ``_days``). The
    result's per-date arrays hold the N targets.

    ``origin``: the block's first pixel in the whole array; the coarse grid of the local
    harmonisation (``FusionConfig.harmonise_grid_step``) is anchored there, so a block with
    ``cfg.halo`` pixels of halo gives the same core as the whole array.
    """
    obs = np.asarray(observed)
    nt, nb = obs.shape[:2]
    days = np.asarray(days, dtype=np.float64)
    # J_phys stays in its own dtype (float32 from the priors): every compiled pass reads it
    # into float64 arithmetic, so a float64 copy of the whole stack would only cost memory
    j_phys = float_array(surface)
    valid = np.isfinite(obs).any(axis=1)
    q = np.where(valid, reference_quality(t_ref, confidence), 0.0)
    eligible = valid & (q >= cfg.reference_min_quality)
    p_clear = _clear_probability(evidence, valid.shape)
    # Consistency ranks candidates; it must never veto the only one (with few dates the
    # median it is measured against can be half an undetected cloud), hence the floor.
    cons = np.maximum(
        spectral_consistency(j_phys, eligible, cfg.consistency_sigma), cfg.consistency_floor
    )
    base = smoothed_quality(q, cfg.reference_smooth_radius) * cons * eligible
    if p_clear is not None:
        base *= np.maximum(p_clear, cfg.evidence_floor)
    # The local harmonisation maps the reference onto the target. Its pixels must be clear
    # on the target, by the prior and the evidence, not merely invertible: a hazy target's
    # inversion carries the prior's transmission error into the map, and a target's haze
    # absorbed by the map is haze the output keeps. On the reference what counts is how much
    # of its surface the observation carries, its quality q = c t: whatever the reference
    # holds over the whole scene, an affine map per band such as scene-wide haze, is what
    # the map is there to absorb, and it could not while the reference had to read clear
    # too (a hazy neighbour that was the only reference was copied with its haze). Opaque
    # cloud on the reference has q ~ 0, and the fit's robust pre-weight (``_agreement``)
    # keeps out the local clouds the prior missed.
    clear = np.where(
        valid,
        np.asarray(confidence, np.float64)
        * smoothstep(
            np.asarray(t_ref, np.float64), cfg.harmonise_clear_t_low, cfg.harmonise_clear_t_high
        ),
        0.0,
    )
    if p_clear is not None:
        clear *= p_clear
        passthrough = smoothstep(p_clear, cfg.pass_low, cfg.pass_high)
    else:
        passthrough = np.zeros(valid.shape)
    rank = np.ones(nt) if date_clearness is None else np.maximum(np.asarray(date_clearness), 0.05)
    targets = np.arange(nt) if targets is None else np.asarray(targets, dtype=np.intp)
    if targets.ndim != 1 or (targets.size and not 0 <= targets.min() <= targets.max() < nt):
        raise ValueError(f"fuse_dates: targets must be indices into the {nt} dates, got {targets}")
    near = time_neighbourhood(days, cfg) if cfg.windowed else None
    nout = targets.size

    out = np.full((nout,) + obs.shape[1:], np.nan, dtype=F32)
    conf_out = np.zeros((nout,) + obs.shape[2:], dtype=F32)
    gate_out = np.zeros_like(conf_out)
    ref_days = np.full_like(conf_out, np.nan)
    departure = np.full_like(conf_out, np.nan)
    flag = np.zeros(conf_out.shape, dtype=np.uint8)
    t_out = np.asarray(t_ref, dtype=F32)[targets]  # fancy indexing: a copy
    use_temporal = (
        cfg.temporal_weight > 0 and band_transmission is not None and airlight is not None
    )
    if use_temporal and bands is None:
        raise ValueError("fuse_dates: the temporal refinement needs the band names (bands=)")
    prior_factor = _prior_factor(confidence, t_ref, surface, cfg) if use_temporal else None
    tb_prior = np.asarray(band_transmission) if band_transmission is not None else None
    a_scene = np.asarray(airlight) if airlight is not None else None

    npix = int(np.prod(obs.shape[2:]))
    base2 = base.reshape(nt, npix)
    gate_params = _gate_params(cfg)
    for n, i in enumerate(targets.tolist()):
        dt = days - days[i]
        # nearest in time, clear dates first: exp(-|dt| / scale) x the date's clearness
        closeness = np.exp(-np.abs(dt) / cfg.time_scale_days) * rank
        order = [
            j
            for j in np.lexsort((np.abs(dt), -closeness))
            if j != i and (near is None or near[i, j])
        ]
        cand = np.asarray(order[: cfg.max_candidates], dtype=np.intp)
        forced = None if forced_reference is None else np.asarray(forced_reference[n]).reshape(-1)
        if forced is not None:
            extra = sorted(set(np.unique(forced[forced >= 0]).tolist()) - set(cand.tolist()) - {i})
            cand = np.concatenate([cand, np.asarray(extra, dtype=np.intp)])
        if not cand.size:  # a single date: no reference anywhere
            reference = np.full((nb,) + obs.shape[2:], np.nan)
            has = np.zeros(obs.shape[2:], dtype=bool)
            q_ref = np.zeros(obs.shape[2:])
            reference_var = np.full(obs.shape[2:], np.nan)
        else:
            # Soft blend of the candidates scoring within reference_blend_ratio of the best,
            # weighted by score ** reference_blend_power: averaging a few good dates cancels
            # part of their independent changes, and switching between dates fades instead of
            # jumping (no seam where the best date changes). Ratio 1 = the single best date.
            weights = np.empty((cand.size, npix))
            best = np.empty(npix, np.intp)
            candidate_weights_fit(
                base2,
                cand,
                np.exp(-np.abs(dt[cand]) / cfg.time_scale_days),
                float(cfg.reference_blend_ratio),
                float(cfg.reference_blend_power),
                weights,
                best,
            )
            if forced is not None:
                _force_reference(forced, cand, weights, best)
            space = obs.shape[2:]
            has = (best >= 0).reshape(space)
            ref_days[n] = np.where(has, dt[cand[np.maximum(best, 0)]].reshape(space), np.nan)
            weights = weights.reshape((cand.size,) + space)
            acc = np.zeros((nb,) + space)
            acc_w = np.zeros(space)
            acc_var = np.zeros(space)
            q_ref = np.zeros(space)
            for k, j in enumerate(cand):
                w_c = weights[k]
                if not (w_c > 0).any():
                    continue
                g, o, resid = _harmonise_candidate(
                    j_phys[i],
                    j_phys[j],
                    (clear[i] * q[j]) ** 2,  # the reference side: q (see above)
                    pair_gain[i, j],
                    pair_offset[i, j],
                    cfg,
                    origin,
                )
                _add_candidate(g, o, j_phys[j], w_c, resid, q[j], acc, acc_w, acc_var, q_ref, cfg)
                del g, o, resid  # a date's (B, Y, X) arrays never outlive their use (memory peak)
            has &= acc_w > 0
            norm = np.where(has, acc_w, 1.0)
            reference = acc  # normalised in place: no (B, Y, X) temporaries
            reference /= norm
            reference[:, ~has] = np.nan
            q_ref = np.where(has, q_ref / norm, 0.0)
            reference_var = np.where(has, acc_var / norm, np.nan)

        if has.any():
            departure[n] = _rms_departure(obs[i], reference)
        ji = j_phys[i]
        ti = np.asarray(t_ref[i], np.float64)
        if use_temporal and tb_prior is not None and a_scene is not None and has.any():
            ji, ti = _temporal_refinement(
                obs[i], reference, a_scene[i], tb_prior[i], ji, ti, q_ref, tuple(bands or ()), cfg
            )
        t_out[n] = ti
        if p_clear is not None:
            ji = _shrink_correction(obs[i], ji, ti, cfg)
        # with a reference, faith in the inversion is relative to it (inverse variance)
        relative = use_temporal and a_scene is not None and prior_factor is not None
        light = (
            np.asarray(a_scene[i], np.float64) if a_scene is not None and relative else np.zeros(nb)
        )
        factor = (
            prior_factor[i].reshape(-1) if prior_factor is not None and relative else np.ones(1)
        )
        # steps 5 and 6 in one compiled pass per pixel (``_inversion.gate_fit``)
        gate_fit(
            band_lanes(obs[i]),
            band_lanes(ji),
            reference.reshape(nb, -1),
            has.reshape(-1),
            valid[i].reshape(-1),
            np.ascontiguousarray(confidence[i]).reshape(-1),
            np.ascontiguousarray(ti, dtype=np.float64).reshape(-1),
            q_ref.reshape(-1),
            reference_var.reshape(-1),
            light.reshape(-1),
            factor,
            relative,
            (
                _shadow_specificity(ji, reference, bands).reshape(-1)
                if p_clear is not None
                else np.ones(npix)
            ),
            np.ascontiguousarray(passthrough[i]).reshape(-1),
            gate_params,
            out[n].reshape(nb, -1),
            conf_out[n].reshape(-1),
            gate_out[n].reshape(-1),
            flag[n].reshape(-1),
        )
        del reference, ji  # before the next date allocates its own
    cloud = (
        np.full(conf_out.shape, np.nan, dtype=F32) if p_clear is None else 1.0 - p_clear[targets]
    )
    return FusionResult(
        out, conf_out, gate_out, ref_days, flag, t_out, cloud.astype(F32), departure
    )


def _rms_departure(observed: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(Y, X) RMS over bands of ``observed`` - ``reference`` (each (B, Y, X)); NaN where
    either is missing.

    What the error layer reads of a kept observation: a pixel passed through or inverted is
    only as good as the observation, and an observation that departs from what its
    references predict is either a real change or contamination that the evidence missed."""
    diff = np.asarray(observed, np.float64) - reference
    np.square(diff, out=diff)
    return np.sqrt(diff.mean(axis=0))


def _harmonise_candidate(
    target: np.ndarray,
    source: np.ndarray,
    clear_weight: np.ndarray,
    prior_gain: np.ndarray,
    prior_offset: np.ndarray,
    cfg: FusionConfig,
    origin: tuple[int, int],
) -> tuple[np.ndarray, ...]:
    """Step 3's local map of a candidate onto the target: (gain, offset, residual), float32.

    Fitted with weight ``clear_weight`` x the robust pre-weight against the prior (pair) map,
    by the backend ``cfg.backend`` names: ``_harmonisation`` (numba) or its twin
    ``_harmonisation_torch`` on ``cfg.device``.
    """
    scale = 2.0 * cfg.consistency_sigma
    darkening = (cfg.shadow_ratio_low, cfg.shadow_ratio_high)
    radius, step = cfg.harmonise_radius, cfg.grid_step
    ridge, shrink = cfg.harmonise_ridge, cfg.harmonise_shrink_pixels
    if cfg.backend == "torch":
        from ._harmonisation_torch import harmonise_pair_torch

        return harmonise_pair_torch(
            target,
            source,
            clear_weight,
            radius,
            prior_gain,
            prior_offset,
            scale=scale,
            darkening=darkening,
            ridge=ridge,
            shrink_pixels=shrink,
            grid_step=step,
            origin=origin,
            device=cfg.device,
        )
    weight = clear_weight * _agreement(
        target, source, prior_gain, prior_offset, scale=scale, darkening=darkening
    )
    return harmonise_local(
        target,
        source,
        weight,
        radius,
        prior_gain,
        prior_offset,
        ridge=ridge,
        shrink_pixels=shrink,
        residual=True,
        grid_step=step,
        origin=origin,
    )


def _clear_probability(
    evidence: tuple[np.ndarray, np.ndarray | None] | None, shape: tuple[int, ...]
) -> np.ndarray | None:
    """p_clear = (1 - p_cloud)(1 - p_shadow), (T, Y, X) float64; no opinion (NaN) counts 0.5."""
    if evidence is None:
        return None
    cloud, shadow = evidence
    if np.shape(cloud) != shape or (shadow is not None and np.shape(shadow) != shape):
        raise ValueError(
            f"fuse_dates: evidence layers must be (T, Y, X) = {shape}, got {np.shape(cloud)}"
            + ("" if shadow is None else f" and {np.shape(shadow)}")
        )
    p = 1.0 - np.nan_to_num(np.asarray(cloud, np.float64), nan=0.5)
    if shadow is not None:
        p *= 1.0 - np.nan_to_num(np.asarray(shadow, np.float64), nan=0.0)
    return np.clip(p, 0.0, 1.0)
