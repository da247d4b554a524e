"""Self-validation: held-out clear pixels under simulated cloud, restored and scored."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.synthetic import make_stack
from pipeline.validation import ValidationConfig, self_validate

SMALL = ValidationConfig(window=48, dates_per_window=1, seed=3)


@pytest.fixture(scope="module")
def cube():
    return make_stack((4, 64, 64), seed=5, thin_cover=0.1, thick_cover=0.05).observed


def test_reports_error_on_held_out_pixels(cube):
    result = self_validate(cube, config=SMALL)
    assert result.pixels > 100 and result.cases == 2  # one thin, one thick case
    assert set(result.per_kind) == {"thin", "thick"}
    assert set(result.rmse_per_band) == {str(v) for v in cube.data_vars if v != "SCL"}
    # PSNR and RMSE are two views of one figure
    assert result.psnr == pytest.approx(20 * math.log10(1 / result.rmse))
    assert 0 < result.rmse < 0.2 and result.mae <= result.rmse
    # JSON for the archive attributes, and a summary line for the run
    assert json.loads(result.to_json())["pixels"] == result.pixels
    assert "dB PSNR" in result.line()


def test_is_deterministic_for_a_seed(cube):
    a = self_validate(cube, config=SMALL)
    b = self_validate(cube, config=SMALL)
    assert a.to_json() == b.to_json()


def test_the_run_settings_are_what_is_validated(cube):
    # without the temporal transmission cue thin cloud is restored worse (the benchmark shows
    # it): the validation must see the difference a setting makes, i.e. it uses the options
    good = self_validate(cube, config=SMALL)
    weaker = self_validate(cube, config=SMALL, temporal_weight=0.0)
    assert good.per_kind["thin"]["psnr"] > weaker.per_kind["thin"]["psnr"] + 1.0


def test_single_date_cube_says_why_it_cannot_validate(cube):
    result = self_validate(cube.isel(time=[0]), config=SMALL)
    assert result.pixels == 0 and "two dates" in result.line()


def test_config_checks():
    with pytest.raises(ValueError, match="cover"):
        ValidationConfig(cover=0.95)
