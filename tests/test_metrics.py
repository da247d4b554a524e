"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.metrics import format_table, mae, psnr, rmse, sam, score, ssim


def _pair():
    truth = np.zeros((2, 2, 2), dtype="float32")
    est = truth.copy()
    est[0, 0, 0] = 0.1  # one value of eight off by 0.1
    return truth, est


def test_rmse_mae_psnr_by_hand():
    truth, est = _pair()
    assert rmse(truth, est) == pytest.approx(math.sqrt(0.01 / 8))
    assert mae(truth, est) == pytest.approx(0.1 / 8)
    assert psnr(truth, est) == pytest.approx(20 * math.log10(1 / math.sqrt(0.01 / 8)))
    assert psnr(truth, truth) == float("inf")


def test_mask_and_nan_are_left_out():
    truth, est = _pair()
    mask = np.array([[False, True], [True, True]])
    assert rmse(truth, est, mask) == 0.0
    est[1, 1, 1] = np.nan
    assert score(truth, est, {"m": mask})["m"]["pixels"] == 2


def test_values_are_clipped_to_unit_range():
    truth = np.full((1, 1, 1), 1.0)
    est = np.full((1, 1, 1), 1.7)  # bright cloud above 1.0 counts as 1.0
    assert rmse(truth, est) == 0.0


def test_sam_by_hand():
    truth = np.array([1.0, 0.0]).reshape(2, 1, 1)
    est = np.array([1.0, 1.0]).reshape(2, 1, 1)
    assert sam(truth, est) == pytest.approx(45.0)
    assert sam(truth, 0.5 * truth) == pytest.approx(0.0, abs=1e-6)  # angle ignores brightness


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(0)
    truth = rng.random((3, 32, 32))
    assert ssim(truth, truth) == pytest.approx(1.0)
    noise = rng.normal(0, 1, truth.shape)
    slight = ssim(truth, np.clip(truth + 0.05 * noise, 0, 1))
    strong = ssim(truth, np.clip(truth + 0.3 * noise, 0, 1))
    assert 1.0 > slight > strong and strong < 0.7


def test_format_table_has_a_row_per_set():
    truth, est = _pair()
    table = format_table(score(truth, est, {"all": None, "clear": np.ones((2, 2), bool)}), "t")
    assert "all" in table and "clear" in table and "psnr" in table
