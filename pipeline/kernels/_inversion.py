"""Gate and inversion: the surface J from the model, how far it can be trusted, and the soft
gate that blends it with the harmonised temporal reference.

Scattering model (DESIGN.md section 2), per band b::

    I_b = J_b t_b + A_b (1 - t_b)
    J_b = (I_b - A_b (1 - t_b)) / max(t_b, t_min)

(t_b: ``_transmission``). The fusion (``_fusion.fuse_dates``, steps 5 to 7) then blends::

    J_out = g(c) J_phys + (1 - g(c)) R,   g(c) = S(c; gate_low, gate_high)   (smoothstep)

and, with the priors' cloud evidence, passes the observation through where it is clear.

Limitations
-----------
* The shadow cue is specific to a uniform dimming against a snow-free reference
  (``_shadow_specificity``), but a real darkening that dims every band alike (flooding of a
  bright surface) is still handed to the reference. Cloud-shadow geometry (projection of
  detected clouds along the sun azimuth) is not used: the cube carries no sun angles.
* A pixel with no reference and a low confidence is flagged and set to NaN rather than
  inpainted spatially.

Implementation: the numpy fronts first, then their compiled passes (numba, conventions in
``_common``); each pass replaces a dozen whole-array numpy temporaries with one sweep over
the pixels, bands innermost. The plausibility of an inverted surface (``_plausible``) is
stated once, for the confidence and for the gate.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .._bands import SCL
from ._common import (
    F32,
    _clip01,
    _darkening_at,
    _scl_code,
    _smoothstep,
    band_lanes,
    layer_pixels,
    per_value_operands,
    scl_table,
    smoothstep,
    spectral_pixels,
)
from ._config import FusionConfig
from ._transmission import snow_score


def forward_model(surface: np.ndarray, airlight: np.ndarray, t_band: np.ndarray) -> np.ndarray:
    """I_b = J_b t_b + A_b (1 - t_b): the scattering model, for tests and simulation."""
    a = np.asarray(airlight, dtype=np.float64)[:, :, None, None]
    t = np.asarray(t_band, dtype=np.float64)
    return (surface * t + a * (1.0 - t)).astype(F32)


def invert(
    observed: np.ndarray, airlight: np.ndarray, t_band: np.ndarray, t_min: float = 0.1
) -> np.ndarray:
    """J_b = (I_b - A_b (1 - t_b)) / max(t_b, t_min): exact inverse of the model for t_b >= t_min.

    t_min bounds the noise amplification 1/t; pixels below it are not trusted anyway (the
    confidence goes to 0 well before t_min), the gate then hands them to the reference.
    """
    obs, a, t = per_value_operands(observed, airlight, t_band)
    out = np.empty(obs.shape, F32)
    invert_fit(obs, a, t, float(t_min), out)  # one compiled pass, float64 arithmetic
    return out.reshape(np.shape(observed))


#: SCL evidence on the confidence: class -> factor (the model does not hold in shadow).
SCL_CONFIDENCE_FACTOR = {
    SCL.CLOUD_SHADOW: 0.6,
    SCL.DARK_SHADOW: 0.85,
    SCL.SATURATED: 0.3,
}


def inversion_confidence(
    t_ref: np.ndarray,
    surface: np.ndarray,
    scl: np.ndarray | None = None,
    *,
    t_low: float = 0.25,
    t_high: float = 0.6,
    scl_weight: float = 1.0,
) -> np.ndarray:
    """Confidence c (T, Y, X) in [0, 1] that the physical inversion is faithful.

    c = S(t_ref; t_low, t_high)                 noise is amplified by 1/t; opaque cloud -> 0
        * S(min_b J_b; -0.05, 0)                a negative surface means A or t is wrong
        * (1 - S(max_b J_b; 1.0, 1.3))          no land surface is that bright after inversion
        * SCL factor                            cloud shadow / dark / saturated (weak)
    0 where the pixel has no observation.
    """
    surf = spectral_pixels(surface)
    layer_shape = (surf.shape[0],) + np.shape(surface)[2:]
    use_scl = scl is not None and scl_weight > 0
    out = np.empty(layer_shape, F32)
    confidence_fit(
        layer_pixels(t_ref, layer_shape, "t_ref"),
        surf,
        float(t_low),
        float(t_high),
        layer_pixels(scl if use_scl else None, layer_shape, "scl"),
        scl_table(SCL_CONFIDENCE_FACTOR, 0, 1.0),
        float(scl_weight),
        out.reshape(surf.shape[0], -1),
    )
    return out


def gate(confidence: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """g(c) = S(c; gate_low, gate_high): weight of the physical inversion, C1-smooth in c."""
    return smoothstep(confidence, cfg.gate_low, cfg.gate_high)


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


def _gate_params(cfg: FusionConfig) -> GateParams:
    return GateParams(
        gate_low=cfg.gate_low,
        gate_high=cfg.gate_high,
        min_confidence=cfg.min_confidence_without_reference,
        shadow_low=cfg.shadow_ratio_low,
        shadow_high=cfg.shadow_ratio_high,
        t_min=cfg.temporal_t_min,
        t_low=cfg.temporal_t_low,
        t_high=cfg.temporal_t_high,
        sigma_t_clear=cfg.sigma_t_clear,
        sigma_t_haze=cfg.sigma_t_haze,
        reference_var=cfg.reference_sigma**2,
        reference_var_floor=cfg.reference_sigma_floor**2,
    )


def _physics_weight(
    expected: np.ndarray,
    t_ref: np.ndarray,
    airlight: np.ndarray,
    reference_var: np.ndarray,
    q_ref: np.ndarray,
    cfg: FusionConfig,
) -> np.ndarray:
    """Inverse-variance share of the physical inversion against the reference, (Y, X) in [0, 1].

    The inversion J = (I - A (1 - t)) / t has dJ/dt = (A - J) / t, so an error sigma_t of
    the transmission gives sigma_J = sigma_t |A - J| / t: small on clear pixels, exploding
    under opaque cloud. J there is the *expected* surface, the reference (the inversion
    itself would say J ~ A under a cloud, hiding its own error). sigma_t = sigma_t_clear + sigma_t_haze (1 - t). The reference's
    error is the local harmonisation residual (``harmonise_local``), floored, and inflated by
    the reference date's own quality q_j (a hazy reference is a worse one):
    var_R = max(resid, floor^2) / max(q_j, 0.05)^2. The weight var_R / (var_R + var_J) is
    what minimises the expected squared error of the blend of two independent estimates.
    """
    shape = np.shape(t_ref)
    out = np.empty(int(np.prod(shape)))
    physics_weight_fit(  # the per-pixel formula of ``gate_fit``, on whole arrays
        band_lanes(np.asarray(expected, np.float64)),
        np.ascontiguousarray(t_ref, dtype=np.float64).reshape(-1),
        np.asarray(airlight, np.float64).reshape(-1),
        np.ascontiguousarray(np.broadcast_to(reference_var, shape), dtype=np.float64).reshape(-1),
        np.ascontiguousarray(np.broadcast_to(q_ref, shape), dtype=np.float64).reshape(-1),
        _gate_params(cfg),
        out,
    )
    return out.reshape(shape)


def _prior_factor(
    confidence: np.ndarray, t_ref: np.ndarray, surface: np.ndarray, cfg: FusionConfig
) -> np.ndarray:
    """What a prior's confidence says beyond the transmission ramp, (T, Y, X) in [0, 1].

    A prior's confidence is the physical part (``inversion_confidence`` of its own t and
    J) times its own knowledge (SCL evidence, a VLM's judgement, a plug-in's scaling). The
    fusion recomputes the physical part with the temporal transmission, so it keeps the
    prior's factor c / c_phys and multiplies it back in; where c_phys is near zero the
    factor is unknown and taken as 1 (the prior had nothing to add there).
    """
    c_phys = inversion_confidence(
        t_ref, surface, t_low=cfg.temporal_t_low, t_high=cfg.temporal_t_high
    ).astype(np.float64)
    c = np.asarray(confidence, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(c_phys > 0.05, c / c_phys, 1.0)
    return np.clip(np.where(np.isfinite(factor), factor, 1.0), 0.0, 1.0)


def _shadow_specificity(
    target: np.ndarray, reference: np.ndarray, bands: tuple[str, ...] | None
) -> np.ndarray:
    """How much a darkening of ``target`` (B, Y, X) against ``reference`` looks like shadow,
    (Y, X) in [0, 1]: 1 - S(spread; 0.3, 0.6) x (1 - snow(reference) (1 - snow(target))).

    Cloud shadow dims every band by a similar factor (the spread over bands of log(J / R)
    is small); snow melt, harvest and burn change the spectrum's shape (a large spread), and
    a snow-covered reference is no yardstick of brightness for a target that is no longer
    snow (a target still snow, darker alike in every band, is snow in shadow). Bands below 0.01 on either
    date are left out (their ratio is noise); 1 where fewer than two bands remain.
    """
    j = np.asarray(target, np.float64)
    r = np.asarray(reference, np.float64)
    ok = (j > 0.01) & (r > 0.01)
    with np.errstate(invalid="ignore", divide="ignore"):
        logr = np.where(ok, np.log(np.where(ok, j, 1.0) / np.where(ok, r, 1.0)), 0.0)
        n = ok.sum(axis=0)
        mean = logr.sum(axis=0) / np.maximum(n, 1)
        spread = np.sqrt((np.where(ok, logr - mean, 0.0) ** 2).sum(axis=0) / np.maximum(n, 1))
    spec = np.where(n >= 2, 1.0 - smoothstep(spread, 0.3, 0.6), 1.0)
    if bands is not None:
        snowy = snow_score(np.nan_to_num(r)[None], tuple(bands))
        if snowy is not None:
            # a snowy reference vetoes the cue unless the target is still snow: shadowed
            # snow keeps its NDSI and a bright NIR, melt onto dark ground or water does not
            still = snow_score(np.nan_to_num(j)[None], tuple(bands))
            target_snow = 0.0 if still is None else still[0]
            spec = spec * (1.0 - snowy[0] * (1.0 - target_snow))
    return np.where(np.isfinite(spec), spec, 1.0)


def _shrink_correction(
    observed: np.ndarray, surface: np.ndarray, t_ref: np.ndarray, cfg: FusionConfig
) -> np.ndarray:
    """The inversion's correction I - J shrunk by its signal-to-noise: J' = I - k (I - J).

    The haze removed is proportional to 1 - t, which is known only to sigma_t = sigma_t_clear
    + sigma_t_haze (1 - t) (checked against the simulator's known transmission: the robust
    spread of the error of t is 0.005-0.012 near t = 1, 0.02-0.06 at t 0.9-0.97 and 0.04-0.09
    below, on the synthetic and the Austria stacks). Where 1 - t is of the order of sigma_t the full
    correction is as likely to add error as to remove it; the Wiener factor k = (1 - t)^2 /
    ((1 - t)^2 + sigma_t^2) keeps the expected squared error of the corrected pixel below
    that of both the observation and the full inversion (faint haze is left nearly as
    observed, a clear haze is removed nearly in full).
    """
    nb = observed.shape[0]
    out = np.empty(np.shape(surface), np.float64)
    # one compiled pass (``shrink_correction_fit``): numpy needs six
    # full-size float64 temporaries here
    shrink_correction_fit(
        band_lanes(observed),
        band_lanes(surface),
        np.ascontiguousarray(t_ref).reshape(-1),
        float(cfg.sigma_t_clear),
        float(cfg.sigma_t_haze),
        out.reshape(nb, -1),
    )
    return out


# -- compiled passes ---------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
def _invert_at(observed: float, airlight: float, t: float, t_min: float) -> float:
    """J_b = (I_b - A_b (1 - t_b)) / max(t_b, t_min), a NaN t_b staying NaN (formula: ``invert``).

    The one statement of the inversion: ``invert_fit`` and ``_temporal.refine_fit``.
    """
    den = t if t >= t_min or t != t else t_min
    return (observed - airlight * (1.0 - t)) / den


@njit(cache=True, nogil=True, error_model="numpy")
def invert_fit(observed, airlight, t_band, t_min, out):
    """``_invert_at`` per value (formula: ``invert``), float64 arithmetic.

    ``observed``, ``t_band`` (N, B, P), ``airlight`` (N, B), ``out`` (N, B, P) float32.
    """
    n, nb, npx = observed.shape
    for i in range(n):
        for b in range(nb):
            a = np.float64(airlight[i, b])
            for k in range(npx):
                out[i, b, k] = _invert_at(
                    np.float64(observed[i, b, k]), a, np.float64(t_band[i, b, k]), t_min
                )


@njit(cache=True, nogil=True, error_model="numpy")
def _surface_span(surface, p):
    """(min_b, max_b) of the inverted surface ``surface`` (B, N) at pixel p, NaN bands skipped;
    (inf, -inf) where every band is NaN."""
    lo = np.inf
    hi = -np.inf
    for b in range(surface.shape[0]):
        v = np.float64(surface[b, p])
        if v == v:
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    return lo, hi


@njit(cache=True, nogil=True, error_model="numpy")
def _plausible(c: float, lo: float, hi: float) -> float:
    """c S(lo; -0.05, 0) (1 - S(hi; 1, 1.3)): c scaled by the plausibility of an inverted
    surface whose bands span [lo, hi].

    A negative or implausibly bright inverted surface means the model does not hold there
    (A or t is wrong; no land surface is that bright after inversion). The one statement of
    the formula, for the inversion confidence (c = S(t)) and the gate (c = 1: the
    plausibility alone); c is multiplied first, so both keep their rounding.
    """
    return c * _smoothstep(lo, -0.05, 0.0) * (1.0 - _smoothstep(hi, 1.0, 1.3))


@njit(cache=True, nogil=True, error_model="numpy")
def confidence_fit(t_ref, surface, t_low, t_high, scl, scl_factor, scl_weight, out):
    """Inversion confidence per date and pixel (semantics: ``inversion_confidence``).

    ``t_ref`` (T, N), ``surface`` (T, B, N), ``scl`` (T, N) codes or empty, ``scl_factor``
    (256,) lookup table, ``out`` (T, N). min_b / max_b J skip NaN; no finite J -> 0.
    """
    nt, _, n = surface.shape
    with_scl = scl.size > 0
    for i in range(nt):
        surface_i = surface[i]
        for k in range(n):
            jmin, jmax = _surface_span(surface_i, k)
            c = _plausible(_smoothstep(np.float64(t_ref[i, k]), t_low, t_high), jmin, jmax)
            if with_scl:
                c = c * (1.0 - scl_weight * (1.0 - scl_factor[_scl_code(np.float64(scl[i, k]))]))
            out[i, k] = _clip01(c) if np.isfinite(c) and np.isfinite(jmin) else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _physics_weight_at(reference, p, t, airlight, reference_var, q_ref, prm):
    """Inverse-variance share of the inversion at pixel p (science: ``_physics_weight``).

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

    ``_plausible`` alone (as in ``inversion_confidence``); bands that are NaN are skipped,
    1 if all are.
    """
    lo, hi = _surface_span(surface, p)
    out = _plausible(1.0, lo, hi)
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
    (``shadow_evidence`` (N,): how much the darkening looks like shadow,
    ``_shadow_specificity``; 1 = the darkening cue alone); g = S(c; gate_low, gate_high) (0 unobserved, 1 without a reference); J_out =
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
    """``_shrink_correction`` in one pass: out = I - k (I - J), J where not finite.

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
