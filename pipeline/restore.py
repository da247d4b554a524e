"""Restore a Sentinel-2 L2A datacube: prior -> physical inversion -> temporal reference -> fusion.

``restore`` maps the pure block kernels of ``pipeline.kernels`` (through a ``Prior``) over
spatial chunks and rebuilds a labelled Dataset with the restored bands and quality layers;
``mode="composite"`` hands the restored dates to ``pipeline.compositing.composite`` (re-exported here).

Order of work (DESIGN.md sections 2 and 4):

1. scene parameters (airlight, gamma, clear-sky line, pair gain/offset) once, on a strided
   sample of GLOBAL pixel indices (every s-th row/column), so they do not depend on chunking;
   or given (``scene=``, a ``SceneState`` from ``estimate_scene_state`` over a larger area,
   with ``origin`` / ``grid_shape`` placing the cube in it): a part of an area read with the
   halo below then restores its own pixels exactly as the whole area does (seamless tiles);
2. per chunk and time block (halo = prior.halo + fusion.halo on y/x): transmission,
   confidence, J_phys, per-pixel reference, harmonisation, soft-gated fusion.

Time blocks. With a bounded neighbourhood in time (``FusionConfig.time_window_dates`` /
``time_window_days``: a target date draws its references only from it) the series is cut
into blocks of ``time_block`` target dates (``time_blocks``); each block's task holds its
dates plus the overlap that covers its targets' neighbourhoods, and writes its targets only.
A task's memory then grows with the block and the chunk, not with the length of the search.
What stays global over the series is estimated once and sliced per block: the scene
parameters, the pair gain/offset matrix (T x T x B), each date's clearness. The per-pixel
statistics over dates (the stack evidence's lower envelopes and clear median, the physics
prior's temporal dark object, the spectral-consistency median) are taken over the dates the
block holds: the block's dates plus overlap. So a blocked run equals the whole-series run
exactly when every block's overlap spans the series; otherwise those statistics are local
in time (a season's baseline rather than a year's), which the window asks for anyway.
Without a window the series is one block (the whole time axis per task), as before.

Numpy-backed input is processed in memory as one block; dask-backed input stays lazy (only
the scene sample is computed) and gives the same values for any chunking, because every
spatial window treats out-of-array pixels as absent and the halo covers every window.

Limitations
-----------
* Without a time window each task holds the whole time axis of its chunk (memory ~ T x
  (B + 5) x chunk x 4 bytes x a few temporaries): set ``time_window_dates`` for long series.
* Scene parameters travel inside every task (small: T x T x B floats for the pair fit).
* The default strided scene sample touches every chunk, so for a remote (odc-stac) cube the
  data are read twice (sample, then restore); the flows pass ``scene_sample`` (the cube on a
  coarse grid, read from the COGs' overviews) instead.
* Gamma is fitted against the clearest other date, so radiometric drift between dates biases
  it slightly (toward grey); fitting it after the pair harmonisation would remove that.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ._bands import SCL_BAND, WAVELENGTH_NM
from ._layers import spatial_attrs as _spatial_attrs
from ._layers import spectral_bands as _spectral_bands
from ._layers import stack_layers as _stack_layers
from .compositing import composite
from .kernels import (
    FusionConfig,
    fuse_dates,
    pair_gain_offset,
    reference_quality,
    surface_change,
    time_context,
)
from .priors import (
    DEFAULT_PRIOR,
    BlockLocation,
    PhysicsConfig,
    Prior,
    SceneParams,
    get_prior,
)
from .priors._combined import own_evidence

__all__ = [
    "FusionConfig",
    "QUALITY_LAYERS",
    "SCENE_VARIABLES",
    "SceneState",
    "cloud_evidence",
    "composite",
    "estimate_scene",
    "estimate_scene_state",
    "output_variables",
    "restore",
    "scene_variables",
]

log = logging.getLogger(__name__)

#: Per-date quality layers written beside the restored bands.
QUALITY_LAYERS = (
    "confidence",
    "gate",
    "transmission",
    "reference_days",
    "no_valid_observation",
    "cloud_probability",
    "surface_change",
    "reference_departure",
)
_MODES = ("dates", "composite")
DEFAULT_SAMPLE_PIXELS = 250_000
#: A series longer than this many dates is sampled more sparsely per date, so the scene
#: sample holds no more pixel-dates than a series this long would (``scene_sample_stride``).
SAMPLE_BUDGET_DATES = 12
#: Fewest pixels per date that sparser sampling leaves (64 x 64): per-date scene parameters
#: (airlight, gamma, the clear-sky line) rest on percentiles and fits over these pixels.
MIN_SAMPLE_PIXELS = 4_096
#: Dates per group of the scene state's pair fit (``pair_maps``).
PAIR_FIT_GROUP_DATES = 6
#: Target dates per time block when the fusion's time window is set and ``time_block`` is not.
DEFAULT_TIME_BLOCK = 12


# --------------------------------------------------------------------------- validation


def _validate(cube: Any) -> tuple[xr.Dataset, tuple[str, ...], str | None]:
    """Check the DESIGN section 4 contract; return (cube with (time, y, x) order, bands, scl)."""
    if isinstance(cube, xr.DataArray):
        raise TypeError(
            "restore expects an xarray.Dataset with one variable per band, got a DataArray; "
            "fix: cube.to_dataset(dim='band') if the bands are along a 'band' dimension"
        )
    if not isinstance(cube, xr.Dataset):
        raise TypeError(f"restore expects an xarray.Dataset, got {type(cube).__name__}")
    bands = _spectral_bands(cube)
    if not bands:
        raise ValueError(
            f"the cube has no Sentinel-2 spectral band: its variables are {list(cube.data_vars)}; "
            f"restore needs float reflectance variables named by asset key "
            f"({', '.join(WAVELENGTH_NM)}); fix: rename them, e.g. cube.rename(blue='B02')"
        )
    scl = SCL_BAND if SCL_BAND in cube.data_vars else None
    for name in bands + ((scl,) if scl else ()):
        var = cube[name]
        dims = tuple(var.dims)
        if "time" not in dims:
            raise ValueError(
                f"variable {name!r} has dims {dims} but restore needs a 'time' dimension "
                "(dims ('time', 'y', 'x')); fix: for a single date use "
                "cube.expand_dims(time=[np.datetime64('2024-06-01')]), or rename the date "
                "dimension to 'time'"
            )
        if set(dims) != {"time", "y", "x"}:
            raise ValueError(
                f"variable {name!r} has dims {dims}; restore needs exactly ('time', 'y', 'x'); "
                "fix: rename the spatial dims (e.g. cube.rename(latitude='y', longitude='x')) "
                "and drop or select extra dims (e.g. .squeeze('band'))"
            )
        if name != scl and not np.issubdtype(var.dtype, np.floating):
            raise TypeError(
                f"band {name!r} has dtype {var.dtype}; restore needs float reflectance with NaN "
                "nodata, not digital numbers; fix: scale it, e.g. "
                f"cube[{name!r}].where(cube[{name!r}] != 0).astype('float32') / 10000 (minus "
                "1000 DN first for processing baseline >= 04.00), or load with pipeline.cube"
            )
    cube = cube.transpose("time", "y", "x", ...)
    if cube.sizes["time"] < 1:
        raise ValueError("the cube has an empty 'time' dimension")
    return cube, bands, scl


def _days(cube: xr.Dataset) -> np.ndarray:
    """Days of each date (float64) relative to the first, from the time coordinate."""
    if "time" not in cube.coords:
        return np.arange(cube.sizes["time"], dtype=np.float64)
    t = cube["time"].values
    if np.issubdtype(t.dtype, np.datetime64):
        t = t.astype("datetime64[ns]")
        return (t - t[0]) / np.timedelta64(1, "D")
    if np.issubdtype(t.dtype, np.number):
        return t.astype(np.float64) - float(t[0])
    raise TypeError(
        f"the 'time' coordinate has dtype {t.dtype}; restore needs datetime64 (or numeric days); "
        "fix: cube.assign_coords(time=pd.to_datetime(cube.time.values))"
    )


def _split_options(
    prior: str | Prior, fusion: FusionConfig | dict | None, options: dict[str, Any]
) -> tuple[Prior, FusionConfig, int | None, int | None]:
    options = dict(options)
    sample_pixels = options.pop("sample_pixels", None)
    sample_pixels = None if sample_pixels is None else int(sample_pixels)
    time_block = options.pop("time_block", None)
    if time_block is not None and (
        isinstance(time_block, bool)
        or not isinstance(time_block, int | np.integer)
        or time_block < 1
    ):
        raise ValueError(
            f"time_block must be a whole number of dates >= 1 (or None), got {time_block!r}; "
            "fix: e.g. time_block=12"
        )
    fusion_names = {f.name for f in fields(FusionConfig)}
    prior_names = {f.name for f in fields(PhysicsConfig)} if isinstance(prior, str) else set()
    fusion_kw = {k: options.pop(k) for k in list(options) if k in fusion_names}
    prior_kw = {k: options.pop(k) for k in list(options) if k in prior_names}
    if options:
        valid = sorted(fusion_names | prior_names | {"sample_pixels", "period", "time_block"})
        raise TypeError(f"unknown restore option(s) {sorted(options)}; valid: {', '.join(valid)}")
    if fusion is None:
        cfg = FusionConfig()
    elif isinstance(fusion, FusionConfig):
        cfg = fusion
    elif isinstance(fusion, dict):
        cfg = FusionConfig(**fusion)
    else:
        raise TypeError(
            f"fusion must be a FusionConfig, a dict or None, got {type(fusion).__name__}"
        )
    if fusion_kw:
        cfg = replace(cfg, **fusion_kw)
    return (
        get_prior(prior, **prior_kw),
        cfg,
        sample_pixels,
        (None if time_block is None else int(time_block)),
    )


# --------------------------------------------------------------------------- arrays


def _stack(
    cube: xr.Dataset,
    bands: tuple[str, ...],
    scl: str | None,
    extra: tuple[str, ...] = (),
    *,
    whole_time: bool = True,
):
    """(T, B [+1 SCL] [+ extra], Y, X) float32 array, numpy or dask (band one chunk; time one
    chunk unless ``whole_time`` is False)."""
    names = bands + ((scl,) if scl else ()) + extra
    return _stack_layers([cube[n].data for n in names], cube.sizes["time"], whole_time=whole_time)


class TimeBlock(NamedTuple):
    """Target dates [start, stop) of one time block and the dates [c0, c1) it holds."""

    start: int
    stop: int
    c0: int
    c1: int


def time_blocks(days: np.ndarray, cfg: FusionConfig, time_block: int | None) -> list[TimeBlock]:
    """The series cut into blocks of ``time_block`` target dates, each with the overlap that
    covers its targets' neighbourhoods in time (``FusionConfig.time_window_*``).

    None: one block when the window is unbounded (the whole series), ``DEFAULT_TIME_BLOCK``
    target dates per block when it is bounded.
    """
    nt = len(days)
    if time_block is None:
        time_block = DEFAULT_TIME_BLOCK if cfg.windowed else nt
    size = max(1, min(int(time_block), nt))
    blocks = []
    for start in range(0, nt, size):
        stop = min(start + size, nt)
        c0, c1 = time_context(days, start, stop, cfg)
        blocks.append(TimeBlock(start, stop, c0, c1))
    return blocks


def _block_params(params: dict[str, Any], block: TimeBlock, nt: int) -> dict[str, Any]:
    """The per-date entries of ``params`` for one time block (pair maps: its own T x T slice)."""
    c0, c1 = block.c0, block.c1
    out = dict(params)
    out.update(
        days=params["days"][c0:c1],
        scene=_scene_take(params["scene"], slice(c0, c1), nt),
        pair_gain=params["pair_gain"][c0:c1, c0:c1],
        pair_offset=params["pair_offset"][c0:c1, c0:c1],
        date_clearness=params["date_clearness"][c0:c1],
        targets=np.arange(block.start - c0, block.stop - c0, dtype=np.intp),
    )
    forced = params.get("forced_reference")
    if forced is not None:
        local = forced[block.start : block.stop] - c0
        inside = (forced[block.start : block.stop] >= c0) & (local < c1 - c0)
        out["forced_reference"] = np.where(inside, local, -1)
    return out


def scene_sample_stride(
    shape: tuple[int, int], dates: int, sample_pixels: int | None = None
) -> int:
    """Stride of the scene sample of a ``dates``-date series on a grid of ``shape``.

    ``sample_pixels`` (the caller's, per date) is kept as given. By default the stride keeps
    about ``DEFAULT_SAMPLE_PIXELS`` per date up to ``SAMPLE_BUDGET_DATES`` dates; a longer
    series gets the coarsest stride whose sample holds no more pixel-dates than a
    ``SAMPLE_BUDGET_DATES``-date series of the same grid (but at least ``MIN_SAMPLE_PIXELS``
    per date). Why: the scene estimation holds the whole sample at once on one worker (the
    prior's layers over every date of it, and the pair fit's float64 copies), so at the
    per-date default a year of 146 dates needed 12 times the memory of a 12-date search
    (several GiB for a 1024 px area); it now needs about as much. The price: for a long
    series each date's parameters rest on fewer pixels (146 dates of a 1024 px area: about
    9 000 per date instead of 117 000).
    """
    stride = sample_stride(shape, DEFAULT_SAMPLE_PIXELS if sample_pixels is None else sample_pixels)
    if sample_pixels is not None or dates <= SAMPLE_BUDGET_DATES:
        return stride
    ny, nx = shape

    def pixels(s: int) -> int:
        return math.ceil(ny / s) * math.ceil(nx / s)

    budget = SAMPLE_BUDGET_DATES * pixels(stride)
    while dates * pixels(stride) > budget and pixels(stride + 1) >= MIN_SAMPLE_PIXELS:
        stride += 1
    return stride


def sample_stride(shape: tuple[int, int], sample_pixels: int = DEFAULT_SAMPLE_PIXELS) -> int:
    """Stride s of the scene sample: every s-th row and column keeps <= ``sample_pixels`` per date."""
    ny, nx = shape
    return max(1, math.ceil(math.sqrt(ny * nx / max(sample_pixels, 1))))


def _sample(arr, sample_pixels: int | None) -> tuple[np.ndarray, int]:
    """Strided sample of global pixel indices -> (T, C, N) float32 and the stride
    (about ``sample_pixels`` per date; None: ``scene_sample_stride`` of the series)."""
    stride = scene_sample_stride(tuple(arr.shape[2:]), int(arr.shape[0]), sample_pixels)
    sub = arr[:, :, ::stride, ::stride]
    if isinstance(sub, da.Array):
        sub = sub.compute()
    sub = np.asarray(sub, dtype=np.float32)
    return sub.reshape(sub.shape[0], sub.shape[1], -1), stride


def _coarse_sample(
    scene_sample: xr.Dataset, cube: xr.Dataset, bands: tuple[str, ...], scl: str | None
) -> tuple[np.ndarray, int]:
    """``scene_sample`` (the cube on a coarser grid) as the (T, C, N) float32 sample, and its stride."""
    sample, sample_bands, sample_scl = _validate(scene_sample)
    missing = [b for b in bands + ((scl,) if scl else ()) if b not in sample.data_vars]
    if missing:
        raise ValueError(
            f"scene_sample lacks {missing} of the cube; fix: load it with the cube's CubeConfig "
            "(pipeline.cube.load_scene_sample(items, config, cube.odc.geobox))"
        )
    if sample.sizes["time"] != cube.sizes["time"] or (
        "time" in sample.coords
        and "time" in cube.coords
        and not np.array_equal(sample["time"].values, cube["time"].values)
    ):
        raise ValueError(
            f"scene_sample has {sample.sizes['time']} dates, the cube {cube.sizes['time']} (or "
            "other dates); fix: load both from the same items, and give the sample the cube's "
            "time coordinate if the cube's was replaced"
        )
    arr = np.asarray(_stack(sample, bands, scl), dtype=np.float32)  # computes a lazy sample
    stride = max(
        1, round(math.sqrt(cube.sizes["y"] * cube.sizes["x"] / (arr.shape[2] * arr.shape[3])))
    )
    return arr.reshape(arr.shape[0], arr.shape[1], -1), stride


def cloud_evidence(
    cube: xr.Dataset,
    *,
    prior: str | Prior = DEFAULT_PRIOR,
    scene: SceneState | None = None,
    origin: tuple[int, int] = (0, 0),
    grid_shape: tuple[int, int] | None = None,
    time_window_dates: int | None = None,
    time_block: int | None = None,
    **prior_options: Any,
) -> xr.Dataset:
    """The prior's fused cloud evidence for an in-memory cube, without the fusion step:
    ``cloud_probability`` (1 - p_clear, as ``restore`` writes it) and the prior's
    ``transmission``, (time, y, x). A fraction of a restore's cost (the self-validation uses
    it to choose its hold-out). ``scene``, ``origin``, ``grid_shape``, ``time_window_dates``
    and ``time_block`` as in ``restore``: with a time window the evidence is read block by
    block, each from its block's dates, as the restore reads it."""
    cube, bands, scl = _validate(cube)
    prior_obj = get_prior(prior, **prior_options)
    arr = np.asarray(_stack(cube, bands, scl))
    nb = len(bands)
    if scene is not None:
        scene_params = scene.for_cube(cube).scene
    else:
        sample, _ = _sample(arr, None)
        scene_params = prior_obj.estimate_scene(
            sample[:, :nb], bands, sample[:, nb] if scl else None
        )
    shape = grid_shape or (int(arr.shape[2]), int(arr.shape[3]))
    location = BlockLocation((int(origin[0]), int(origin[1])), shape)
    nt = arr.shape[0]
    cfg = FusionConfig(time_window_dates=time_window_dates)
    cloud = np.empty((nt,) + arr.shape[2:], np.float32)
    transmission = np.empty_like(cloud)
    for block in time_blocks(_days(cube), cfg, time_block):
        part = arr[block.c0 : block.c1]
        pb, layers = prior_obj.block_at(
            np.ascontiguousarray(part[:, :nb], dtype=np.float32),
            bands,
            _scene_take(scene_params, slice(block.c0, block.c1), nt),
            part[:, nb] if scl else None,
            location,
        )
        ev = pb.evidence if pb.evidence is not None else own_evidence(prior_obj, pb, layers)
        rows = slice(block.start - block.c0, block.stop - block.c0)
        cloud[block.start : block.stop] = (1.0 - _clear_share(ev))[rows]
        transmission[block.start : block.stop] = np.asarray(pb.transmission)[rows]
    dims = ("time", "y", "x")
    coords = {k: v for k, v in cube.coords.items() if set(v.dims) <= set(dims)}
    return xr.Dataset(
        {"cloud_probability": (dims, cloud), "transmission": (dims, transmission)},
        coords=coords,
    )


def estimate_scene(
    cube: xr.Dataset,
    *,
    prior: str | Prior = DEFAULT_PRIOR,
    sample_pixels: int | None = None,
) -> SceneParams:
    """Scene parameters of ``cube`` as ``restore`` estimates them (computes only the sample)."""
    cube, bands, scl = _validate(cube)
    prior = get_prior(prior)
    sample, _ = _sample(_stack(cube, bands, scl), sample_pixels)
    nb = len(bands)
    return prior.estimate_scene(sample[:, :nb], bands, sample[:, nb] if scl else None)


@dataclass(frozen=True, eq=False)
class SceneState:
    """Everything ``restore`` derives from its scene sample, for a set of dates.

    scene: the prior's ``SceneParams`` (airlight, gamma, clear-sky line, and its ``extras``,
    e.g. the stack evidence's dark-object excess per date); pair_gain / pair_offset: (T, T, B)
    harmonisation of date j onto date i fitted on pixels clear on both; date_clearness: (T,)
    each date's clear share (its rank as a reference); time: the T dates (datetime64, or
    None when the sample had no time coordinate); sample_shape: (rows, columns) of the
    sample it came from.

    Estimated once per run area (``estimate_scene_state``) and passed to every ``restore``
    of a part of that area (``restore(part, scene=state)``): the parts then restore with one
    set of scene parameters, so a tiled run equals a run of the whole area as one grid.
    A part may hold a subset of the dates (a tile outside an orbit's swath): ``restore``
    takes the state's entries for the part's dates.
    """

    scene: SceneParams
    pair_gain: np.ndarray
    pair_offset: np.ndarray
    date_clearness: np.ndarray
    time: np.ndarray | None
    sample_shape: tuple[int, int]

    def __dask_tokenize__(self) -> tuple:
        return (
            "SceneState",
            tokenize(self.scene, self.pair_gain, self.pair_offset, self.date_clearness),
            tokenize(self.time),
        )

    def for_cube(self, cube: xr.Dataset) -> SceneState:
        """The state of the dates ``cube`` holds (all of them must be in the state)."""
        nt = len(self.date_clearness)
        if self.time is None or "time" not in cube.coords:
            if cube.sizes["time"] != nt:
                raise ValueError(
                    f"the scene state holds {nt} dates, the cube {cube.sizes['time']}; fix: "
                    "estimate the state from a sample with the cube's time coordinate"
                )
            return self
        wanted = np.asarray(cube["time"].values).astype("datetime64[ns]")
        known = np.asarray(self.time).astype("datetime64[ns]")
        where = {t: i for i, t in enumerate(known)}
        missing = [str(t)[:10] for t in wanted if t not in where]
        if missing:
            raise ValueError(
                f"the scene state has no parameters for the cube's date(s) {missing}; fix: "
                "estimate it (estimate_scene_state) from a sample of every item of the run"
            )
        idx = np.array([where[t] for t in wanted], dtype=np.intp)
        if np.array_equal(idx, np.arange(nt)):
            return self
        return SceneState(
            scene=_scene_take(self.scene, idx, nt),
            pair_gain=self.pair_gain[np.ix_(idx, idx)],
            pair_offset=self.pair_offset[np.ix_(idx, idx)],
            date_clearness=self.date_clearness[idx],
            time=known[idx],
            sample_shape=self.sample_shape,
        )


def _scene_take(scene: SceneParams, idx: np.ndarray | slice, nt: int) -> SceneParams:
    """``scene`` at the dates ``idx`` (indices, or a slice [c0, c1)): its per-date arrays
    and per-date extras; arrays that are not per date are kept whole."""

    def take(a: Any) -> Any:
        a = np.asarray(a)
        return a[idx] if a.ndim >= 1 and a.shape[0] == nt else a

    return replace(
        scene,
        airlight=take(scene.airlight),
        gamma=take(scene.gamma),
        hot_slope=take(scene.hot_slope),
        hot_intercept=take(scene.hot_intercept),
        extras={k: take(v) for k, v in scene.extras.items()},
    )


def _state_from_sample(
    sample: np.ndarray,
    bands: tuple[str, ...],
    has_scl: bool,
    prior: Prior,
    cfg: FusionConfig,
    time: np.ndarray | None,
    sample_shape: tuple[int, int],
) -> SceneState:
    """The scene state from a (T, B [+1 SCL], N) float32 sample (see ``SceneState``)."""
    nb = len(bands)
    sample_bands = sample[:, :nb]
    sample_scl = sample[:, nb] if has_scl else None
    scene = prior.estimate_scene(sample_bands, bands, sample_scl)
    sb = prior.sample_block(sample_bands, bands, scene, sample_scl)
    quality = reference_quality(sb.transmission, sb.confidence)
    # the evidence on the sample: the global pair map is fitted on pixels clear on both
    # dates (scene-wide haze would be absorbed by it), and each date's clear share ranks it
    # as a reference candidate
    sample_ev = sb.evidence if sb.evidence is not None else own_evidence(prior, sb, None)
    p_clear = _clear_share(sample_ev)
    observed = np.isfinite(sample_bands).all(axis=1)
    date_clearness = np.array(
        [p_clear[t][observed[t]].mean() if observed[t].any() else 0.0 for t in range(len(sample))]
    )
    # target side clear (evidence too), source side as much surface as it shows: the map
    # absorbs a source's scene-wide haze, never the target's (``fuse_dates``, step 3)
    pair_gain, pair_offset = pair_maps(sb.surface, (quality * p_clear) ** 2, cfg, quality**2)
    return SceneState(scene, pair_gain, pair_offset, date_clearness, time, sample_shape)


def pair_maps(
    surface: np.ndarray,
    weight: np.ndarray,
    cfg: FusionConfig,
    source_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``pair_gain_offset`` of every date pair of a (T, B, N) sample, fitted two groups of
    ``PAIR_FIT_GROUP_DATES`` dates at a time.

    Why: the robust fit keeps a weight per pair and pixel (T x T x N float64), which grew
    with the square of the dates (0.7 GiB at 146 dates where 12 dates need 46 MB). Each
    pair's fit uses only its own two dates, so fitting the pairs group by group gives the
    same values as one fit over all dates (``tests/test_time_blocks.py`` checks it), in the
    memory of a ``2 x PAIR_FIT_GROUP_DATES``-date series; the dates within a group are fitted
    again with every other group (about twice the arithmetic of one fit: a second or two).
    """
    kwargs: dict[str, Any] = {
        "ridge": cfg.harmonise_ridge,
        "shrink_pixels": cfg.harmonise_shrink_pixels,
    }
    nt, nb = surface.shape[:2]
    size = PAIR_FIT_GROUP_DATES
    if nt <= 2 * size:
        return pair_gain_offset(surface, weight, source_weight=source_weight, **kwargs)
    gain = np.ones((nt, nt, nb), np.float32)
    offset = np.zeros((nt, nt, nb), np.float32)
    groups = [np.arange(start, min(start + size, nt)) for start in range(0, nt, size)]
    for a, first in enumerate(groups):
        for second in groups[a + 1 :]:
            idx = np.concatenate([first, second])
            g, o = pair_gain_offset(
                surface[idx],
                weight[idx],
                source_weight=None if source_weight is None else source_weight[idx],
                **kwargs,
            )
            pairs = np.ix_(idx, idx)
            gain[pairs], offset[pairs] = g, o
    return gain, offset


def estimate_scene_state(
    cube_or_sample: xr.Dataset,
    prior: str | Prior = DEFAULT_PRIOR,
    fusion: FusionConfig | dict | None = None,
    *,
    coarse: bool = False,
    sample_pixels: int | None = None,
) -> SceneState:
    """The scene state ``restore`` would estimate for ``cube_or_sample`` (see ``SceneState``).

    ``coarse=False``: a strided sample of the cube (every s-th row and column, about
    ``sample_pixels`` per date; computes only the sample). ``coarse=True``: the argument is a
    scene sample already (``pipeline.cube.load_scene_sample``: the run area on a coarse grid,
    read from the COGs' overviews) and every pixel of it is used.
    """
    prior_obj, cfg, _, _ = _split_options(prior, fusion, {})
    data, bands, scl = _validate(cube_or_sample)
    arr = _stack(data, bands, scl)
    if coarse:
        sample = np.asarray(arr, dtype=np.float32)  # computes a lazy sample
        sample = sample.reshape(sample.shape[0], sample.shape[1], -1)
        shape = (int(data.sizes["y"]), int(data.sizes["x"]))
    else:
        sample, stride = _sample(arr, sample_pixels)
        shape = (math.ceil(data.sizes["y"] / stride), math.ceil(data.sizes["x"] / stride))
    time = data["time"].values if "time" in data.coords else None
    return _state_from_sample(sample, bands, scl is not None, prior_obj, cfg, time, shape)


def _restore_block(
    block: np.ndarray,
    params: dict[str, Any],
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Block kernel: (T, B [+1 SCL] [+L stored], y, x) float32 -> (N, B + Q + L, y, x) float32
    (Q = ``len(QUALITY_LAYERS)``).

    Output: bands, quality layers, then the prior's L extra ``layers``, for the N dates
    ``params["targets"]`` (all T by default) of the T the block holds. ``origin`` is the
    block's first pixel in the whole array (the prior's ``BlockLocation``).
    """
    bands = params["bands"]
    nb = len(bands)
    nl = len(params["prior"].layers)
    data = np.ascontiguousarray(block[:, :nb], dtype=np.float32)
    targets = params.get("targets")
    if targets is None:
        targets = np.arange(data.shape[0], dtype=np.intp)
    out = np.empty((targets.size, nb + len(QUALITY_LAYERS) + nl) + data.shape[2:], np.float32)
    if nl:
        out[:, nb + len(QUALITY_LAYERS) :] = np.nan
    if np.isnan(data).all():
        # Outside every footprint (a search area larger than the data): nothing to restore.
        out[:, : nb + len(QUALITY_LAYERS)] = np.nan
        out[:, nb : nb + 2] = 0.0  # confidence, gate (as the kernels leave never-seen pixels)
        out[:, nb + 4] = 1.0  # no_valid_observation
        return out
    scl = block[:, nb] if params["has_scl"] else None
    prior: Prior = params["prior"]
    stored_at = nb + int(params["has_scl"])
    stored = block[:, stored_at : stored_at + nl] if params["stored_layers"] else None
    gy, gx = params.get("grid_origin", (0, 0))
    # the block's first pixel in the whole grid: the priors' global layouts and the coarse
    # harmonisation grid are anchored there, so a tile read with a halo matches a whole run
    origin = (origin[0] + gy, origin[1] + gx)
    location = BlockLocation(origin, params["shape"], stored)
    pb, layers = prior.block_at(data, bands, params["scene"], scl, location)
    if nl and layers is not None:
        out[:, nb + len(QUALITY_LAYERS) :] = np.asarray(layers)[targets]
    evidence = pb.evidence if pb.evidence is not None else own_evidence(prior, pb, layers)
    forced = params.get("forced_reference")
    fr = fuse_dates(
        data,
        pb.surface,
        pb.transmission,
        pb.confidence,
        params["days"],
        params["pair_gain"],
        params["pair_offset"],
        params["fusion"],
        band_transmission=pb.band_transmission,
        airlight=params["scene"].airlight,
        bands=bands,
        evidence=(evidence.cloud, evidence.shadow),
        date_clearness=params["date_clearness"],
        forced_reference=forced,
        targets=targets,
        origin=origin,
    )
    out[:, :nb] = fr.output
    out[:, nb] = fr.confidence
    out[:, nb + 1] = fr.gate
    out[:, nb + 2] = fr.transmission
    out[:, nb + 3] = fr.reference_days
    out[:, nb + 4] = fr.no_valid_observation
    out[:, nb + 5] = fr.cloud_probability
    # the clear dates around each target, read as the fusion read them (p_clear >= 0.5)
    out[:, nb + 6] = surface_change(data, _clear_share(evidence) >= 0.5, targets)
    out[:, nb + 7] = fr.reference_departure
    return out


def _block_call(
    block: np.ndarray, params: dict[str, Any], block_info: dict | None = None
) -> np.ndarray:
    origin = (0, 0)
    if block_info is not None:  # global first pixel of this halo-padded block
        loc = block_info[0]["chunk-location"]
        (dy, dx), (ychunks, xchunks) = params["depth"], params["chunks"]
        origin = (
            sum(ychunks[: loc[2]]) - (dy if loc[2] else 0),
            sum(xchunks[: loc[3]]) - (dx if loc[3] else 0),
        )
    return _restore_block(block, params, origin)


def _keep_annotations() -> None:
    """Turn dask's low-level task fusion off in this process, so resource annotations count.

    Fusion rebuilds the graph as a plain dict and drops layer annotations (dask 2026.8), so
    a prior's ``resources`` (e.g. {"GPU": 1}) would silently not reach the scheduler. Costs
    a few more, smaller tasks; set only when a prior asks for resources.
    """
    if dask.config.get("optimization.fuse.active", None) is not False:
        log.info("prior requests dask resources: low-level task fusion turned off to keep them")
        dask.config.set({"optimization.fuse.active": False})


def _core_chunks(padded: da.Array, axis: int, depth: int) -> tuple[int, ...]:
    """Chunk sizes before the halo was added (overlap may have rechunked the input)."""
    sizes = padded.chunks[axis]
    n = len(sizes)
    return tuple(c - depth * ((i > 0) + (i < n - 1)) for i, c in enumerate(sizes))


# --------------------------------------------------------------------------- restore


def restore(
    cube: xr.Dataset,
    *,
    prior: str | Prior = DEFAULT_PRIOR,
    mode: str = "dates",
    fusion: FusionConfig | dict | None = None,
    scene_sample: xr.Dataset | None = None,
    scene: SceneState | None = None,
    origin: tuple[int, int] | None = None,
    grid_shape: tuple[int, int] | None = None,
    forced_reference: np.ndarray | None = None,
    dates: Sequence[int] | None = None,
    **options: Any,
) -> xr.Dataset:
    """Remove clouds from a (time, y, x) Sentinel-2 L2A reflectance cube.

    Parameters
    ----------
    cube
        Dataset per DESIGN section 4: one float variable per band named by asset key (any
        subset of the L2A bands), NaN nodata, optional ``SCL`` (0 = nodata), coordinates
        time / y / x (and ``spatial_ref``, kept). numpy- or dask-backed.
    prior
        A registry name (``"physics"``), a base prior joined with cloud-evidence sources
        (``"physics+stack"``, the default; ``"physics+stack+csmask"``), or a
        ``pipeline.priors.Prior``.
    mode
        ``"dates"``: one restored image per input date. ``"composite"``: restore, then
        ``composite(..., period=options["period"])``.
    fusion
        ``FusionConfig`` (or a dict of its fields) for reference choice, harmonisation, gate.
    scene_sample
        The same dates and bands on a coarser grid (``pipeline.cube.load_scene_sample``, read
        from the COGs' overviews) to estimate the scene parameters from, instead of a strided
        sample of ``cube``: a strided sample of a lazy cube reads every chunk, so the data
        would be read twice. Default: the strided sample (right for in-memory cubes).
    scene
        A ``SceneState`` estimated beforehand (``estimate_scene_state``), typically over a
        larger area the cube is part of (a tiled run's area): the cube then restores with
        those scene parameters, pair harmonisation and date ranks instead of its own, so
        the parts of an area agree with the area restored whole. Excludes ``scene_sample``.
    origin, grid_shape
        The cube's first (row, column) in a larger grid, and that grid's (rows, columns)
        (a tile read with its halo, inside the run's grid): priors with a global spatial
        layout (the VLM prior's crop grid) lay it out on the grid, not on the cube.
        Default: the cube is the grid.
    forced_reference
        (T, Y, X) int: the reference date index per target date and pixel (-1: chosen as
        usual), for in-memory cubes only. The quality benchmark's oracle row uses it to show
        what the reference choice costs; a production run leaves it None.
    dates
        Indices of the dates to restore (default: all). The other dates still serve as
        references and inform the scene parameters; the output holds these dates only, each
        restored in its time block as the whole restore would. In-memory cubes (the
        self-validation restores just the dates it clouded).
    **options
        Fields of ``PhysicsConfig`` (when ``prior`` is a name) and of ``FusionConfig``,
        ``sample_pixels`` (pixels per date of the scene-parameter sample; default
        ``scene_sample_stride``: fewer per date for a series longer than 12 dates),
        ``period`` (composite mode),
        ``time_block`` (target dates per time block, see the module docstring; default the
        whole series without a time window, ``DEFAULT_TIME_BLOCK`` with one).

    Returns
    -------
    Dataset with dims (time, y, x): the bands (float32, same names), ``confidence``,
    ``gate``, ``transmission`` (float32 0..1, t at 490 nm), ``reference_days`` (float32,
    reference date minus target date in days, NaN where none was used),
    ``no_valid_observation`` (uint8), ``cloud_probability`` (float32 0..1, the fused cloud
    evidence: probability the observation is cloud-, haze- or shadow-contaminated),
    ``surface_change`` (float32, RMS change of the surface between the clear dates around the
    date: what a temporal reference can miss; NaN where fewer than two tell it),
    ``reference_departure`` (float32, RMS over bands of the observation minus its harmonised
    reference; NaN where there is none); ``gamma``
    (time) and ``airlight`` (time, band); attrs
    ``prior``, ``prior_params`` and ``fusion_params`` (JSON). Lazy for dask input.
    """
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(_MODES)}")
    period = options.pop("period", None)
    if period is not None and mode != "composite":
        raise TypeError("period= is only used with mode='composite'")
    prior_obj, cfg, sample_pixels, time_block = _split_options(prior, fusion, options)
    cube, bands, scl = _validate(cube)
    days = _days(cube)
    if (cfg.windowed or time_block is not None) and np.any(np.diff(days) < 0):
        raise ValueError(
            "a time window or time blocks need the dates in time order; "
            "fix: cube = cube.sortby('time')"
        )
    blocks = time_blocks(days, cfg, time_block)
    # A prior's own layers from an earlier run (attach_stored_prior) are reused, not recomputed.
    stored = prior_obj.layers if all(n in cube.data_vars for n in prior_obj.layers) else ()
    # time blocks: keep the input's time chunks so no task holds the whole series
    arr = _stack(cube, bands, scl, stored, whole_time=len(blocks) == 1)
    nb = len(bands)

    if scene is not None:
        if scene_sample is not None:
            raise TypeError("give restore either scene= or scene_sample=, not both")
        state = scene.for_cube(cube)
        source = "scene state"
    else:
        if scene_sample is not None:
            sample, _ = _coarse_sample(scene_sample, cube, bands, scl)
            sample_shape = (int(scene_sample.sizes["y"]), int(scene_sample.sizes["x"]))
            source = "coarse grid"
        else:
            sample, stride = _sample(arr, sample_pixels)
            sample_shape = (math.ceil(arr.shape[2] / stride), math.ceil(arr.shape[3] / stride))
            source = "strided"
        # the sample's prior layers are dropped with it: an in-memory cube is sampled whole,
        # and they would sit beside the block's own layers through the whole restoration
        state = _state_from_sample(
            sample, bands, scl is not None, prior_obj, cfg, None, sample_shape
        )
        del sample
    scene_params = state.scene
    ny, nx = int(arr.shape[2]), int(arr.shape[3])
    stride = max(1, round(math.sqrt(ny * nx / max(1, math.prod(state.sample_shape)))))
    if origin is not None or grid_shape is not None:
        oy, ox = (int(v) for v in (origin or (0, 0)))
        gy, gx = (int(v) for v in (grid_shape or (oy + ny, ox + nx)))
        origin, grid_shape = (oy, ox), (gy, gx)
        if oy < 0 or ox < 0 or oy + ny > gy or ox + nx > gx:
            raise ValueError(
                f"a {ny} x {nx} px cube at origin {origin} does not fit in a grid of "
                f"{grid_shape}; fix: origin is the cube's first (row, column) in the grid"
            )
    params = {
        "bands": bands,
        "has_scl": scl is not None,
        "days": days,
        "scene": scene_params,
        "pair_gain": state.pair_gain,
        "pair_offset": state.pair_offset,
        "prior": prior_obj,
        "fusion": cfg,
        "shape": grid_shape or (ny, nx),
        "grid_origin": origin or (0, 0),
        "stored_layers": bool(stored),
        "date_clearness": state.date_clearness,
    }
    if forced_reference is not None:
        if isinstance(arr, da.Array):
            raise ValueError(
                "forced_reference works on in-memory cubes only; fix: cube.load() first"
            )
        forced = np.asarray(forced_reference)
        if forced.shape != (arr.shape[0],) + arr.shape[2:]:
            raise ValueError(
                f"forced_reference must be (time, y, x) = {(arr.shape[0],) + arr.shape[2:]}, "
                f"got {forced.shape}"
            )
        params["forced_reference"] = forced.astype(np.intp)
    nout = nb + len(QUALITY_LAYERS) + len(prior_obj.layers)
    nt = len(days)
    if dates is not None:
        return _restore_dates(cube, arr, params, blocks, dates, mode, stride, source)
    if isinstance(arr, da.Array):
        pieces = [_restore_lazy(arr, _block_params(params, b, nt), b, cfg, nout) for b in blocks]
        result = pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=0)
    elif len(blocks) == 1:
        result = _restore_block(arr, params)
    else:
        result = np.empty((nt, nout) + arr.shape[2:], np.float32)
        for b in blocks:
            result[b.start : b.stop] = _restore_block(
                arr[b.c0 : b.c1], _block_params(params, b, nt)
            )

    out = _build_dataset(cube, bands, result, scene_params, prior_obj, cfg, stride)
    out.attrs["scene_sample"] = source
    out.attrs["time_block"] = int(blocks[0].stop - blocks[0].start)
    if mode == "composite":
        return composite(out, period=period)
    return out


def _restore_dates(cube, arr, params, blocks, dates, mode, stride, source) -> xr.Dataset:
    """``restore(..., dates=)``: only the given dates of an in-memory cube, each restored in
    its time block as the whole restore would (a block's dates and its context, no more)."""
    nt = len(params["days"])
    targets = np.asarray(dates, dtype=np.intp).reshape(-1)
    if isinstance(arr, da.Array) or mode != "dates":
        raise ValueError(
            "restore(dates=...) restores some dates of an in-memory cube; "
            "fix: cube.load(), mode='dates'"
        )
    if targets.size == 0 or targets.min() < 0 or targets.max() >= nt:
        raise ValueError(f"restore(dates=...) needs indices in [0, {nt}), got {targets.tolist()}")
    parts: dict[int, np.ndarray] = {}
    for block in blocks:
        mine = targets[(targets >= block.start) & (targets < block.stop)]
        if not mine.size:
            continue
        block_params = dict(params if len(blocks) == 1 else _block_params(params, block, nt))
        forced = block_params.get("forced_reference")
        if forced is not None:  # one row per target date of the block
            block_params["forced_reference"] = forced[mine - block.start]
        block_params["targets"] = mine - block.c0
        result = _restore_block(arr[block.c0 : block.c1], block_params)
        parts.update({int(t): result[k] for k, t in enumerate(mine)})
    result = np.stack([parts[int(t)] for t in targets])
    scene = params["scene"]
    picked = replace(
        scene,
        gamma=np.asarray(scene.gamma)[targets],
        airlight=np.asarray(scene.airlight)[targets],
    )
    out = _build_dataset(
        cube.isel(time=targets),
        params["bands"],
        result,
        picked,
        params["prior"],
        params["fusion"],
        stride,
    )
    out.attrs["scene_sample"] = source
    out.attrs["time_block"] = int(blocks[0].stop - blocks[0].start)
    return out


def _restore_lazy(
    arr: da.Array, params: dict[str, Any], block: TimeBlock, cfg: FusionConfig, nout: int
) -> da.Array:
    """One time block of a dask cube: dates [c0, c1) in one time chunk, halo on y/x, the
    block's targets out."""
    prior_obj: Prior = params["prior"]
    sub = arr[block.c0 : block.c1].rechunk({0: -1})
    depth = prior_obj.halo + cfg.halo
    # A halo wider than the array is the whole array (dask refuses depth > size).
    dy, dx = min(depth, sub.shape[2]), min(depth, sub.shape[3])
    axes = {0: 0, 1: 0, 2: dy, 3: dx}
    padded = da.overlap.overlap(sub, depth=axes, boundary="none") if depth else sub
    params = dict(params)
    params.update(depth=(dy, dx), chunks=(_core_chunks(padded, 2, dy), _core_chunks(padded, 3, dx)))
    token = tokenize(
        sub.name,
        params["bands"],
        params["days"],
        params["scene"],
        params["pair_gain"],
        params["pair_offset"],
        params["date_clearness"],
        params["targets"],
        prior_obj,
        cfg,
    )
    resources = prior_obj.resources  # e.g. {"GPU": 1} for a VLM prior on GPU workers
    if resources:
        _keep_annotations()
    with dask.annotate(**({"resources": resources} if resources else {})):
        result = da.map_blocks(
            partial(_block_call, params=params),
            padded,
            dtype=np.float32,
            meta=np.empty((0, 0, 0, 0), dtype=np.float32),
            chunks=((block.stop - block.start,), (nout,), padded.chunks[2], padded.chunks[3]),
            name=f"restore-{token}",
        )
    if depth:
        result = da.overlap.trim_internal(result, axes, boundary="none")
    return result


def _clear_share(evidence: Any) -> np.ndarray:
    """(1 - p_cloud)(1 - p_shadow) of a ``CloudEvidence``; no opinion (NaN) counts 0.5."""
    p = 1.0 - np.nan_to_num(np.asarray(evidence.cloud, np.float64), nan=0.5)
    if evidence.shadow is not None:
        p = p * (1.0 - np.nan_to_num(np.asarray(evidence.shadow, np.float64), nan=0.0))
    return np.clip(p, 0.0, 1.0)


#: long_name of each quality layer.
QUALITY_DESCRIPTIONS = {
    "confidence": "belief (0..1) that the physical inversion is faithful",
    "gate": "weight (0..1) of the physical inversion in the output",
    "transmission": "atmospheric/cloud transmission at 490 nm (B02), 0..1",
    "reference_days": "reference date minus target date (days); NaN: no reference used",
    "no_valid_observation": "1 where no valid observation supports the output (NaN output)",
    "cloud_probability": "probability (0..1) that the observation is cloud-, haze- or "
    "shadow-contaminated (the priors' fused evidence); below 0.1 it passed through",
    "surface_change": "RMS change of the surface reflectance between the clear observations "
    "nearest before and after the date (on one side: the two nearest there); what a "
    "temporal reference can miss",
    "reference_departure": "RMS over bands of the observation minus its harmonised temporal "
    "reference (the harmonisation residual at the pixel); an observation kept (gate 1) that "
    "departs from its reference is a real change or contamination the evidence missed; NaN: "
    "no reference",
}


#: The per-date scene parameters ``restore`` returns beside its layers: dims and long_name.
SCENE_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "gamma": (("time",), "Angstrom exponent of the cloud/haze transmission, per date"),
    "airlight": (("time", "band"), "cloud/atmospheric light A_b per date and band (reflectance)"),
}


def scene_variables(scene: SceneParams) -> dict[str, xr.DataArray]:
    """``gamma`` (time) and ``airlight`` (time, band) of ``scene`` as float32 variables (the
    ``band`` coordinate is the caller's: the cube's spectral bands, in order)."""
    values = {"gamma": scene.gamma, "airlight": scene.airlight}
    return {
        name: xr.DataArray(
            np.asarray(values[name], np.float32), dims=dims, attrs={"long_name": desc}
        )
        for name, (dims, desc) in SCENE_VARIABLES.items()
    }


def output_variables(
    bands: tuple[str, ...], prior: str | Prior = DEFAULT_PRIOR
) -> dict[str, tuple[np.dtype, dict[str, Any]]]:
    """Name -> (dtype, attrs) of the (time, y, x) variables ``restore`` returns for a cube of
    ``bands`` with ``prior``, in order, without restoring anything (a tiled run's store
    template is made from it). Band attrs are the cube's own and are left empty here."""
    prior_obj = get_prior(prior)
    out: dict[str, tuple[np.dtype, dict[str, Any]]] = {b: (np.dtype(np.float32), {}) for b in bands}
    for name in QUALITY_LAYERS:
        dtype = np.uint8 if name == "no_valid_observation" else np.float32
        out[name] = (np.dtype(dtype), {"long_name": QUALITY_DESCRIPTIONS[name]})
    for name in prior_obj.layers:
        desc = prior_obj.layer_descriptions.get(name, f"{prior_obj.name} prior layer")
        out[name] = (np.dtype(np.float32), {"long_name": desc})
    return out


def _build_dataset(cube, bands, result, scene, prior_obj, cfg, stride) -> xr.Dataset:
    dims = ("time", "y", "x")
    coords = {k: v for k, v in cube.coords.items() if set(v.dims) <= set(dims)}
    gm_attrs, gm_enc = _spatial_attrs(cube, bands)
    data_vars: dict[str, xr.DataArray] = {}
    for k, (name, (dtype, attrs)) in enumerate(output_variables(bands, prior_obj).items()):
        if name in bands:
            attrs = {**cube[name].attrs}
        layer = result[:, k]
        if dtype != np.float32:
            layer = layer.astype(dtype)
        v = xr.DataArray(layer, dims=dims, attrs={**attrs, **gm_attrs})
        v.encoding.update(gm_enc)
        data_vars[name] = v
    data_vars.update(scene_variables(scene))
    out = xr.Dataset(data_vars, coords={**coords, "band": list(bands)})
    out.attrs.update(cube.attrs)
    out.attrs.update(
        {
            "prior": prior_obj.name,
            "prior_params": json.dumps(prior_obj.params(), sort_keys=True),
            "fusion_params": json.dumps(cfg.params(), sort_keys=True),
            "scene_sample_stride": int(stride),
        }
    )
    return out
