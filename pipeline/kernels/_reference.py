"""Reference choice: the quality that ranks reference dates, spectral consistency, the blend
weights of the candidates, and the blend of their harmonised maps into one reference.

The candidates scoring within ``reference_blend_ratio`` of the best are blended, weighted by
score (``candidate_weights_fit``); each is mapped onto the target date by the local
harmonisation (``_harmonisation``) and turned part of the way back to its own spectral shape
(``_keep_signature``) before it enters the blend (``_add_candidate``). The order of the steps
is the fusion's (``_fusion.fuse_dates``, steps 1 to 3).

Limitations
-----------
* The reference choice cannot see a change of surface state under thick cloud: a snowy
  neighbour is taken for a snow-free target it hides (quality benchmark, ``snow_melt``).

Implementation: the numpy fronts first, then their compiled passes (numba, conventions in
``_common``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._common import LANE_CHUNK, band_lanes, box_mean_nan, float_array, insert_sorted
from ._config import FusionConfig


def reference_quality(t_ref: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Quality of a date as a reference for other dates: q = c * t_ref (0 where unobserved).

    Clear (t ~ 1) and faithful (c ~ 1) observations are the best references; a thin-haze date
    that inverts well still counts, scaled by its transmission.
    """
    q = np.asarray(confidence, np.float64) * np.asarray(t_ref, np.float64)
    return np.where(np.isfinite(q), np.clip(q, 0.0, 1.0), 0.0)


def spectral_consistency(surface: np.ndarray, eligible: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-(d / sigma)^2), d = RMS over bands of (J_t - M), M = median of eligible dates (T,Y,X).

    The temporal median of the good observations is a robust anchor: a candidate whose
    spectrum departs from it (undetected cloud or shadow, a one-off) scores lower. 1 where
    there is no anchor. One compiled pass per pixel (``spectral_consistency_fit``).
    """
    j = float_array(surface)
    if j.ndim != 4 or np.shape(eligible) != j.shape[:1] + j.shape[2:]:
        raise ValueError(
            f"spectral_consistency needs surface (T, B, Y, X) and eligible (T, Y, X), got "
            f"{j.shape} and {np.shape(eligible)}"
        )
    nt, nb = j.shape[:2]
    out = np.empty((nt, j[0, 0].size))
    spectral_consistency_fit(
        j.reshape(nt, nb, -1),
        np.ascontiguousarray(eligible, dtype=bool).reshape(nt, -1),
        float(sigma),
        out,
    )
    return out.reshape((nt,) + j.shape[2:])


def smoothed_quality(q: np.ndarray, radius: int) -> np.ndarray:
    """Box mean of q (T, Y, X) over in-array pixels: makes the reference choice spatially coherent."""
    out = box_mean_nan(q, radius)
    return np.where(np.isfinite(out), out, 0.0)


def _force_reference(
    forced: np.ndarray, cand: np.ndarray, weights: np.ndarray, best: np.ndarray
) -> None:
    """Set the blend weights (K, N) and ``best`` (N,) to the forced date where one is given."""
    where = forced >= 0
    if not where.any():
        return
    for k, j in enumerate(cand):
        weights[k, where] = (forced[where] == j).astype(weights.dtype)
    hit = weights[:, where].sum(axis=0) > 0
    idx = np.flatnonzero(where)
    best[idx[hit]] = np.argmax(weights[:, idx[hit]], axis=0)
    best[idx[~hit]] = -1


def _keep_signature(mapped: np.ndarray, source: np.ndarray, share: float) -> np.ndarray:
    """Mapped spectra (B, Y, X) turned part of the way back to the source's spectral shape.

    Per-band affine maps fitted by least squares pull every band toward the scene's mean
    independently (regression dilution), which bends a pixel's spectral signature toward
    the average spectrum of the scene. The brightness per band is right on average, the
    shape is not: the result keeps the mapped vector's length and points along
    (1 - share) * unit(mapped) + share * unit(source). share 0 = the plain affine map.
    """
    if share <= 0:
        return mapped
    m = np.ascontiguousarray(mapped, dtype=np.float64)
    out = np.empty(m.shape)
    nb = m.shape[0]
    # one compiled pass per pixel (``_keep_signature_lanes``, shared with ``_add_candidate``)
    keep_signature_fit(
        m.reshape(nb, -1),
        np.ascontiguousarray(source, dtype=np.float64).reshape(nb, -1),
        float(share),
        out.reshape(nb, -1),
    )
    return out


def _add_candidate(
    gain: np.ndarray,
    offset: np.ndarray,
    source: np.ndarray,
    weight: np.ndarray,
    resid: np.ndarray,
    quality: np.ndarray,
    acc: np.ndarray,
    acc_w: np.ndarray,
    acc_var: np.ndarray,
    acc_q: np.ndarray,
    cfg: FusionConfig,
) -> None:
    """Add one candidate's harmonised reference to the blend of step 3 of ``fuse_dates``, in place.

    r = ``_keep_signature``(g J_j + o, J_j); where the blend weight w > 0 and r is finite in
    every band: acc += w r, acc_w += w, acc_var += w * resid (``reference_sigma``^2 where the
    residual is unknown), acc_q += w q_j. One compiled pass (``add_candidate_fit``)
    instead of a dozen full-size temporaries per candidate.
    """
    if not all(a.flags.c_contiguous for a in (acc, acc_w, acc_var, acc_q)):
        raise ValueError(
            "_add_candidate accumulates in place: the accumulators must be C-contiguous"
        )
    nb = source.shape[0]
    add_candidate_fit(
        gain.reshape(nb, -1),
        offset.reshape(nb, -1),
        band_lanes(source),
        float(cfg.harmonise_keep_signature),
        np.ascontiguousarray(weight, dtype=np.float64).ravel(),
        resid.ravel(),
        float(cfg.reference_sigma**2),
        np.ascontiguousarray(quality, dtype=np.float64).ravel(),
        acc.reshape(nb, -1),
        acc_w.reshape(-1),
        acc_var.reshape(-1),
        acc_q.reshape(-1),
    )


# -- compiled passes ---------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
def _median_sorted(buf, m):
    """Median of the first ``m`` values of the sorted ``buf`` (mean of the middle two if even)."""
    if m == 0:
        return np.nan
    if m % 2 == 1:
        return buf[m // 2]
    return 0.5 * (buf[m // 2 - 1] + buf[m // 2])


@njit(cache=True, nogil=True, error_model="numpy")
def spectral_consistency_fit(surface, eligible, sigma, out):
    """Per pixel: M_b = median over the eligible dates of J_b, then exp(-(d_t / sigma)^2) per date.

    Semantics: ``spectral_consistency``; ``surface`` (T, B, N), ``eligible``
    (T, N) bool, ``out`` (T, N) float64. The median is that of ``np.nanmedian`` over the
    eligible non-NaN values (insertion sort: T is a few dozen at most); d_t is the RMS over
    the bands where J_t,b - M_b is finite; 1 where no band is (no anchor or no value).
    Replaces numpy's masked-array median, which held several float64 copies of the stack.
    """
    nt, nb, n = surface.shape
    buf = np.empty(nt)
    med = np.empty(nb)
    for k in range(n):
        for b in range(nb):
            m = 0
            for i in range(nt):
                if not eligible[i, k]:
                    continue
                v = np.float64(surface[i, b, k])
                if v == v:
                    m = insert_sorted(buf, m, v)
            med[b] = _median_sorted(buf, m)
        for i in range(nt):
            total = 0.0
            cnt = 0
            for b in range(nb):
                diff = np.float64(surface[i, b, k]) - med[b]
                if np.isfinite(diff):
                    total += diff * diff
                    cnt += 1
            if cnt == 0:
                out[i, k] = 1.0
            else:
                c = np.exp(-((np.sqrt(total / cnt) / sigma) ** 2))
                out[i, k] = c if np.isfinite(c) else 1.0


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
def _keep_signature_lanes(mapped, source, share, count, n_map, n_src, n_u, out):
    """``_keep_signature`` of the first ``count`` pixels of (B, chunk) ``mapped``, ``source``.

    out = u / |u| * |mapped|, u = (1 - share) mapped / |mapped| + share source / |source|;
    a band where that is not finite keeps the mapped value. Band-outer loops over a chunk
    of pixels (the norms summed band by band, in band order, as a per-pixel loop would):
    the divisions of a whole chunk run side by side. ``n_map``, ``n_src``, ``n_u`` (chunk,)
    scratch; ``out`` (B, chunk).
    """
    nb = mapped.shape[0]
    n_map[:count] = 0.0
    n_src[:count] = 0.0
    n_u[:count] = 0.0
    for b in range(nb):
        m = mapped[b]
        src = source[b]
        for q in range(count):
            n_map[q] += m[q] * m[q]
            n_src[q] += src[q] * src[q]
    for q in range(count):
        n_map[q] = np.sqrt(n_map[q])
        n_src[q] = np.sqrt(n_src[q])
    for b in range(nb):
        m = mapped[b]
        src = source[b]
        dst = out[b]
        for q in range(count):
            u = (1.0 - share) * m[q] / n_map[q] + share * src[q] / n_src[q]
            dst[q] = u
            n_u[q] += u * u
    for q in range(count):
        n_u[q] = np.sqrt(n_u[q])
    for b in range(nb):
        m = mapped[b]
        dst = out[b]
        for q in range(count):
            v = dst[q] / n_u[q] * n_map[q]
            dst[q] = v if np.isfinite(v) else m[q]


@njit(cache=True, nogil=True, error_model="numpy")
def keep_signature_fit(mapped, source, share, out):
    """``_keep_signature_lanes`` over (B, N) arrays (share > 0), into ``out`` (B, N) float64."""
    nb, n = mapped.shape
    m = np.empty((nb, LANE_CHUNK))
    s = np.empty((nb, LANE_CHUNK))
    o = np.empty((nb, LANE_CHUNK))
    n_map = np.empty(LANE_CHUNK)
    n_src = np.empty(LANE_CHUNK)
    n_u = np.empty(LANE_CHUNK)
    for p0 in range(0, n, LANE_CHUNK):
        count = min(LANE_CHUNK, n - p0)
        for b in range(nb):
            m[b, :count] = mapped[b, p0 : p0 + count]
            s[b, :count] = source[b, p0 : p0 + count]
        _keep_signature_lanes(m, s, share, count, n_map, n_src, n_u, o)
        for b in range(nb):
            out[b, p0 : p0 + count] = o[b, :count]


@njit(cache=True, nogil=True, error_model="numpy")
def add_candidate_fit(
    gain, offset, source, share, weight, resid, resid_default, quality, acc, acc_w, acc_var, acc_q
):
    """Step 3 of ``_fusion.fuse_dates`` for one candidate date, accumulated in place.

    Per pixel with ``weight`` > 0: r = keep_signature(g J_j + o, J_j) (share <= 0: the plain
    map); if every band of r is finite, acc += w r, acc_w += w, acc_var += w * resid (or
    ``resid_default`` where resid is NaN), acc_q += w * quality. (B, N) / (N,) arrays; the
    accumulators are float64. Runs over chunks of ``LANE_CHUNK`` pixels, band-outer
    (``_keep_signature_lanes``); pixels of zero weight are computed too and then skipped,
    which costs less than breaking the chunk's loops on them.
    """
    nb, n = source.shape
    m = np.empty((nb, LANE_CHUNK))
    s = np.empty((nb, LANE_CHUNK))
    r = np.empty((nb, LANE_CHUNK))
    n_map = np.empty(LANE_CHUNK)
    n_src = np.empty(LANE_CHUNK)
    n_u = np.empty(LANE_CHUNK)
    finite = np.empty(LANE_CHUNK, np.bool_)
    for p0 in range(0, n, LANE_CHUNK):
        count = min(LANE_CHUNK, n - p0)
        for b in range(nb):
            g = gain[b, p0 : p0 + count]
            o = offset[b, p0 : p0 + count]
            src = source[b, p0 : p0 + count]
            mb = m[b]
            sb = s[b]
            for q in range(count):
                x = np.float64(src[q])
                sb[q] = x
                mb[q] = np.float64(g[q]) * x + np.float64(o[q])
        if share > 0.0:
            _keep_signature_lanes(m, s, share, count, n_map, n_src, n_u, r)
        else:
            r[:, :count] = m[:, :count]
        finite[:count] = True
        for b in range(nb):
            rb = r[b]
            for q in range(count):
                if not np.isfinite(rb[q]):
                    finite[q] = False
        for q in range(count):
            k = p0 + q
            wk = weight[k]
            if not (wk > 0.0 and finite[q]):
                continue
            for b in range(nb):
                acc[b, k] += wk * r[b, q]
            acc_w[k] += wk
            rv = np.float64(resid[k])
            acc_var[k] += wk * (rv if np.isfinite(rv) else resid_default)
            acc_q[k] += wk * quality[k]
