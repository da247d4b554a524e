"""The local harmonisation and its robust pre-weight in torch, on any torch device: the twin of
``_harmonisation.harmonise_local`` and ``_harmonisation._agreement`` (numba), chosen with
``FusionConfig.backend = "torch"`` (``FusionConfig.device``: None = CUDA when torch sees
one, else the CPU).

Same semantics as the numba twin, formula by formula (each function names its twin):
the window moments S0, Sx, Sy, Sxx, Sxy, Syy of w = clear weight x pre-weight (a pixel not
finite in every band of both dates has no weight; pixels outside the array are absent), the
ridge fit pulled toward the prior gain, clipped to ``GAIN_BOUNDS`` and shrunk to the prior
where the window holds little weight, the band-mean weighted squared residual; for
``grid_step`` > 1 the same cells anchored to multiples of the step in the whole array
(``origin``), the same window of (2m + 1)^2 cells (``coarse_span``) and the same bilinear
interpolation between cell centres (the residual over the finite nodes only).

How it differs: whole-array tensor operations instead of per-pixel loops. The exact path's
window sums are differences of cumulative sums (the numba twin keeps running sums), and the
per-cell sums of the coarse path are tensor reductions (the twin adds pixel by pixel), and
the bilinear weights are applied along x then along y (the twin sums four products), so
the float64 values differ from the twin's in their last bits: the float32 outputs agree to
about 1e-6 relative (``tests/test_harmonisation_torch.py`` states the tolerances). The
window over cells adds the same cells in the same order as the twin, so the coarse path is
chunk-independent like it (a block with ``coarse_reach`` px of halo gives the whole array's
core); the exact path's cumulative sums depend on where a block starts in their last bits.

Precision: every accumulator and the fit are float64 on every device, as in the twin, so
the two backends stay interchangeable. Float64 is slow on consumer GPUs (1/32 or 1/64 of
the float32 rate) but not on data-centre ones (an H100/H200 runs FP64 at half its FP32
rate), and these passes are bound by memory traffic more than by arithmetic anyway.

Status: measured on the CPU only (``phyvlm-cr benchmark speed --parts harmonisation``): on
one thread it runs at about 0.2x numba's speed on the default coarse grid (0.07x exact),
because eager torch makes one pass over memory per operation where numba fuses a pixel's
two dozen in one; on CPUs numba stays the backend. No GPU was available where this was
written, so the CUDA path has not been run: it uses only device-generic tensor operations
(``tests/test_harmonisation_torch.py`` compares CUDA with the CPU where torch sees a GPU),
and the benchmark prints its figure, with the device's name, where CUDA exists.

Memory: per band, a handful of (Y, X) float64 temporaries (the exact path about a dozen);
the numba twin holds O(r X) scratch. ``pipeline.bench.memory`` models the numba backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._harmonisation import GAIN_BOUNDS, coarse_span

if TYPE_CHECKING:  # torch is optional (the ``vlm`` extra): imported when a function runs
    import torch

#: Least window weight of a fit (the numba twin's ``s0 > 1e-9``).
_MIN_WEIGHT = 1e-9


def import_torch() -> Any:
    """torch, or an ImportError naming the extra that installs it."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "FusionConfig.backend='torch' needs torch, which is not installed: install the "
            "'vlm' extra, pip install 'phyvlm-cr[vlm]' (on a CPU machine first pip install "
            "torch --index-url https://download.pytorch.org/whl/cpu), or use backend='numba'"
        ) from exc
    return torch


def resolve_device(device: str | None) -> torch.device:
    """The torch device of ``FusionConfig.device``: None = CUDA if torch sees one, else CPU.

    A CUDA device on a machine (or torch build) without CUDA is an error that names the fix,
    never a silent fall-back to the CPU.
    """
    torch = import_torch()
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"FusionConfig.device {device!r} is not a torch device: use 'cpu', 'cuda', "
            "'cuda:N' or None (CUDA when available, else CPU)"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"FusionConfig.device={device!r} but torch sees no CUDA device here (a CPU build "
            f"of torch {torch.__version__}, or no GPU on this worker); use device='cpu' or "
            "None (CUDA when available, else CPU)"
        )
    return dev


# --------------------------------------------------------------------------- fronts


def harmonise_local_torch(
    target: Any,
    source: Any,
    weight: Any,
    radius: int,
    prior_gain: Any,
    prior_offset: Any,
    *,
    ridge: float = 4e-3,
    shrink_pixels: float = 30.0,
    residual: bool = False,
    grid_step: int = 1,
    origin: tuple[int, int] = (0, 0),
    device: str | None = None,
    as_tensors: bool = False,
) -> tuple[Any, ...]:
    """``_harmonisation.harmonise_local`` in torch on ``device`` (the semantics are stated there).

    ``target``, ``source`` (B, Y, X) and ``weight`` (Y, X): numpy arrays or tensors (on any
    device; moved to ``device``). Returns (gain, offset[, residual]) as float32 numpy arrays,
    or as float32 tensors on ``device`` with ``as_tensors=True``.
    """
    torch = import_torch()
    dev = resolve_device(device)
    with torch.inference_mode():
        t, s = _tensor(target, dev), _tensor(source, dev)
        w = _tensor(weight, dev, torch.float64)
        _check_shapes("harmonise_local_torch", t, s, w, grid_step)
        out = _harmonise(
            t,
            s,
            w,
            radius,
            prior_gain,
            prior_offset,
            ridge,
            shrink_pixels,
            residual,
            grid_step,
            origin,
        )
        return out if as_tensors else tuple(_numpy(a) for a in out)


def agreement_torch(
    target: Any,
    source: Any,
    gain: Any,
    offset: Any,
    *,
    scale: float,
    darkening: tuple[float, float],
    device: str | None = None,
    as_tensors: bool = False,
) -> Any:
    """``_harmonisation._agreement`` (the robust pre-weight) in torch: (Y, X) float64.

    A numpy array, or a tensor on ``device`` with ``as_tensors=True``.
    """
    torch = import_torch()
    dev = resolve_device(device)
    with torch.inference_mode():
        out = _agreement(_tensor(target, dev), _tensor(source, dev), gain, offset, scale, darkening)
        return out if as_tensors else out.cpu().numpy()


def harmonise_pair_torch(
    target: np.ndarray,
    source: np.ndarray,
    clear_weight: np.ndarray,
    radius: int,
    prior_gain: np.ndarray,
    prior_offset: np.ndarray,
    *,
    scale: float,
    darkening: tuple[float, float],
    ridge: float,
    shrink_pixels: float,
    grid_step: int,
    origin: tuple[int, int],
    device: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One candidate's local map for ``fuse_dates`` (backend "torch"): gain, offset, residual.

    The weight is ``clear_weight`` x the robust pre-weight (``agreement_torch`` against the
    prior map), as the numba branch of ``_fusion._harmonise_candidate`` forms it; both dates
    go to the device once and only the float32 results come back.
    """
    torch = import_torch()
    dev = resolve_device(device)
    with torch.inference_mode():
        t, s = _tensor(target, dev), _tensor(source, dev)
        w = _tensor(clear_weight, dev, torch.float64)
        _check_shapes("harmonise_pair_torch", t, s, w, grid_step)
        w = w * _agreement(t, s, prior_gain, prior_offset, scale, darkening)
        out = _harmonise(
            t, s, w, radius, prior_gain, prior_offset, ridge, shrink_pixels, True, grid_step, origin
        )
        g, o, r = (_numpy(a) for a in out)
        return g, o, r


# --------------------------------------------------------------------------- helpers


def _tensor(a: Any, dev: torch.device, dtype: Any = None) -> torch.Tensor:
    """``a`` as a tensor on ``dev``: float32/float64 kept (every pass reads into float64)."""
    torch = import_torch()
    if not isinstance(a, torch.Tensor):
        arr = np.asarray(a)
        if dtype is None and arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
        a = torch.from_numpy(np.ascontiguousarray(arr))
    elif dtype is None and a.dtype not in (torch.float32, torch.float64):
        a = a.to(torch.float64)
    return a.to(device=dev, dtype=dtype) if dtype is not None else a.to(dev)


def _numpy(a: torch.Tensor) -> np.ndarray:
    return a.cpu().numpy()


def _check_shapes(name: str, t: Any, s: Any, w: Any, grid_step: int) -> None:
    """The numba front's checks, with its messages."""
    if t.ndim != 3 or s.shape != t.shape or tuple(w.shape) != tuple(t.shape[1:]):
        raise ValueError(
            f"{name} needs target and source (B, Y, X) and weight (Y, X), got "
            f"{tuple(t.shape)}, {tuple(s.shape)} and {tuple(w.shape)}"
        )
    if grid_step < 1:
        raise ValueError(f"{name}: grid_step must be >= 1 px, got {grid_step}")


def _per_band(values: Any, nb: int) -> list[float]:
    """A per-band prior (scalar or (B,)) as B Python floats (float64 scalars in the fit)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return [float(v) for v in np.broadcast_to(np.asarray(values, np.float64), (nb,))]


def _smoothstep(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Twin of ``_common._smoothstep``: 0 for x <= lo, 1 for x >= hi, 3u^2 - 2u^3 between;
    NaN stays NaN; with hi == lo the step x >= hi (NaN -> 0)."""
    if hi == lo:
        return (x >= hi).to(x.dtype)
    u = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)  # clamp keeps NaN, as the twin does
    return u * u * (3.0 - 2.0 * u)


def _ridge_fit_shrunk(
    s0: torch.Tensor,
    sx: torch.Tensor,
    sy: torch.Tensor,
    sxx: torch.Tensor,
    sxy: torch.Tensor,
    g0: float,
    o0: float,
    ridge: float,
    a: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``_harmonisation._ridge_fit_shrunk`` (same operations in the same order), on
    whole maps of moments; meaningful where S0 > 1e-9 (the caller masks the rest)."""
    g_lo, g_hi = GAIN_BOUNDS
    inv = 1.0 / s0
    mx = sx * inv
    my = sy * inv
    var = (sxx * inv - mx * mx).clamp(min=0.0)
    cov = sxy * inv - mx * my
    g = ((s0 * cov + ridge * g0) / (s0 * var + ridge)).clamp(g_lo, g_hi)
    o = my - g * mx
    return a * g + (1.0 - a) * g0, a * o + (1.0 - a) * o0


def _mean_squared_residual(
    syy: torch.Tensor,
    sxy: torch.Tensor,
    sy: torch.Tensor,
    sxx: torch.Tensor,
    sx: torch.Tensor,
    s0: torch.Tensor,
    g: torch.Tensor,
    o: torch.Tensor,
) -> torch.Tensor:
    """E_w[(y - g x - o)^2] from the window moments: the residual term of ``harmonise_fit``."""
    return (syy - 2.0 * g * sxy - 2.0 * o * sy + g * g * sxx + 2.0 * g * o * sx) / s0 + o * o


def _band_moments(
    t: torch.Tensor,
    s: torch.Tensor,
    w: torch.Tensor,
    nonzero: torch.Tensor,
    b: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """w x, w y, w x^2, w x y, w y^2 of band b (x = source, y = target) into ``out``
    (5, Y, X) float64, which may be a view into a larger (padded) buffer; returns ``out``.

    Zero-weight pixels add nothing whatever their values (NaN there stays out, as in the
    twin's ``_row_moments``).
    """
    torch = import_torch()
    x = torch.where(nonzero, s[b].to(torch.float64), 0.0)
    y = torch.where(nonzero, t[b].to(torch.float64), 0.0)
    wx = torch.mul(w, x, out=out[0])
    wy = torch.mul(w, y, out=out[1])
    torch.mul(wx, x, out=out[2])
    torch.mul(wx, y, out=out[3])
    torch.mul(wy, y, out=out[4])
    return out


def _usable_weight(t: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The weight where the pixel is finite in every band of both dates, else 0 (float64).

    x - x is 0 for a finite x and NaN for NaN or +-inf, so the sum over the bands of both
    dates is 0 exactly where all are finite (three cheap passes a band instead of isfinite's
    comparisons).
    """
    probe = t[0] - t[0]
    for b in range(t.shape[0]):
        if b:
            probe += t[b] - t[b]
        probe += s[b] - s[b]
    return w.where(probe == 0.0, 0.0)


def _harmonise(
    t: torch.Tensor,
    s: torch.Tensor,
    w: torch.Tensor,
    radius: int,
    prior_gain: Any,
    prior_offset: Any,
    ridge: float,
    shrink_pixels: float,
    residual: bool,
    grid_step: int,
    origin: tuple[int, int],
) -> tuple[torch.Tensor, ...]:
    nb = t.shape[0]
    g0, o0 = _per_band(prior_gain, nb), _per_band(prior_offset, nb)
    fit = (float(ridge), float(shrink_pixels), bool(residual))
    if grid_step > 1:
        oy, ox = (int(v) for v in origin)
        return _fit_coarse(t, s, w, int(radius), int(grid_step), oy, ox, g0, o0, *fit)
    return _fit_exact(t, s, w, int(radius), g0, o0, *fit)


# --------------------------------------------------------------------------- exact (grid_step 1)


def _box_sum(a: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum of ``a`` (..., Y, X) over the (2r+1)^2 window of every pixel, out-of-array pixels
    absent: twin of ``_harmonisation._window_sum`` / the running sums of ``harmonise_fit``,
    as differences of cumulative sums along each axis (float64).

    Along an axis of n values padded with r + 1 zeros before and r after, C = cumsum: the
    window sum of value i is C[i + 2r + 1] - C[i].
    """
    torch = import_torch()
    span = 2 * radius + 1
    for dim in (a.ndim - 1, a.ndim - 2):
        n = a.shape[dim]
        pad = [0, 0] * (a.ndim - 1 - dim) + [radius + 1, radius]
        prefix = torch.cumsum(torch.nn.functional.pad(a, pad), dim)
        a = prefix.narrow(dim, span, n) - prefix.narrow(dim, 0, n)
    return a


def _fit_exact(
    t: torch.Tensor,
    s: torch.Tensor,
    weight: torch.Tensor,
    radius: int,
    g0: list[float],
    o0: list[float],
    ridge: float,
    shrink_pixels: float,
    residual: bool,
) -> tuple[torch.Tensor, ...]:
    """Twin of ``_harmonisation.harmonise_fit``: the fit in the (2r+1)^2 window of every pixel."""
    torch = import_torch()
    nb = t.shape[0]
    w = _usable_weight(t, s, weight)
    nonzero = w != 0.0
    s0 = _box_sum(w, radius)
    has = s0 > _MIN_WEIGHT
    shrink = _smoothstep(s0, 0.2 * shrink_pixels, shrink_pixels)
    gains = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    offsets = torch.empty_like(gains)
    acc = torch.zeros_like(s0) if residual else None
    moments = torch.empty((5,) + tuple(s0.shape), dtype=torch.float64, device=t.device)
    for b in range(nb):
        sx, sy, sxx, sxy, syy = _box_sum(_band_moments(t, s, w, nonzero, b, moments), radius)
        g, o = _ridge_fit_shrunk(s0, sx, sy, sxx, sxy, g0[b], o0[b], ridge, shrink)
        g = torch.where(has, g, g0[b])
        o = torch.where(has, o, o0[b])
        gains[b] = g
        offsets[b] = o
        if acc is not None:
            acc += _mean_squared_residual(syy, sxy, sy, sxx, sx, s0, g, o)
    if acc is None:
        return gains, offsets
    resid = torch.where(has, acc / nb, torch.nan).clamp(min=0.0)
    return gains, offsets, resid.to(torch.float32)


# --------------------------------------------------------------------------- coarse (grid_step > 1)


def _cell_range(origin: int, n: int, step: int) -> tuple[int, int]:
    """Twin of ``_harmonisation._cell_range``: first global cell of a block and the cell count."""
    c0 = origin // step
    return c0, (origin + n - 1) // step - c0 + 1


def _cell_sums(v: torch.Tensor, step: int) -> torch.Tensor:
    """Sums of ``v`` (K, Cy step, Cx step) over each cell of ``step`` x ``step`` px: (K, Cy, Cx).

    Two reshaped reductions (along x within a cell, then along y): one over both axes at
    once is a strided pass several times slower on the CPU.
    """
    k, ny, nx = v.shape
    ncy, ncx = ny // step, nx // step
    return v.reshape(k, ny, ncx, step).sum(3).reshape(k, ncy, step, ncx).sum(2)


def _window_cells(cells: torch.Tensor, m: int) -> torch.Tensor:
    """Twin of ``_harmonisation._window_cells``: sum of ``cells`` (K, Cy, Cx) over the
    (2m+1)^2 cells around each cell, cells outside the block absent.

    The same cells in the same order as the twin (left to right, then top to bottom; an
    absent cell adds an exact 0), so a cell's total does not depend on where the block starts.
    """
    torch = import_torch()
    _, ncy, ncx = cells.shape
    padded = torch.nn.functional.pad(cells, (m, m, 0, 0))
    rows = torch.zeros_like(cells)
    for d in range(2 * m + 1):
        rows += padded[:, :, d : d + ncx]
    padded = torch.nn.functional.pad(rows, (0, 0, m, m))
    out = torch.zeros_like(cells)
    for d in range(2 * m + 1):
        out += padded[:, d : d + ncy, :]
    return out


def _axis_weights(
    origin: int, n: int, step: int, c0: int, ncells: int, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twin of ``_harmonisation._axis_weights``: each pixel's lower node (local, clamped), the
    node after it (clamped to the grid) and the weight of that one; nodes at cell centres."""
    torch = import_torch()
    pos = torch.arange(origin, origin + n, device=dev, dtype=torch.int64)
    u = (pos.to(torch.float64) - 0.5 * (step - 1)) / step
    k = torch.floor(u)
    frac = u - k
    lo = k.to(torch.int64) - c0
    below = lo < 0
    lo = torch.where(below, 0, lo)
    frac = torch.where(below, 0.0, frac)
    above = lo >= ncells - 1
    lo = torch.where(above, ncells - 1, lo)
    frac = torch.where(above, 0.0, frac)
    return lo, (lo + 1).clamp(max=ncells - 1), frac


def _interpolate(
    node: torch.Tensor, ys: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Bilinear interpolation of ``node`` (Cy, Cx) to every pixel (Y, X): the weights of
    ``_harmonisation._interpolate_plane`` ((1 - fy)(1 - fx), ...) applied separably (along
    x on the node rows, then along y), float64."""
    ylo, yhi, fy = ys
    xlo, xhi, fx = xs
    along_x = node[:, xlo] * (1.0 - fx) + node[:, xhi] * fx  # (Cy, X)
    return along_x[ylo] * (1.0 - fy)[:, None] + along_x[yhi] * fy[:, None]


def _interpolate_finite(
    node: torch.Tensor, ys: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Twin of ``_harmonisation._interpolate_finite``: the interpolation over the finite nodes
    only (weights renormalised), NaN where no node with a positive weight is finite.

    A node of weight 0 adds exactly 0 to both sums, so interpolating the finite values (0
    elsewhere) and the finite mask gives the twin's numerator and denominator. (The twin
    keeps an infinite node, which finite moments never give; here it counts as missing.)
    """
    torch = import_torch()
    finite = torch.isfinite(node)
    num = _interpolate(torch.where(finite, node, 0.0), ys, xs)
    den = _interpolate(finite.to(node.dtype), ys, xs)
    return torch.where(den > 0.0, num / den, torch.nan)


def _fit_coarse(
    t: torch.Tensor,
    s: torch.Tensor,
    weight: torch.Tensor,
    radius: int,
    step: int,
    oy: int,
    ox: int,
    g0: list[float],
    o0: list[float],
    ridge: float,
    shrink_pixels: float,
    residual: bool,
) -> tuple[torch.Tensor, ...]:
    """Twin of ``_harmonisation.harmonise_fit_coarse``: the fit once per cell of ``step`` px
    (cells anchored to multiples of ``step`` in the whole array, the block starting at
    (``oy``, ``ox``)), over (2m + 1)^2 cells, interpolated between cell centres."""
    torch = import_torch()
    nb, ny, nx = t.shape
    m = coarse_span(radius, step)
    cy0, ncy = _cell_range(oy, ny, step)
    cx0, ncx = _cell_range(ox, nx, step)
    # the block in its whole cells, zero (absent) outside it: the moments are written into
    # the block's part of a zeroed buffer of whole cells (no padded copy per moment)
    top, left = oy - cy0 * step, ox - cx0 * step
    core = (slice(None), slice(top, top + ny), slice(left, left + nx))

    w = _usable_weight(t, s, weight)
    nonzero = w != 0.0
    cells = torch.zeros((5, ncy * step, ncx * step), dtype=torch.float64, device=t.device)
    cells[0][core[1:]] = w
    s0 = _window_cells(_cell_sums(cells[:1], step), m)[0]
    has = s0 > _MIN_WEIGHT
    shrink = _smoothstep(s0, 0.2 * shrink_pixels, shrink_pixels)
    ys = _axis_weights(oy, ny, step, cy0, ncy, t.device)
    xs = _axis_weights(ox, nx, step, cx0, ncx, t.device)
    gains = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    offsets = torch.empty_like(gains)
    acc = torch.zeros_like(s0)
    for b in range(nb):
        _band_moments(t, s, w, nonzero, b, cells[core])
        sx, sy, sxx, sxy, syy = _window_cells(_cell_sums(cells, step), m)
        g, o = _ridge_fit_shrunk(s0, sx, sy, sxx, sxy, g0[b], o0[b], ridge, shrink)
        g = torch.where(has, g, g0[b])
        o = torch.where(has, o, o0[b])
        gains[b] = _interpolate(g, ys, xs)
        offsets[b] = _interpolate(o, ys, xs)
        if residual:
            acc += _mean_squared_residual(syy, sxy, sy, sxx, sx, s0, g, o)
    if not residual:
        return gains, offsets
    node_r = torch.where(has, acc / nb, torch.nan).clamp(min=0.0)
    return gains, offsets, _interpolate_finite(node_r, ys, xs).to(torch.float32)


# --------------------------------------------------------------------------- pre-weight


def _agreement(
    t: torch.Tensor,
    s: torch.Tensor,
    gain: Any,
    offset: Any,
    scale: float,
    darkening: tuple[float, float],
) -> torch.Tensor:
    """Twin of ``_harmonisation.agreement_fit`` (semantics: ``_harmonisation._agreement``).

    r0 = gain_b J_j + offset_b; w = (1 - darkening(J_i, r0)) / (1 + (d / scale)^2), d the RMS
    over the finite bands of J_i - r0; 0 where w is not finite. (Y, X) float64.
    """
    torch = import_torch()
    nb = t.shape[0]
    g, o = _per_band(gain, nb), _per_band(offset, nb)
    low, high = (float(v) for v in darkening)
    total = torch.zeros(t.shape[1:], dtype=torch.float64, device=t.device)
    count = torch.zeros_like(total)
    sum_t = torch.zeros_like(total)
    sum_r = torch.zeros_like(total)
    any_both = torch.zeros(t.shape[1:], dtype=torch.bool, device=t.device)
    for b in range(nb):
        tv = t[b].to(torch.float64)
        r = g[b] * s[b].to(torch.float64) + o[b]
        diff = tv - r
        finite = torch.isfinite(diff)
        total += torch.where(finite, diff * diff, 0.0)
        count += finite
        both = torch.isfinite(tv) & torch.isfinite(r)
        sum_t += torch.where(both, tv, 0.0)
        sum_r += torch.where(both, r, 0.0)
        any_both |= both
    d = torch.where(count > 0, torch.sqrt(total / count), torch.nan)
    w = 1.0 / (1.0 + (d / scale) ** 2)
    # twin of ``_common._darkening_at``: 0 where unknown or not finite
    dark = 1.0 - _smoothstep(sum_t / sum_r, low, high)
    dark = torch.where(any_both & torch.isfinite(dark), dark, 0.0)
    w = w * (1.0 - dark)
    return torch.where(torch.isfinite(w), w, 0.0)
