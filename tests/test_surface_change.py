"""The surface change around a date: between the clear observations nearest before and after
it (one side only: the two nearest there), the error model's reading of what a temporal
reference can miss."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.kernels import surface_change


def _series(values: list[float]) -> np.ndarray:
    """(T, 2 bands, 1, 1): both bands take each date's value."""
    v = np.asarray(values, np.float32)
    return np.repeat(v[:, None, None, None], 2, axis=1)


def test_change_between_the_nearest_clear_dates_on_either_side():
    data = _series([0.10, 0.50, 0.12, 0.30, 0.20])
    clear = np.array([True, False, True, False, True])[:, None, None]
    got = surface_change(data, clear, np.arange(5))[:, 0, 0]
    # date 1 (cloudy) lies between clear dates 0 and 2; date 3 between 2 and 4; a clear date
    # itself is not its own neighbour: date 2 reads dates 0 and 4
    assert got[1] == pytest.approx(0.02, abs=1e-6)
    assert got[3] == pytest.approx(0.08, abs=1e-6)
    assert got[2] == pytest.approx(0.10, abs=1e-6)
    # the first and last dates have one side: the two nearest clear dates there
    assert got[0] == pytest.approx(0.08, abs=1e-6)  # dates 2 and 4 -> |0.12 - 0.20|
    assert got[4] == pytest.approx(0.02, abs=1e-6)  # dates 2 and 0 -> |0.12 - 0.10|


def test_unobserved_dates_do_not_count_and_too_few_give_nan():
    data = _series([0.10, np.nan, 0.40, 0.10])
    clear = np.ones((4, 1, 1), bool)  # date 1 "clear" but not observed: not a reading
    got = surface_change(data, clear, np.array([1, 3]))[:, 0, 0]
    assert got[0] == pytest.approx(0.30, abs=1e-6)  # dates 0 and 2
    lonely = surface_change(
        _series([0.1, 0.2, 0.3]), np.array([[[False]], [[True]], [[False]]]), np.array([0, 1])
    )
    assert np.isnan(lonely).all()  # fewer than two clear dates besides the target
