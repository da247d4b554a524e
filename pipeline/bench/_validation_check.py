"""The self-validation against the truth: does a run's own estimate tell the truth?

For one case per benchmark stack and scenario, the cube the method restores is also
self-validated (``pipeline.validation.self_validate``, the run's own settings); its
estimate is set beside the true score of the restored target date, per class, and the
per-pixel error layer is checked against the target's true per-pixel errors: the share
within its nominal 90 % interval and the rank correlation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..restore import restore
from ..validation import ValidationConfig, error_layer_calibration, self_validate

#: The check's validation settings (the run defaults, fewer bootstrap resamples).
CHECK_CONFIG = ValidationConfig(bootstrap=100)
#: Classes compared (the issue's targets: all, thin, thick).
COMPARED = ("all", "thin", "thick")


def _psnr(mse: float) -> float:
    if not math.isfinite(mse):
        return float("nan")
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _true_mse(est: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    diff = np.clip(est[:, mask], 0, 1) - np.clip(truth[:, mask], 0, 1)
    ok = np.isfinite(diff).all(axis=0)
    return float((diff[:, ok] ** 2).mean()) if ok.any() else float("nan")


def validation_check(
    stack: Any, cloudy: np.ndarray, sim: Any, invalid: np.ndarray
) -> dict[str, Any]:
    """Estimate vs truth on the target date of one case (see the module docstring)."""
    ds = stack.to_dataset(cloudy)
    out = restore(ds)
    t = stack.target
    est = np.stack([out[b].values[t] for b in stack.bands]).astype(np.float64)
    truth = np.asarray(stack.clear[t], dtype=np.float64)
    result = self_validate(ds, config=CHECK_CONFIG)
    valid = ~invalid
    classes = {
        "clear": valid & ~(sim.thin | sim.thick | sim.shadow),
        "thin": valid & sim.thin,
        "thick": valid & sim.thick,
        "shadow": valid & sim.shadow,
    }
    true = {c: _psnr(_true_mse(est, truth, m)) for c, m in classes.items() if m.any()}
    true["all"] = _psnr(_true_mse(est, truth, valid))
    estimate: dict[str, float] = {}
    mse_mix, weight = 0.0, 0.0
    for c, m in classes.items():
        row = result.per_class.get(c)
        if row is not None and m.any():
            estimate[c] = row["psnr"]
            mse_mix += m.sum() * row["rmse"] ** 2
            weight += m.sum()
    # the target date's own mix of classes (the run-level "all" mixes the run's shares)
    estimate["all"] = _psnr(mse_mix / weight) if weight else float("nan")
    check: dict[str, Any] = {
        "true": true,
        "estimate": estimate,
        "diff": {c: estimate.get(c, float("nan")) - true.get(c, float("nan")) for c in COMPARED},
        "validation_seconds": result.seconds,
    }
    model = result.error_model
    if model is not None:
        layer = model.apply(out).values[t]
        cloudy_mask = valid & (sim.thin | sim.thick | sim.shadow)
        check["error_layer"] = error_layer_calibration(
            layer, model.interval90, est, truth, cloudy_mask
        )
    return check


def format_check(check: dict[str, Any]) -> list[str]:
    cells = ", ".join(
        f"{c} {check['estimate'].get(c, float('nan')):.2f} vs {check['true'].get(c, float('nan')):.2f}"
        f" ({check['diff'][c]:+.2f})"
        for c in COMPARED
    )
    lines = [f"  self-validation estimate vs true (dB): {cells}"]
    layer = check.get("error_layer")
    if layer:
        lines.append(
            f"  error layer on cloudy pixels: {layer['coverage90']:.1%} within the nominal 90 % "
            f"interval, rank correlation {layer['spearman']:.2f}, RMS(error/estimate) "
            f"{layer['rms_ratio']:.2f}"
        )
    return lines
