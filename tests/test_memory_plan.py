"""Memory-aware flows: time blocks sized from the calculator and the workers' memory limit."""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster

from flows.config import RunConfig
from flows.steps import time_options
from pipeline.catalog import SearchParams
from pipeline.memory import block_dates, estimate_memory, plan_time_block
from tests.test_time_blocks import make_series

GIB = 2**30


def test_block_dates_and_a_year_in_the_memory_of_a_season():
    assert block_dates(146, None, None) == 146
    assert block_dates(146, 12, 3) == 18
    assert block_dates(10, 12, 3) == 10
    year = plan_time_block(1024, 146, 10, halo=35, memory_limit=12 * GIB, window_dates=3)
    season = estimate_memory(1024, year.block_dates, 10, halo=35)
    assert year.time_block is not None and year.block_dates < 146
    assert year.estimate.worker_bytes == season.worker_bytes <= 0.8 * 12 * GIB
    # one more target date per block would not fit
    bigger = estimate_memory(1024, year.block_dates + 1, 10, halo=35)
    assert bigger.worker_bytes > 0.8 * 12 * GIB or year.block_dates == 146


def test_what_cannot_fit_is_refused_naming_the_settings():
    with pytest.raises(ValueError, match="--time-window-dates") as exc:
        plan_time_block(1024, 146, 10, halo=35, memory_limit=12 * GIB, window_dates=None)
    assert "--chunk-size" in str(exc.value) and "--memory-limit" in str(exc.value)
    with pytest.raises(ValueError, match="--chunk-size"):
        plan_time_block(2048, 146, 10, halo=35, memory_limit=2 * GIB, window_dates=3)


def test_flow_time_options_follow_the_workers_memory_limit():
    cube = make_series().chunk({"time": 1, "y": 17, "x": 19})
    config = RunConfig(
        search=SearchParams(bbox=(0, 0, 1, 1), datetime="2024"),
        output="x.zarr",
        time_window_dates=2,
    )
    from flows.steps import prior_of

    prior = prior_of(config)
    # no client: no plan, the window alone (restore's default block)
    assert time_options(cube, config, prior) == {"time_window_dates": 2}
    with _cluster("1GiB") as lc, Client(lc):
        opts = time_options(cube, config, prior)
        assert opts["time_window_dates"] == 2 and opts["time_block"] >= 1
    # a limit below the idle worker's own footprint: nothing fits, the fix is named
    with _cluster("300MiB") as lc, Client(lc):
        with pytest.raises(ValueError, match="--chunk-size"):
            time_options(cube, config, prior)


def _cluster(memory_limit: str) -> LocalCluster:
    return LocalCluster(
        processes=False,
        n_workers=1,
        threads_per_worker=1,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit=memory_limit,
    )
