"""The self-validation against the truth: does a run's own estimate tell the truth?

For one case per benchmark stack and scenario, the cube the method restores is also
self-validated (``pipeline.validation.self_validate``) as a run validates itself: with
the run's own settings and the scene state of the whole area, which a run hands to its
restoration and to the validation's windows alike (``flows.steps``; windows left to
re-estimate the scene parameters on their own context validate a restoration no run does);
its estimate is set beside the true score of the restored target date, per class, and the
per-pixel error layer is checked against the target's true per-pixel errors: the share
within its nominal 90 % interval and the rank correlation.

The truth is known on the target date alone, so the estimate compared is that date's own
(``ValidationResult.per_date``: its held-out pixels at its own class and land-cover mix);
the run-level estimate, which mixes every date of the run (the series' ends and its snowy
dates restore worse than its middle), is printed beside it. A date without held-out
pixels of a class falls back to the run-level figure of that class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..restore import estimate_scene_state, restore
from ..validation import (
    CLASSES,
    ValidationConfig,
    error_layer_calibration,
    held_out_class,
    self_validate,
)

#: The check's validation settings (the run defaults, fewer bootstrap resamples).
CHECK_CONFIG = ValidationConfig(bootstrap=100)
#: Classes compared (the issue's targets: all, thin, thick).
COMPARED = ("all", "thin", "thick")
#: Least number of delivered pixels of a class for its true score: below it the class has
#: no figure to compare (an overcast neighbour leaves a two-date run 3-10 thick-cloud pixels
#: unflagged at a cloud's edge, whose PSNR says nothing about the class).
MIN_TRUE_PIXELS = 100


def _psnr(mse: float) -> float:
    if not math.isfinite(mse):
        return float("nan")
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _true_mse(est: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    diff = np.clip(est[:, mask], 0, 1) - np.clip(truth[:, mask], 0, 1)
    ok = np.isfinite(diff).all(axis=0)
    return float((diff[:, ok] ** 2).mean()) if ok.any() else float("nan")


def true_scores(
    est: np.ndarray, truth: np.ndarray, classes: dict[str, np.ndarray]
) -> dict[str, float]:
    """True PSNR per class of what the run delivers; a class with fewer than
    ``MIN_TRUE_PIXELS`` pixels has none."""
    return {
        c: _psnr(_true_mse(est, truth, m))
        for c, m in classes.items()
        if int(m.sum()) >= MIN_TRUE_PIXELS
    }


def validation_check(stack: Any, cloudy: np.ndarray, sim: Any) -> dict[str, Any]:
    """Estimate vs truth on the target date of one case (see the module docstring)."""
    ds = stack.to_dataset(cloudy)
    # as a run does (``flows.steps``): one scene state of the whole area, handed to the
    # restoration and to the validation's windows, placed in the area's grid
    scene = estimate_scene_state(ds)
    out = restore(ds, scene=scene)
    t = stack.target
    est = np.stack([out[b].values[t] for b in stack.bands]).astype(np.float64)
    truth = np.asarray(stack.clear[t], dtype=np.float64)
    grid = (int(ds.sizes["y"]), int(ds.sizes["x"]))
    result = self_validate(ds, config=CHECK_CONFIG, scene=scene, origins=[(0, 0)], grid_shape=grid)
    # The truth of what the archive delivers: every pixel it outputs as a valid surface,
    # including those the benchmark calls unrecoverable but the run restores unflagged
    # (thick cloud over a reference whose snow the target lacks): an analyst gets them,
    # and the held-out pixels the estimate rests on include such cases. (The benchmark's
    # own scores leave them out and count them as "invented".)
    flagged = out["no_valid_observation"].values[t].astype(bool)
    valid = np.isfinite(est).all(axis=0) & ~flagged
    if getattr(stack, "truth_unclear", None) is not None:
        valid &= ~stack.truth_unclear  # the truth is no clear view there
    # the estimate's classes, one per pixel (``held_out_class``: haze over a shadow is
    # shadow), so the thin figure compared is haze over an unshadowed surface on both sides
    # (the benchmark's own tables count the shadowed haze as thin too)
    exclusive = held_out_class(sim)
    classes = {c: valid & (exclusive == k) for k, c in enumerate(CLASSES)}
    true = true_scores(est, truth, {**classes, "all": valid})
    day = str(np.datetime_as_string(np.asarray(stack.times)[t], unit="D"))
    own = result.per_date.get(day, {})
    estimate = _mixed(classes, own, result.per_class)
    check: dict[str, Any] = {
        "true": true,
        "true_pixels": {c: int(m.sum()) for c, m in {**classes, "all": valid}.items()},
        "estimate": estimate,
        "estimate_run": _mixed(classes, {}, result.per_class),
        "estimate_date": day if own else None,
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


def _mixed(
    classes: dict[str, np.ndarray],
    own: dict[str, dict[str, float]],
    run: dict[str, dict[str, float]],
) -> dict[str, float]:
    """Per class PSNR (the date's own row, else the run's) and "all" at the target's own
    mix of classes (the truth's pixels)."""
    estimate: dict[str, float] = {}
    mse_mix, weight = 0.0, 0.0
    for c, m in classes.items():
        row = own.get(c) or run.get(c)
        if row is not None and m.any():
            estimate[c] = row["psnr"]
            mse_mix += m.sum() * row["rmse"] ** 2
            weight += m.sum()
    estimate["all"] = _psnr(mse_mix / weight) if weight else float("nan")
    return estimate


def _cell(check: dict[str, Any], c: str) -> str:
    estimate = f"{c} {check['estimate'].get(c, float('nan')):.2f}"
    if c not in check["true"]:
        pixels = check.get("true_pixels", {}).get(c)
        few = f", {pixels} px delivered" if pixels is not None else ""
        return f"{estimate} vs n/a{few}"
    return f"{estimate} vs {check['true'][c]:.2f} ({check['diff'][c]:+.2f})"


def format_check(check: dict[str, Any]) -> list[str]:
    cells = ", ".join(_cell(check, c) for c in COMPARED)
    scope = f"the target date {check['estimate_date']}" if check.get("estimate_date") else "the run"
    lines = [f"  self-validation estimate ({scope}) vs true (dB): {cells}"]
    run = check.get("estimate_run")
    if run and check.get("estimate_date"):
        lines.append(
            "  run-level estimate (every date): "
            + ", ".join(f"{c} {run.get(c, float('nan')):.2f}" for c in COMPARED)
        )
    layer = check.get("error_layer")
    if layer:
        lines.append(
            f"  error layer on cloudy pixels: {layer['coverage90']:.1%} within the nominal 90 % "
            f"interval, rank correlation {layer['spearman']:.2f}, RMS(error/estimate) "
            f"{layer['rms_ratio']:.2f}"
        )
    return lines
