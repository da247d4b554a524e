"""Time-windowed restoration: time blocks with an overlap equal the whole-series restore."""

from __future__ import annotations

import importlib

import dask
import dask.core
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline.compositing import composite
from pipeline.kernels import (
    FusionConfig,
    band_transmission,
    forward_model,
    time_context,
    time_neighbourhood,
    wavelengths_of,
)
from pipeline.restore import QUALITY_LAYERS, restore, time_blocks
from tests.test_kernels import make_surface, smooth_field

# the module (``pipeline.restore`` the attribute is the function of the public API)
restore_module = importlib.import_module("pipeline.restore")

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
NT, NY, NX = 9, 34, 38


def make_series(nt: int = NT, seed: int = 1) -> xr.Dataset:
    """``nt`` dates 8 days apart: drifting surface, haze on every third date, opaque patches."""
    rng = np.random.default_rng(seed)
    wl = wavelengths_of(BANDS)
    surf = make_surface(BANDS, NY, NX, seed)
    gains = 1.0 + 0.02 * rng.standard_normal(nt)
    truth = np.stack([g * surf for g in gains]).astype(np.float32)
    airlight = np.tile(np.interp(wl, [490, 2190], [0.9, 0.5])[None], (nt, 1)).astype(np.float32)
    t = np.ones((nt, NY, NX), np.float32)
    for i in range(nt):
        if i % 3 == 1:
            t[i] = np.clip(0.8 - 0.1 * smooth_field(rng, (NY, NX), 6), 0.5, 1.0)
        elif i % 3 == 2:
            y0, x0 = rng.integers(0, NY - 12), rng.integers(0, NX - 12)
            t[i, y0 : y0 + 12, x0 : x0 + 12] = 0.0
    t_b = band_transmission(t, wl, np.full(nt, 1.0, np.float32))
    obs = forward_model(truth, airlight, t_b)
    time = pd.date_range("2024-04-01", periods=nt, freq="8D")
    coords = {"time": time, "y": 5.0e6 - 10.0 * np.arange(NY), "x": 5.0e5 + 10.0 * np.arange(NX)}
    return xr.Dataset(
        {b: (("time", "y", "x"), obs[:, k]) for k, b in enumerate(BANDS)}, coords=coords
    )


@pytest.fixture(scope="module")
def series():
    return make_series()


@pytest.fixture(scope="module")
def whole(series):
    return restore(series)


def _assert_same(a: xr.Dataset, b: xr.Dataset, atol: float = 1e-6) -> None:
    for name in BANDS + QUALITY_LAYERS:
        np.testing.assert_allclose(
            a[name].values.astype(np.float64),
            b[name].values.astype(np.float64),
            atol=atol,
            rtol=0,
            equal_nan=True,
            err_msg=name,
        )


def test_neighbourhood_and_context_follow_the_window():
    days = np.array([0.0, 5.0, 10.0, 40.0, 45.0, 100.0])
    near = time_neighbourhood(days, FusionConfig(time_window_dates=1))
    assert near[0].tolist() == [True, True, False, False, False, False]
    assert near[3].tolist() == [False, False, True, True, True, False]
    near = time_neighbourhood(days, FusionConfig(time_window_days=10.0))
    assert near[1].tolist() == [True, True, True, False, False, False]
    assert near[5].tolist() == [False] * 5 + [True]
    both = time_neighbourhood(days, FusionConfig(time_window_dates=2, time_window_days=12.0))
    assert both[0].tolist() == [True, True, True, False, False, False]
    assert time_context(days, 3, 5, FusionConfig(time_window_dates=1)) == (2, 6)
    assert time_context(days, 0, 2, FusionConfig(time_window_days=10.0)) == (0, 3)
    blocks = time_blocks(days, FusionConfig(time_window_dates=1), 2)
    assert [(b.start, b.stop, b.c0, b.c1) for b in blocks] == [
        (0, 2, 0, 3),
        (2, 4, 1, 5),
        (4, 6, 3, 6),
    ]
    # without a window: one block, the whole series
    assert [tuple(b) for b in time_blocks(days, FusionConfig(), None)] == [(0, 6, 0, 6)]


def test_time_blocks_equal_the_whole_series_when_the_window_holds_every_date(series, whole):
    """Blocks of 2 targets, the neighbourhood covering all dates: the same values, in memory
    and on dask with odd chunkings (time chunks too)."""
    cfg = {"time_window_dates": NT, "time_block": 2}
    eager = restore(series, **cfg)
    assert eager.attrs["time_block"] == 2
    _assert_same(eager, whole)
    with dask.config.set(scheduler="synchronous"):
        for chunks in ({"time": 2, "y": 13, "x": 17}, {"time": 1, "y": 9, "x": 38}):
            lazy = restore(series.chunk(chunks), **cfg)
            # one output time chunk per block: nothing downstream needs the whole series
            assert lazy.B02.data.chunks[0] == (2, 2, 2, 2, 1)
            _assert_same(lazy.compute(), whole, atol=1e-5)


def test_blocked_windowed_restore_is_chunking_invariant_and_bounded(series, monkeypatch):
    cfg = {"time_window_dates": 2, "time_block": 3}
    eager = restore(series, **cfg)
    seen: list[int] = []
    real = restore_module._restore_block

    def spy(block, params, origin=(0, 0)):
        seen.append(block.shape[0])
        return real(block, params, origin)

    monkeypatch.setattr(restore_module, "_restore_block", spy)
    with dask.config.set(scheduler="synchronous"):
        lazy = restore(series.chunk({"time": 1, "y": 11, "x": 19}), **cfg).compute()
    _assert_same(lazy, eager, atol=1e-5)
    # every task held at most its 3 targets plus 2 dates of overlap on each side
    assert seen and max(seen) <= 3 + 2 * 2
    # references only from the neighbourhood: at most 2 dates (16 days) away
    ref = eager.reference_days.values
    assert np.isfinite(ref).any()
    assert np.nanmax(np.abs(ref)) <= 16.0
    # the opaque patches are still filled
    assert (eager.no_valid_observation.values == 0).mean() > 0.99


def test_window_in_days_bounds_the_references(series):
    out = restore(series, time_window_days=10.0, time_block=4)
    ref = out.reference_days.values
    assert np.isfinite(ref).any() and np.nanmax(np.abs(ref)) <= 10.0


def test_bad_time_settings_name_the_fix(series):
    with pytest.raises(ValueError, match="time_window_dates must be >= 1"):
        restore(series, time_window_dates=0)
    with pytest.raises(ValueError, match="time_window_days must be > 0"):
        restore(series, time_window_days=-3.0)
    with pytest.raises(ValueError, match="time_block must be a whole number"):
        restore(series, time_block=0)
    shuffled = series.isel(time=[1, 0, *range(2, NT)])
    with pytest.raises(ValueError, match="sortby"):
        restore(shuffled, time_window_dates=2)


# ----------------------------------------------------------------------------- composites


def _restore_keys(graph) -> set:
    return {k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("restore-")}


def test_composites_stream_period_by_period_and_stay_exact():
    """A monthly composite of a blocked restore: each period's task needs only the restore
    tasks of the blocks holding its dates, and the values equal the composite of the
    restored stack held whole in memory."""
    series = make_series(nt=12, seed=2)  # 2024-04-01 .. 2024-06-28, 8 days apart
    cfg = {"time_window_dates": 2, "time_block": 4}
    with dask.config.set(scheduler="synchronous"):
        lazy = restore(
            series.chunk({"time": 1, "y": 17, "x": 19}), mode="composite", period="MS", **cfg
        )
        months = pd.DatetimeIndex(lazy.time.values)
        assert list(months.month) == [4, 5, 6]
        everything = _restore_keys(dict(lazy.B02.data.__dask_graph__()))
        for k in range(len(months)):
            culled = lazy.B02.data[k : k + 1]
            keys = set(dask.core.flatten(culled.__dask_keys__()))
            needed = _restore_keys(dict(culled.__dask_graph__().cull(keys)))
            assert needed and needed < everything  # never the whole year
        streamed = lazy.compute()
    held = composite(restore(series, **cfg), period="MS")
    for name in (*BANDS, "confidence", "observation_count", "no_valid_observation"):
        np.testing.assert_allclose(
            streamed[name].values.astype(np.float64),
            held[name].values.astype(np.float64),
            atol=1e-6,
            rtol=0,
            equal_nan=True,
            err_msg=name,
        )


def test_restoring_some_dates_equals_those_dates_of_the_whole_restore(series, whole):
    picked = [1, 4]
    part = restore(series, dates=picked)
    assert part.sizes["time"] == len(picked)
    _assert_same(part, whole.isel(time=picked), atol=0.0)
    with pytest.raises(ValueError, match="indices"):
        restore(series, dates=[series.sizes["time"]])
    with pytest.raises(ValueError, match="in-memory"):
        restore(series.chunk({"x": 16}), dates=picked)
    # in time blocks with a window: each date restored in its own block, as a whole restore
    blocked = dict(time_window_dates=1, time_block=2)
    picked = [0, 3, 5]
    _assert_same(
        restore(series, dates=picked, **blocked),
        restore(series, **blocked).isel(time=picked),
        atol=0.0,
    )


def test_the_pair_fit_group_by_group_equals_one_fit_over_all_dates():
    """``pair_maps`` fits a long series' pairs two groups of dates at a time (its robust
    weights grew with the square of the dates): every pair's gain and offset are exactly
    those of one ``pair_gain_offset`` over all dates."""
    from pipeline.kernels import FusionConfig, pair_gain_offset
    from pipeline.restore import PAIR_FIT_GROUP_DATES, pair_maps

    rng = np.random.default_rng(3)
    nt, nb, n = 2 * PAIR_FIT_GROUP_DATES + 5, 3, 20_000  # three groups, the last one short
    base = rng.uniform(0.02, 0.4, (1, nb, n))
    gains = rng.uniform(0.8, 1.2, (nt, nb, 1))
    surface = (base * gains + rng.normal(0, 0.01, (nt, nb, n))).astype(np.float32)
    surface[4, :, :100] = np.nan  # a gap: pixels missing on one date
    weight = rng.uniform(0.3, 1.0, (nt, n)) ** 2
    source = rng.uniform(0.5, 1.0, (nt, n)) ** 2  # the fusion's source side differs
    cfg = FusionConfig()
    kw = dict(ridge=cfg.harmonise_ridge, shrink_pixels=cfg.harmonise_shrink_pixels)
    for src in (None, source):
        g, o = pair_maps(surface, weight, cfg, src)
        g_all, o_all = pair_gain_offset(surface, weight, source_weight=src, **kw)
        assert g.shape == o.shape == (nt, nt, nb) and g.dtype == np.float32
        np.testing.assert_array_equal(g, g_all)
        np.testing.assert_array_equal(o, o_all)
        assert np.abs(g_all - 1).max() > 0.05  # the maps are not identity: the test has teeth


def test_cloud_evidence_reads_each_time_block_as_the_restore_does(series):
    from pipeline.restore import cloud_evidence

    blocked = dict(time_window_dates=1, time_block=2)
    evidence = cloud_evidence(series, **blocked)["cloud_probability"].values
    restored = restore(series, **blocked)["cloud_probability"].values
    np.testing.assert_array_equal(evidence, restored)
