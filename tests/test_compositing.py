"""composite_periods: explicit [start, end) windows, as a tiled run's shared time axis."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest
import xarray as xr

from pipeline.compositing import composite, composite_periods
from pipeline.restore import restore
from pipeline.tiling import period_axis
from tests.test_restore import make_cube


@pytest.fixture(scope="module")
def restored():
    return restore(make_cube(("B02", "B03", "B04", "B08"))[0])  # 5 dates: 3 in June, 2 in July


def test_month_windows_equal_monthly_composite_and_skip_empty_windows(restored):
    # May and August hold no date: left out, as composite(period="MS") leaves them out
    interval = (
        datetime(2024, 5, 1, tzinfo=timezone.utc),
        datetime(2024, 8, 31, tzinfo=timezone.utc),
    )
    labels, edges = period_axis(interval, "MS")
    assert len(labels) == 4
    out = composite_periods(restored, labels, edges)
    assert list(pd.DatetimeIndex(out.time.values).month) == [6, 7]
    xr.testing.assert_allclose(out, composite(restored, period="MS"), atol=1e-6)


def test_a_window_off_the_month_grid_composites_exactly_its_dates(restored):
    label = pd.Timestamp("2024-06-05")
    out = composite_periods(restored, [label], [label, pd.Timestamp("2024-06-25")])
    expected = composite(restored.isel(time=[1, 2])).assign_coords(time=[label])
    xr.testing.assert_allclose(out, expected, atol=1e-6)
    assert int(out.observation_count.max()) == 2


def test_no_date_in_any_window_gives_none(restored):
    edges = pd.DatetimeIndex(["2025-01-01", "2025-02-01"])
    assert composite_periods(restored, edges[:1], edges) is None


def test_edges_must_bound_every_label(restored):
    with pytest.raises(ValueError, match="one more edge than labels"):
        composite_periods(restored, ["2024-06-01"], ["2024-06-01"])
