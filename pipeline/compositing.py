"""Composites: one quality-weighted, outlier-robust value per pixel and period of a restored stack.

``composite`` groups by a pandas offset alias (``"MS"``, ``"QS"``, ...; periods without a date
are left out; ``period_labels`` names those periods before anything is restored);
``composite_periods`` composites explicit ``[start, end)`` windows, the way a run of many
tiles fills the time axis its tiles share. The per-pixel reduction is
``pipeline.kernels.composite_block``; per-date weights are confidence x gate.

Composites stream: on a dask stack each period's task gathers only that period's dates (the
restored stack keeps the time chunks of ``restore``'s time blocks), so a year is reduced
period by period as its dates are restored, and no task holds the year. The reduction of a
period is the same whichever way its dates arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from ._layers import spatial_attrs, spectral_bands, stack_layers
from .kernels import composite_block

__all__ = [
    "COMPOSITE_LAYERS",
    "composite",
    "composite_periods",
    "composite_variables",
    "period_labels",
]

#: Per-period layers written beside the composited bands: dtype and long_name.
COMPOSITE_LAYERS: dict[str, tuple[type, str]] = {
    "confidence": (np.float32, "quality-weighted mean per-date confidence"),
    "observation_count": (np.uint16, "dates in the period with a restored value"),
    "direct_observation_count": (
        np.uint16,
        "dates whose output is mostly their own (gate >= 0.5)",
    ),
    "no_valid_observation": (np.uint8, "1 where no date of the period has a value"),
}


def composite_variables(bands: Sequence[str]) -> dict[str, tuple[np.dtype, dict[str, Any]]]:
    """Name -> (dtype, attrs) of the (time, y, x) variables ``composite`` returns for a
    restored stack of ``bands``, in order (band attrs are the stack's own: empty here)."""
    out: dict[str, tuple[np.dtype, dict[str, Any]]] = {b: (np.dtype(np.float32), {}) for b in bands}
    for name, (dtype, desc) in COMPOSITE_LAYERS.items():
        out[name] = (np.dtype(dtype), {"long_name": desc})
    return out


def _composite_call(block: np.ndarray, nb: int) -> np.ndarray:
    res = composite_block(block[:, :nb], block[:, nb], block[:, nb + 1])
    out = np.empty((1, nb + 4) + block.shape[2:], dtype=np.float32)
    out[0, :nb] = res.values
    out[0, nb] = res.confidence
    out[0, nb + 1] = res.observation_count
    out[0, nb + 2] = res.direct_count
    out[0, nb + 3] = res.no_valid_observation
    return out


def _period_groups(times: pd.DatetimeIndex, period: str | None) -> list[tuple[Any, np.ndarray]]:
    order = np.argsort(times.values, kind="stable")
    if period is None:
        return [(times[order[0]], order)]
    series = pd.Series(order, index=times[order])
    try:
        grouped = list(series.resample(period))
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"period {period!r} is not a pandas offset alias; use e.g. 'MS' (month start), "
            "'QS' (quarter start), 'YS' (year start) or None for the whole stack"
        ) from exc
    return [(label, grp.to_numpy()) for label, grp in grouped if len(grp)]


def period_labels(times: Sequence[Any], period: str | None = None) -> pd.DatetimeIndex:
    """The time labels ``composite`` gives a stack dated ``times`` (its non-empty periods),
    known before anything is restored: the time axis of a store written in one piece."""
    times = pd.DatetimeIndex(times)
    if not len(times):
        raise ValueError("no dates to composite: the search found nothing")
    return pd.DatetimeIndex([label for label, _ in _period_groups(times, period)], name="time")


def composite(restored: xr.Dataset, *, period: str | None = None) -> xr.Dataset:
    """One quality-weighted, outlier-robust composite per period of a restored stack.

    ``period`` None composites the whole stack into one time step labelled by its first
    date; otherwise a pandas offset alias ("MS", "QS", ...) gives one step per non-empty
    period labelled by the period start. Per-date weights are confidence x gate (plus a small
    floor so dates filled from references count only when nothing better exists), see
    ``pipeline.kernels.composite_block``.

    Returns bands (float32), ``confidence`` (float32), ``observation_count`` and
    ``direct_observation_count`` (uint16: dates with a restored value / mostly from their
    own observation) and ``no_valid_observation`` (uint8).
    """
    if not isinstance(restored, xr.Dataset):
        raise TypeError(f"composite expects an xarray.Dataset, got {type(restored).__name__}")
    bands = spectral_bands(restored)
    if not bands:
        raise ValueError(
            f"nothing to composite: no spectral band among {list(restored.data_vars)}; "
            "pass the output of restore()"
        )
    if "time" not in restored.dims:
        raise ValueError("composite needs a 'time' dimension; pass the output of restore()")
    restored = restored.transpose("time", "y", "x", ...)
    nb = len(bands)
    layers = []
    for b in bands:
        layers.append(restored[b].data)
    for name in ("confidence", "gate"):
        if name in restored:
            layers.append(restored[name].data)
        else:
            layers.append(np.ones(restored[bands[0]].shape, dtype=np.float32))
    # time chunks kept: a period's task must not depend on the other periods' dates
    stack = stack_layers(layers, restored.sizes["time"], whole_time=False)
    lazy = isinstance(stack, da.Array)

    times = pd.DatetimeIndex(restored["time"].values)
    groups = _period_groups(times, period)
    pieces = []
    for _, idx in groups:
        # a contiguous run of dates is a slice (no fancy-index gather across chunks)
        contiguous = len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))
        sub = stack[int(idx[0]) : int(idx[0]) + len(idx)] if contiguous else stack[idx]
        if lazy:
            sub = sub.rechunk({0: -1, 1: -1})
            pieces.append(
                sub.map_blocks(
                    partial(_composite_call, nb=nb),
                    dtype=np.float32,
                    meta=np.empty((0, 0, 0, 0), dtype=np.float32),
                    chunks=((1,), (nb + 4,), sub.chunks[2], sub.chunks[3]),
                    name=f"composite-{tokenize(sub.name, nb)}",
                )
            )
        else:
            pieces.append(_composite_call(sub, nb))
    result = da.concatenate(pieces, axis=0) if lazy else np.concatenate(pieces, axis=0)

    dims = ("time", "y", "x")
    coords = {
        k: v
        for k, v in restored.coords.items()
        if "time" not in v.dims and set(v.dims) <= set(dims)
    }
    coords["time"] = pd.DatetimeIndex([label for label, _ in groups])
    gm_attrs, gm_enc = spatial_attrs(restored, bands)
    data_vars = {}
    for k, b in enumerate(bands):
        data_vars[b] = xr.DataArray(result[:, k], dims=dims, attrs=dict(restored[b].attrs))
    for k, (name, (dtype, desc)) in enumerate(COMPOSITE_LAYERS.items()):
        data_vars[name] = xr.DataArray(
            result[:, nb + k].astype(dtype), dims=dims, attrs={"long_name": desc, **gm_attrs}
        )
    for v in data_vars.values():
        v.attrs.update(gm_attrs)
        v.encoding.update(gm_enc)
    out = xr.Dataset(data_vars, coords=coords)
    out.attrs.update(restored.attrs)
    out.attrs["composite_period"] = "all" if period is None else str(period)
    return out


def composite_periods(
    restored: xr.Dataset, labels: Sequence[Any], edges: Sequence[Any]
) -> xr.Dataset | None:
    """One composite per window ``[edges[i], edges[i + 1])``, labelled ``labels[i]``.

    ``edges`` has one more entry than ``labels`` (``pipeline.tiling.period_axis`` gives both).
    Windows that hold no date of ``restored`` are left out; None when no window holds one.
    Each window is ``composite(..., period=None)`` of its dates, so the values are those of
    ``composite`` with the same periods.
    """
    labels = pd.DatetimeIndex(labels)
    edges = pd.DatetimeIndex(edges)
    if len(edges) != len(labels) + 1:
        raise ValueError(
            f"composite_periods needs one more edge than labels, got {len(edges)} edges for "
            f"{len(labels)} labels: pass the (labels, edges) of pipeline.tiling.period_axis"
        )
    times = pd.DatetimeIndex(restored["time"].values)
    steps = []
    for label, start, end in zip(labels, edges[:-1], edges[1:], strict=True):
        inside = np.flatnonzero((times >= start) & (times < end))
        if len(inside):
            step = composite(restored.isel(time=inside), period=None)
            steps.append(step.assign_coords(time=[label]))
    return xr.concat(steps, dim="time") if steps else None
