"""Self-validation: how good is this run's output, measured on the run's own data.

No ground truth exists for a real composite, but its clear pixels are truth for themselves.
``self_validate`` holds out clear target pixels, hides them under simulated cloud, restores
them with the same prior and options as the run, and scores the restoration against what
was really there:

1. pick ``windows`` square windows of ``window`` px at seeded random positions of the cube
   (the ones with the most observed pixels among a few candidates) and load them;
2. restore each window once as it is; a pixel-date is *clear* where the restored
   transmission is >= ``clear_t``, the confidence >= ``clear_confidence`` and the date
   observed it;
3. for each simulated case (``kinds`` x up to ``dates_per_window`` target dates, seeded),
   simulate cloud of ``cover`` on the target date with ``pipeline.bench.simulate`` (the
   benchmark's independent simulator: smooth wavelength-dependent thin cloud, opaque grey
   thick cloud, shadow), restore the window again, and score the held-out pixels: clear
   before, clouded by the simulation, still observed by the restoration;
4. report pixels, PSNR, RMSE and MAE overall, per band RMSE, and the same per cloud kind.

Caveats, recorded with the figures: the windows re-estimate the scene parameters on their
own pixels (a window is small; the run estimates them on a scene-wide sample), and
simulated cloud is an approximation of real cloud. The figure is an estimate of the error
on cloudy pixels like the simulated ones, not a bound.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr

from ._bands import SCL, SCL_BAND, WAVELENGTH_NM

log = logging.getLogger(__name__)

#: Archive attribute holding the self-validation report (JSON).
VALIDATION_ATTR = "self_validation"


@dataclass(frozen=True)
class ValidationConfig:
    """Settings of the self-validation (frozen; recorded with the result).

    enabled: run it at all.
    window: side of a validation window, px (clipped to the cube).
    windows: number of windows.
    dates_per_window: target dates simulated per window and cloud kind (at most).
    kinds: simulated cloud kinds (``pipeline.bench.simulate`` kinds).
    cover: simulated cloud cover of a target date.
    clear_t, clear_confidence: what counts as a clear, trustworthy pixel to hold out.
    seed: the only randomness (window positions, dates, cloud fields).
    """

    enabled: bool = True
    window: int = 192
    windows: int = 1
    dates_per_window: int = 2
    kinds: tuple[str, ...] = ("thin", "thick")
    cover: float = 0.4
    clear_t: float = 0.97
    clear_confidence: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window < 16 or self.windows < 1 or self.dates_per_window < 1:
            raise ValueError("ValidationConfig needs window >= 16, windows >= 1, dates_per_window >= 1")
        if not 0.1 <= self.cover <= 0.9:
            raise ValueError(f"ValidationConfig.cover must be in [0.1, 0.9], got {self.cover}")


@dataclass
class ValidationResult:
    """Scores of the held-out pixels (reflectance clipped to [0, 1], as the benchmark)."""

    pixels: int
    psnr: float
    rmse: float
    mae: float
    rmse_per_band: dict[str, float]
    per_kind: dict[str, dict[str, float]]
    cases: int
    config: dict[str, Any]
    note: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_finite)

    def line(self) -> str:
        if not self.pixels:
            return f"no clear pixel to hold out ({self.note})" if self.note else "no clear pixel to hold out"
        kinds = ", ".join(f"{k} {v['psnr']:.1f} dB" for k, v in self.per_kind.items())
        return f"{self.psnr:.1f} dB PSNR, RMSE {self.rmse:.4f} on {self.pixels} held-out pixel-dates ({kinds})"


def _finite(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _window_origins(ny: int, nx: int, size: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    if ny <= size and nx <= size:
        return [(0, 0)]
    return [
        (int(rng.integers(0, max(ny - size, 0) + 1)), int(rng.integers(0, max(nx - size, 0) + 1)))
        for _ in range(count)
    ]


def _bands_of(ds: xr.Dataset) -> tuple[str, ...]:
    return tuple(str(v) for v in ds.data_vars if v in WAVELENGTH_NM)


def _as_array(ds: xr.Dataset, bands: tuple[str, ...]) -> np.ndarray:
    return np.stack([np.asarray(ds[b].values, dtype=np.float32) for b in bands], axis=1)


def self_validate(
    cube: xr.Dataset,
    *,
    prior: Any = "physics",
    config: ValidationConfig | None = None,
    **options: Any,
) -> ValidationResult:
    """Estimate the restoration error of ``cube`` (see the module docstring).

    ``prior`` and ``options`` are what the run passes to ``pipeline.restore`` (same
    settings); ``cube`` may be lazy: only the windows are loaded.
    """
    from .cloud_simulator import simulate
    from .restore import restore

    cfg = config or ValidationConfig()
    options = {k: v for k, v in options.items() if k not in ("period", "mode")}
    bands = _bands_of(cube)
    wl = np.array([WAVELENGTH_NM[b] for b in bands])
    rng = np.random.default_rng(cfg.seed)
    ny, nx, nt = cube.sizes["y"], cube.sizes["x"], cube.sizes["time"]
    size = min(cfg.window, ny, nx)
    empty = ValidationResult(0, math.nan, math.nan, math.nan, {}, {}, 0, asdict(cfg))
    if nt < 2:
        empty.note = "needs at least two dates"
        return empty
    sq_sum = np.zeros(len(bands))
    abs_sum = 0.0
    count = 0
    kind_sums: dict[str, list[float]] = {k: [0.0, 0.0] for k in cfg.kinds}  # sq sum, values
    cases = 0
    for y0, x0 in _window_origins(ny, nx, size, cfg.windows, rng):
        win = cube.isel(y=slice(y0, y0 + size), x=slice(x0, x0 + size)).compute()
        data = _as_array(win, bands)
        if not np.isfinite(data).any():
            continue
        base = restore(win, prior=prior, **options)
        clear = (
            (base["transmission"].values >= cfg.clear_t)
            & (base["confidence"].values >= cfg.clear_confidence)
            & np.isfinite(data).all(axis=1)
        )  # (T, Y, X)
        candidates = [t for t in range(nt) if clear[t].mean() > 0.2]
        if not candidates:
            continue
        for kind in cfg.kinds:
            picks = rng.permutation(candidates)[: cfg.dates_per_window]
            for target in picks:
                sim = simulate(
                    np.nan_to_num(data, nan=0.0), wl, target=int(target), kind=kind,
                    cover=cfg.cover, seed=int(rng.integers(0, 2**31 - 1)),
                )
                cloudy = data.copy()
                cloudy[target] = np.where(np.isfinite(data[target]), sim.cloudy[target], np.nan)
                trial = win.copy()
                for i, b in enumerate(bands):
                    trial[b] = (win[b].dims, cloudy[:, i])
                if SCL_BAND in trial.data_vars:
                    # the scene classification of the clear original would contradict the
                    # simulated cloud; a real SCL would not call it vegetation: no evidence
                    scl = trial[SCL_BAND].values.copy()
                    scl[target][sim.thin | sim.thick | sim.shadow] = SCL.UNCLASSIFIED
                    trial[SCL_BAND] = (win[SCL_BAND].dims, scl)
                out = restore(trial, prior=prior, **options)
                est = np.stack([out[b].values[target] for b in bands])
                held = clear[target] & (sim.thin | sim.thick) & np.isfinite(est).all(axis=0)
                if not held.any():
                    continue
                truth = np.clip(data[target][:, held], 0, 1).astype(np.float64)
                diff = np.clip(est[:, held], 0, 1) - truth
                sq_sum += (diff**2).sum(axis=1)
                abs_sum += float(np.abs(diff).sum())
                count += int(held.sum())
                kind_sums[kind][0] += float((diff**2).sum())
                kind_sums[kind][1] += float(diff.size)
                cases += 1
                log.debug(
                    "self-validation case: window (%d, %d) date %d %s: %d px, RMSE %.4f",
                    y0, x0, target, kind, int(held.sum()), math.sqrt(float((diff**2).mean())),
                )
    if not count:
        empty.note = "no window had enough clear pixels"
        return empty
    n_values = count * len(bands)
    rmse = math.sqrt(float(sq_sum.sum()) / n_values)
    per_kind = {}
    for kind, (sq, n) in kind_sums.items():
        if n:
            r = math.sqrt(sq / n)
            per_kind[kind] = {"rmse": r, "psnr": _psnr(r), "values": n}
    result = ValidationResult(
        pixels=count,
        psnr=_psnr(rmse),
        rmse=rmse,
        mae=abs_sum / n_values,
        rmse_per_band={b: math.sqrt(float(s) / count) for b, s in zip(bands, sq_sum, strict=True)},
        per_kind=per_kind,
        cases=cases,
        config=asdict(cfg),
        note="scene parameters re-estimated per window; simulated cloud (pipeline.bench.simulate)",
    )
    log.info("self-validation: %s", result.line())
    return result


def _psnr(rmse: float) -> float:
    return math.inf if rmse == 0 else 20.0 * math.log10(1.0 / rmse)
