"""Self-validation: how good is this run's output, measured on the run's own data.

No ground truth exists for a real composite, but the pixels the cloud evidence calls clear
with high certainty are truth for themselves. ``self_validate`` holds some of them out,
hides them under simulated cloud, restores them with the run's own prior and options, and
scores the restoration against what was really there:

1. **Windows spread over the area.** ``windows`` windows of ``window`` px, one per cell of a
   regular grid over each cube (each tile of a tiled run gets its share, at least one), at a
   seeded random place inside its cell. The pixel budget is fixed per run, not per area.
   Each window is one task on the run's Dask cluster (its read, prior and model loads run on
   the workers, never in the client).
2. **Hold-out chosen by the evidence, not by the gate.** A pixel-date is a hold-out
   candidate where the fused cloud evidence (``cloud_probability``, read without the fusion
   step) is at most ``clear_probability`` (where the evidence is never that certain, as in
   a two-date series, the clearest fifth of the window up to ``HOLD_OUT_CAP``) and every
   band is observed. Nothing about the gate, the confidence or the agreement with a
   reference enters the choice (those select exactly the pixels where temporal filling
   fails).
3. **Simulated cloud on several dates at once.** Up to ``dates_per_window`` dates with
   enough candidates get clouds of ``kind`` (``mixed``: thin haze with thick cores and their
   shadows, ``pipeline.cloud_simulator``) at ``cover``, each with its own field; those dates
   alone are restored again (``restore(dates=)``; every date still serves as a reference),
   with the run's scene parameters when it passes them, and every candidate pixel is scored
   by its simulated class (``held_out_class``: thick; shadow, hazy or not; thin; or clear:
   a candidate left uncovered, which shows what the run does to clear pixels).
4. **Post-stratified estimates with intervals.** What lies under a cloud drives the error
   (a melting snow cover or a harvested field errs far more than a forest), so each pixel
   gets a land-cover stratum (NDVI class x brightness class, ``strata``) as seen on the
   nearest other date that shows it clear (as the run reads clear: ``CLOUDY_AT``), or one
   of two strata of their own: other dates see it only under cloud, or none observes it
   (``neighbour_strata``). The run's own pixels of each class (clear; thin and thick, read
   from the evidence and the transmission; thick cloud no other date observes is flagged
   by the run, not restored, and left out) are counted per stratum in the windows. Those
   counts are what the evidence reads; where it is blind (no other date shows the pixel
   clear: haze over a pixel whose other date is snowy) the cloud it misses counts as clear,
   so there they are corrected with the held-out pixels' own error matrix
   (``_detection_corrected``). The held-out
   pixels of each simulated class are weighted to their class's corrected mix. Per class:
   RMSE and PSNR with a bootstrap interval over the simulated cases; the "all" figure mixes
   the classes at the run's own shares, and a per-tile table gives the cloudy-pixel figure
   of each tile. Each date also gets its own estimate (``per_date``), where a stratum its
   hold-out barely reaches takes every date's held-out pixels of that stratum
   (``_cell_mask``).
5. **A calibrated per-pixel error layer** (``ErrorModel``): the absolute error of a held-out
   pixel is fitted (non-negative least squares) on what the pixel went through (gate,
   transmission, distance to its reference in days, cloud evidence), on half of the cases;
   the other half calibrates it (split conformal): ``error_estimate`` is an RMS error in
   reflectance, and ``interval90`` x ``error_estimate`` bounds 90 % of the errors.

The figure is an estimate of the error on cloud like the simulated one, not a bound; its
caveats are recorded with it (simulated cloud; and, when the run passes no scene state of its
area, windows that re-estimate the scene parameters on their own context).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import dask
import numpy as np
import xarray as xr

from ._bands import SCL, SCL_BAND, WAVELENGTH_NM
from .priors import DEFAULT_PRIOR

log = logging.getLogger(__name__)

#: Archive attribute holding the self-validation report (JSON).
VALIDATION_ATTR = "self_validation"
#: The per-pixel error layer's name in the archive.
ERROR_LAYER = "error_estimate"
#: Classes the estimate is given for (``all`` mixes them at the run's own shares).
CLASSES = ("clear", "thin", "thick", "shadow")
#: NDVI class edges and the brightness (mean visible reflectance) edge of the strata.
NDVI_EDGES = (0.2, 0.5)
BRIGHTNESS_EDGE = 0.12
#: Transmission below which a pixel the evidence calls cloudy counts as thick (run shares).
THICK_T = 0.25
#: Cloud probability from which the run's own pixel counts as cloudy (its class shares) and
#: a date does not show a pixel clear (the strata's "another date shows it clear").
CLOUDY_AT = 0.5
#: Dates clouded together in one trial are more than this many places apart in the series
#: (the fusion draws its references from the nearest dates: 4 candidates, 2 on each side).
MIN_DATE_GAP = 2


@dataclass(frozen=True)
class ValidationConfig:
    """Settings of the self-validation (frozen; recorded with the result).

    enabled: run it at all.
    window: side of a validation window, px (clipped to the cube).
    windows: number of windows over the whole run (spread over the area and the tiles).
    dates_per_window: dates clouded at once in a window (at most).
    kind: simulated cloud kind (``pipeline.cloud_simulator.KINDS``; ``mixed`` gives thin,
        thick and shadow pixels in one trial).
    cover: simulated cloud cover of a clouded date.
    clear_probability: largest fused cloud probability of a pixel held out as clear truth
        (raised up to ``HOLD_OUT_CAP`` in a window where the evidence is never that certain).
    context: px of context restored around a window (-1: the restoration's own halo, as a
        run's chunk has it; only the inner window is scored).
    bootstrap: resamples of the cases behind the intervals.
    seed: the only randomness (window places, dates, cloud fields, bootstrap).
    """

    enabled: bool = True
    window: int = 64
    windows: int = 8
    dates_per_window: int = 3
    kind: str = "mixed"
    cover: float = 0.4
    clear_probability: float = 0.1
    context: int = -1
    bootstrap: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        from .cloud_simulator import KINDS

        if self.window < 16 or self.windows < 1 or self.dates_per_window < 1:
            raise ValueError(
                "ValidationConfig needs window >= 16, windows >= 1, dates_per_window >= 1"
            )
        if not 0.1 <= self.cover <= 0.9:
            raise ValueError(f"ValidationConfig.cover must be in [0.1, 0.9], got {self.cover}")
        if self.kind not in KINDS:
            raise ValueError(f"ValidationConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 < self.clear_probability < 0.5:
            raise ValueError("ValidationConfig.clear_probability must be in (0, 0.5)")


# --------------------------------------------------------------------------- error model

#: Features of the error model, in order (see ``_features``).
FEATURES = (
    "one",
    "reference_share",
    "reference_age",
    "haze_inverted",
    "evidence",
    "reference_change",
    "reference_change_unknown",
    "departure_kept",
    "departure_unknown",
)
#: The quality layers the features are computed from.
FEATURE_LAYERS = (
    "gate",
    "transmission",
    "reference_days",
    "cloud_probability",
    "surface_change",
    "reference_departure",
)


def _fill(a, value: float):
    return a.fillna(value) if hasattr(a, "fillna") else np.nan_to_num(a, nan=value)


def _features(layers: dict[str, Any]) -> dict[str, Any]:
    """Basis of the error model by name, from the quality layers (numpy, or xarray: lazily
    for dask).

    one: a floor; reference_share: 1 - gate; reference_age: (1 - gate) min(|days|, 180) / 30
    (an older reference has changed more); haze_inverted: gate (1 - t) (the inversion's
    error grows with the haze removed); evidence: the cloud probability;
    reference_change: (1 - gate) x ``surface_change`` (what the reference can miss: the
    surface's change between the clear dates around the target), and
    reference_change_unknown: (1 - gate) where fewer than two clear dates tell it;
    departure_kept: gate x ``reference_departure`` (what the output kept of an observation
    that departs from its reference: a real change, or cloud, haze or shadow the evidence
    missed, which no other feature sees; 0 without a reference), and departure_unknown:
    gate where there is no reference to depart from (a kept pixel nothing can check).
    """
    g = layers["gate"].clip(0, 1)
    t = layers["transmission"].clip(0, 1)
    days = abs(_fill(layers["reference_days"], 0.0))
    age = days.clip(0, 180) / 30.0
    p = _fill(layers["cloud_probability"], 0.5)
    change = layers.get("surface_change")
    if change is None:  # a restore from before the layer existed: no reading anywhere
        change = g * np.nan
    unknown = change * 0 + 0.0
    unknown = _fill(unknown, 1.0)
    departure = layers.get("reference_departure")
    if departure is None:  # a restore from before the layer existed: no reading anywhere
        departure = g * np.nan
    no_reference = _fill(departure * 0 + 0.0, 1.0)
    return {
        "one": g * 0 + 1.0,
        "reference_share": 1 - g,
        "reference_age": (1 - g) * age,
        "haze_inverted": g * (1 - t),
        "evidence": p,
        "reference_change": (1 - g) * _fill(change, 0.0),
        "reference_change_unknown": (1 - g) * unknown,
        "departure_kept": g * _fill(departure, 0.0),
        "departure_unknown": g * no_reference,
    }


@dataclass
class ErrorModel:
    """Per-pixel error predicted from the quality layers, calibrated on held-out pixels.

    error_estimate = kappa * sum_k coef_k feature_k (reflectance RMS units: the mean of
    (error / error_estimate)^2 is 1 on the calibration half); ``interval90`` x
    error_estimate bounds 90 % of the calibration errors (split conformal) in each gate
    regime (reference-filled, blended, inverted: ``GATE_REGIMES``), so at least 90 % of
    the run's whatever its mix of regimes.
    """

    coefficients: list[float]
    kappa: float
    interval90: float
    features: tuple[str, ...] = FEATURES
    fitted_pixels: int = 0
    calibration_pixels: int = 0
    spearman: float = float("nan")  # rank correlation with the errors of the calibration half
    coverage90: float = float("nan")  # share of calibration errors within the 90 % interval

    def predict(self, layers: dict[str, Any]):
        """The error estimate from the quality layers by name (numpy arrays, or xarray:
        lazily for dask)."""
        feats = _features(layers)
        total = sum(
            c * feats[name] for c, name in zip(self.coefficients, self.features, strict=True)
        )
        return self.kappa * total

    def apply(self, restored: xr.Dataset) -> xr.DataArray:
        """``error_estimate`` (time, y, x) float32 for a restored dataset (lazy with dask);
        NaN where there is no valid output."""
        est = self.predict({n: restored[n] for n in FEATURE_LAYERS if n in restored})
        est = est.where(restored["no_valid_observation"] == 0).astype(np.float32)
        band = next(str(v) for v in restored.data_vars if v in WAVELENGTH_NM)
        est.attrs = {
            "long_name": "estimated error of the restored reflectance (RMS over bands)",
            "units": "reflectance",
            "interval90": self.interval90,
            "comment": f"90 % of errors are below interval90 x {ERROR_LAYER} (calibrated on "
            "held-out clear pixels under simulated cloud: self_validation attribute)",
            **{k: v for k, v in restored[band].attrs.items() if k == "grid_mapping"},
        }
        est.encoding.update(
            {k: v for k, v in restored[band].encoding.items() if k == "grid_mapping"}
        )
        return est.rename(ERROR_LAYER)


def _nnls(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    # columns scaled to unit norm for a well-conditioned solve
    norms = np.linalg.norm(design, axis=0)
    norms[norms == 0] = 1.0
    coef, _ = nnls(design / norms, target, maxiter=50 * design.shape[1])
    return coef / norms


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3:
        return float("nan")
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    c = np.corrcoef(ra, rb)[0, 1]
    return float(c) if np.isfinite(c) else float("nan")


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    if cw[-1] <= 0:
        return float(np.quantile(values, q))
    return float(values[order][np.searchsorted(cw, q * cw[-1])])


#: Gate edges of the error regimes (reference-filled, blended, inverted or passed through):
#: the 90 % interval must hold in each, whatever the run's mix of them.
GATE_REGIMES = (0.2, 0.8)
#: Fewest calibration pixels for a regime's own quantile.
MIN_REGIME_PIXELS = 50


def _regime_quantile(z: np.ndarray, w: np.ndarray, gate: np.ndarray, q: float) -> float:
    """The largest of the regimes' weighted ``q`` quantiles of ``z`` (regimes by gate): the
    errors' tails differ between reference-filled and inverted pixels, and a run's mix of
    regimes is not the hold-out's, so one pooled quantile under-covers where the run has more
    of the heavy-tailed regime."""
    regime = np.digitize(np.nan_to_num(gate, nan=0.0), GATE_REGIMES)
    out = _weighted_quantile(z, w, q)
    for r in np.unique(regime):
        m = regime == r
        if m.sum() >= MIN_REGIME_PIXELS and w[m].sum() > 0:
            out = max(out, _weighted_quantile(z[m], w[m], q))
    return out


def fit_error_model(
    rows: dict[str, np.ndarray], case: np.ndarray, weights: np.ndarray | None = None
) -> ErrorModel | None:
    """Cross-conformal fit: NNLS of |error| on the features on each half of the cases (even,
    odd), each half's errors predicted by the other half's fit; the scale and the 90 %
    interval come from those out-of-fold predictions, so every held-out pixel calibrates
    and none calibrates a fit it took part in; the model is the mean of the two fits. With
    too few pixels in a half, one fit on all the cases calibrates itself.

    A single split (fit on one half, calibrate on the other) leaves the figures to the luck
    of the split: on one synthetic stack the run's coverage moved 0.87-0.91 and the rank
    correlation 0.39-0.50 with the choice of halves. ``weights`` (the covariate-shift weights
    of the estimates) weight the calibration, so the interval holds for the run's mix of
    pixels rather than the hold-out's."""
    err = np.sqrt(rows["sq"] / rows["nb"])
    by_name = _features({n: rows[n] for n in FEATURE_LAYERS})
    feats = np.stack([by_name[n] for n in FEATURES], axis=1).astype(np.float64)
    halves = [case % 2 == 0, case % 2 == 1]
    if min(int(h.sum()) for h in halves) >= 20:
        fits = [_nnls(feats[h], err[h]) for h in halves]
        pred = np.where(halves[0], feats @ fits[1], feats @ fits[0])
        coef = np.mean(fits, axis=0)
    elif err.size >= 20:
        coef = _nnls(feats, err)
        pred = feats @ coef
    else:
        return None
    floor = max(float(np.median(pred[pred > 0])) * 1e-3, 1e-6) if (pred > 0).any() else 1e-6
    pred = np.maximum(pred, floor)
    w = np.ones(err.shape) if weights is None else np.asarray(weights, np.float64)
    ratio = err / pred
    kappa = (
        float(np.sqrt(np.average(ratio**2, weights=w)))
        if w.sum() > 0
        else float(np.sqrt(np.mean(ratio**2)))
    )
    z90 = _regime_quantile(ratio / kappa, w, rows["gate"], 0.9)
    return ErrorModel(
        coefficients=[float(c) for c in np.maximum(coef, 0)],
        kappa=kappa,
        interval90=z90,
        fitted_pixels=int(err.size),
        calibration_pixels=int(err.size),
        spearman=_spearman(pred, err),
        coverage90=float(np.average(err <= z90 * kappa * pred, weights=w))
        if w.sum() > 0
        else float("nan"),
    )


# --------------------------------------------------------------------------- result


@dataclass
class ValidationResult:
    """Scores of the held-out pixels (reflectance clipped to [0, 1], as the benchmark).

    per_class: class -> {rmse, psnr, psnr_low, psnr_high (bootstrap 5-95 %), pixels};
    the run-level ``psnr`` / ``rmse`` mix the classes at ``shares`` (the run's own, from the
    evidence of the windows); ``per_tile``: label -> {pixels, rmse, psnr} of cloudy pixels;
    ``per_date``: ISO day -> class (and "all") -> {rmse, psnr, pixels}, each date's own
    estimate (``_per_date``: its held-out pixels at its own mix; no interval).
    """

    pixels: int
    psnr: float
    rmse: float
    mae: float
    rmse_per_band: dict[str, float]
    per_class: dict[str, dict[str, float]]
    cases: int
    config: dict[str, Any]
    shares: dict[str, float] = field(default_factory=dict)
    per_tile: dict[str, dict[str, float]] = field(default_factory=dict)
    per_date: dict[str, dict[str, Any]] = field(default_factory=dict)
    psnr_low: float = float("nan")
    psnr_high: float = float("nan")
    error_model: ErrorModel | None = None
    seconds: float = 0.0
    note: str = ""

    @property
    def per_kind(self) -> dict[str, dict[str, float]]:
        """The cloudy classes alone (thin, thick, shadow): the older name of ``per_class``."""
        return {k: v for k, v in self.per_class.items() if k != "clear"}

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_finite)

    @classmethod
    def from_json(cls, text: str) -> ValidationResult:
        """The result ``to_json`` wrote (an archive's ``self_validation`` attribute)."""
        raw = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        values: dict[str, Any] = {
            k: (float("nan") if v is None else v) for k, v in raw.items() if k in known
        }
        model = raw.get("error_model")
        if model:
            model = {k: (float("nan") if v is None else v) for k, v in model.items()}
            model["features"] = tuple(model.get("features", FEATURES))
            values["error_model"] = ErrorModel(**model)
        else:
            values["error_model"] = None
        return cls(**values)

    def line(self) -> str:
        if not self.pixels:
            return (
                f"no clear pixel to hold out ({self.note})"
                if self.note
                else "no clear pixel to hold out"
            )
        classes = ", ".join(
            f"{k} {v['psnr']:.1f} dB [{v['psnr_low']:.1f}, {v['psnr_high']:.1f}]"
            for k, v in self.per_class.items()
        )
        return (
            f"{self.psnr:.1f} dB PSNR [{self.psnr_low:.1f}, {self.psnr_high:.1f}] over all "
            f"pixels, {self.pixels} held-out pixel-dates in {self.cases} cases ({classes}); "
            f"{self.seconds:.1f} s"
        )


def _finite(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, tuple):
        return list(v)
    return v


def _psnr(rmse: float) -> float:
    if not math.isfinite(rmse):
        return float("nan")
    return math.inf if rmse == 0 else 20.0 * math.log10(1.0 / rmse)


# --------------------------------------------------------------------------- windows


def window_origins(
    ny: int, nx: int, size: int, count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``count`` window origins, one per cell of a near-square grid over (ny, nx), at a random
    place inside its cell (clipped so the window fits)."""
    if ny <= size and nx <= size:
        return [(0, 0)]
    rows = max(1, round(math.sqrt(count * ny / max(nx, 1))))
    cols = max(1, math.ceil(count / rows))
    out = []
    for k in range(count):
        r, c = divmod(k, cols)
        y_lo, y_hi = r * ny // rows, (r + 1) * ny // rows
        x_lo, x_hi = c * nx // cols, (c + 1) * nx // cols
        y = int(rng.integers(y_lo, max(y_lo, y_hi - 1) + 1))
        x = int(rng.integers(x_lo, max(x_lo, x_hi - 1) + 1))
        out.append(
            (
                min(max(0, y - size // 2), max(ny - size, 0)),
                min(max(0, x - size // 2), max(nx - size, 0)),
            )
        )
    return out


def _bands_of(ds: xr.Dataset) -> tuple[str, ...]:
    return tuple(str(v) for v in ds.data_vars if v in WAVELENGTH_NM)


def _as_array(ds: xr.Dataset, bands: tuple[str, ...]) -> np.ndarray:
    return np.stack([np.asarray(ds[b].values, dtype=np.float32) for b in bands], axis=1)


def strata(truth: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """Land-cover proxy per pixel of a (B, ...) image: NDVI class x brightness class (0..5);
    -1 where it cannot be computed. Without red and NIR, brightness alone (0, 1)."""
    vis = [bands.index(b) for b in ("B02", "B03", "B04") if b in bands] or [0]
    # a pixel missing any band is -1 below, so a plain mean (NaN there) is enough
    bright = (truth[vis].mean(axis=0) >= BRIGHTNESS_EDGE).astype(int)
    if "B04" in bands and ("B08" in bands or "B8A" in bands):
        red = truth[bands.index("B04")]
        nir = truth[bands.index("B08" if "B08" in bands else "B8A")]
        with np.errstate(invalid="ignore", divide="ignore"):
            ndvi = (nir - red) / (nir + red)
        ndvi_class = np.digitize(np.nan_to_num(ndvi, nan=0.0), NDVI_EDGES)
    else:
        ndvi_class = np.zeros(bright.shape, int)
    out = ndvi_class * 2 + bright
    return np.where(np.isfinite(truth).all(axis=0), out, -1)


#: ``neighbour_strata`` where no other date shows the pixel clear: other dates observe it
#: under cloud (the restoration blends a clouded reference), or none observes it at all
#: (the inversion alone, or no valid output): errors of two different kinds
NO_CLEAR_OTHER, NO_OTHER = -1, -2


def neighbour_strata(data: np.ndarray, clearish: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """(T, Y, X) land-cover proxy of each pixel-date as seen on the *nearest other* date
    where the pixel is clear (``NO_CLEAR_OTHER`` where other dates observe it but none
    clear, ``NO_OTHER`` where no other date observes it): what lies under a cloud, read the
    same way for the run's cloudy pixels and for the held-out ones (whose own date is hidden
    under simulated cloud), so the two can be matched stratum by stratum."""
    nt = data.shape[0]
    own = np.stack([strata(data[t], bands) for t in range(nt)])
    own = np.where(clearish, own, -1)
    observed = np.isfinite(data).all(axis=1)
    elsewhere = observed.sum(axis=0)[None] - observed > 0
    out = np.where(elsewhere, NO_CLEAR_OTHER, NO_OTHER).astype(np.int64)
    for t in range(nt):
        for u in sorted((u for u in range(nt) if u != t), key=lambda u: (abs(u - t), u)):
            fill = (out[t] < 0) & (own[u] >= 0)
            out[t][fill] = own[u][fill]
    return out


#: land-cover strata (``strata``, 0..5) and two more (``NO_CLEAR_OTHER``, ``NO_OTHER``)
N_STRATA = 8


def _stratum_index(proxy: np.ndarray) -> np.ndarray:
    """``neighbour_strata`` values as indices 0..7 (6: no other clear date, 7: no other
    observation)."""
    p = np.asarray(proxy).astype(np.int64)
    return np.select([p == NO_CLEAR_OTHER, p < 0], [N_STRATA - 2, N_STRATA - 1], p)


#: run classes whose land-cover mix the held-out pixels are weighted to (per simulated
#: class: shadow pixels read as cloudy with a high transmission, so they match "thin")
RUN_CLASS_OF = {"clear": "clear", "thin": "thin", "thick": "thick", "shadow": "thin"}


def _run_class(cloud_probability, transmission) -> np.ndarray:
    """A run's class of each pixel, as its evidence reads it: 0 clear (cloud probability
    under ``CLOUDY_AT``), 1 thin (cloudy, transmission at least ``THICK_T``), 2 thick; no
    reading of the evidence counts as cloudy, none of the transmission as thin."""
    cp = np.nan_to_num(np.asarray(cloud_probability, np.float64), nan=0.5)
    t = np.nan_to_num(np.asarray(transmission, np.float64), nan=1.0)
    return np.where(cp < CLOUDY_AT, 0, np.where(t >= THICK_T, 1, 2))


class _Collector:
    """Per held-out pixel rows, and the run's class shares and per-class strata counts."""

    def __init__(self, nb: int) -> None:
        self.nb = nb
        self.rows: dict[str, list[np.ndarray]] = {
            k: []
            for k in (
                "sq",
                "abs",
                "mix",
                "cls",
                "stratum",
                "case",
                "tile",
                "date",
                *FEATURE_LAYERS,
            )
        }
        self.band_sq: list[np.ndarray] = []
        self.class_counts = dict.fromkeys(("clear", "thin", "thick"), 0)
        #: run class -> pixel count per land-cover stratum (``neighbour_strata``)
        self.strata_counts = {c: np.zeros(N_STRATA) for c in self.class_counts}
        #: the same two counts per date (ISO day): a date's own mix, for its own estimate
        self.date_class_counts: dict[str, dict[str, int]] = {}
        self.date_strata_counts: dict[str, dict[str, np.ndarray]] = {}
        self.cases = 0

    def add_run_shares(
        self,
        base: xr.Dataset,
        data: np.ndarray,
        proxy: np.ndarray,
        dates: Sequence[str] | None = None,
    ) -> None:
        """The run's own pixels of the window: class (from the evidence and transmission)
        and land-cover proxy, for the run and (with ``dates``, a label per date) per date."""
        observed = np.isfinite(data).all(axis=1)
        read = _run_class(base["cloud_probability"].values, base["transmission"].values)
        # thick cloud that no other date observes is not restored (the run flags it: no
        # valid observation), so it is no part of the mix the estimate stands for
        masks = {
            "clear": observed & (read == 0),
            "thin": observed & (read == 1),
            "thick": observed & (read == 2) & (proxy != NO_OTHER),
        }
        for c, m in masks.items():
            self.class_counts[c] += int(m.sum())
            self.strata_counts[c] += np.bincount(_stratum_index(proxy[m]), minlength=N_STRATA)
            for d, label in enumerate(dates or ()):
                counts = self.date_class_counts.setdefault(label, dict.fromkeys(masks, 0))
                strata = self.date_strata_counts.setdefault(
                    label, {k: np.zeros(N_STRATA) for k in masks}
                )
                counts[c] += int(m[d].sum())
                strata[c] += np.bincount(_stratum_index(proxy[d][m[d]]), minlength=N_STRATA)

    def add(self, est, truth, cls, stratum, tile, layers, date: str = "", mix=None) -> None:
        diff = np.clip(est, 0, 1) - np.clip(truth, 0, 1)  # (B, N)
        self.rows["sq"].append((diff**2).sum(axis=0))
        self.rows["abs"].append(np.abs(diff).sum(axis=0))
        self.rows["mix"].append(np.ones(cls.size) if mix is None else np.asarray(mix, float))
        self.rows["cls"].append(cls)
        self.rows["stratum"].append(stratum)
        self.rows["case"].append(np.full(cls.size, self.cases))
        self.rows["tile"].append(np.full(cls.size, tile))
        self.rows["date"].append(np.full(cls.size, date, dtype=object))
        for k in FEATURE_LAYERS:
            self.rows[k].append(layers[k])
        self.band_sq.append(diff**2)
        self.cases += 1

    def merge(self, other: _Collector) -> None:
        """Add another window's collector (its cases renumbered after ours)."""
        for k, parts in other.rows.items():
            if k == "case":
                parts = [p + self.cases for p in parts]
            self.rows[k].extend(parts)
        self.band_sq.extend(other.band_sq)
        for c in self.class_counts:
            self.class_counts[c] += other.class_counts[c]
            self.strata_counts[c] += other.strata_counts[c]
        for label, counts in other.date_class_counts.items():
            mine = self.date_class_counts.setdefault(label, dict.fromkeys(counts, 0))
            strata = self.date_strata_counts.setdefault(
                label, {k: np.zeros(N_STRATA) for k in counts}
            )
            for c in counts:
                mine[c] += counts[c]
                strata[c] += other.date_strata_counts[label][c]
        self.cases += other.cases

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.rows.items()}
        out["nb"] = np.full(out["sq"].shape, self.nb, dtype=float)
        return out


# --------------------------------------------------------------------------- estimates


def _class_sums(rows, weights, index: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group (``index`` of each held-out pixel, 0 .. groups - 1) and simulated class:
    the sum of the weighted squared errors (mean over bands) and of the weights, each
    (groups, len(CLASSES))."""
    k = len(CLASSES)
    flat = np.asarray(index, dtype=np.intp) * k + rows["cls"].astype(np.intp)
    err = weights * rows["sq"] / rows["nb"]
    sq = np.bincount(flat, weights=err, minlength=groups * k).reshape(groups, k)
    w = np.bincount(flat, weights=weights, minlength=groups * k).reshape(groups, k)
    return sq, w


def _estimates_from_sums(sq: np.ndarray, w: np.ndarray, shares) -> dict[str, float]:
    """``_estimates`` from the per-class sums of weighted squared errors and of weights
    (``_class_sums``, summed over the groups), each (len(CLASSES),)."""

    def mse_of(*classes: str) -> float:
        idx = [CLASSES.index(c) for c in classes]
        total = float(w[idx].sum())
        return float(sq[idx].sum()) / total if total > 0 else float("nan")

    mse = {c: mse_of(c) for c in CLASSES}
    # the run's "thin" pixels, cloudy with a transmission of at least ``THICK_T``, hold its
    # cloud shadows too: simulated thin and shadow pixels stand for them
    run_mse = {"clear": mse["clear"], "thin": mse_of("thin", "shadow"), "thick": mse["thick"]}
    parts = [(shares.get(c, 0.0), v) for c, v in run_mse.items()]
    parts = [(f, v) for f, v in parts if math.isfinite(v) and f > 0]
    total = sum(f for f, _ in parts)
    mse["all"] = sum(f * v for f, v in parts) / total if total > 0 else float("nan")
    return mse


def _estimates(rows, weights, shares) -> dict[str, float]:
    """MSE per simulated class, and 'all': the classes at the run's own shares of clear, thin
    and thick pixels (the run's "thin" pixels, cloudy with a transmission of at least
    ``THICK_T``, hold its cloud shadows too: simulated thin and shadow pixels stand for them)."""
    sq, w = _class_sums(rows, weights, np.zeros(rows["sq"].shape, np.intp), 1)
    return _estimates_from_sums(sq[0], w[0], shares)


def _bootstrap_psnr(rows, weights, shares, rng, resamples: int) -> dict[str, list[float]]:
    """PSNR per class (and 'all') of ``resamples`` bootstrap resamples of the cases.

    A resample weighs each case by how often it was drawn, so it needs only the per-case
    sums (``_class_sums``): one small matrix product per resample instead of a pass over
    every held-out pixel (the demo's 200 resamples of 70 000 pixels took half a second)."""
    boot: dict[str, list[float]] = {c: [] for c in (*CLASSES, "all")}
    case_ids, index = np.unique(rows["case"], return_inverse=True)
    if case_ids.size < 2:
        return boot
    sq, w = _class_sums(rows, weights, index, case_ids.size)
    for _ in range(resamples):
        pick = rng.choice(case_ids.size, case_ids.size, replace=True)
        mult = np.bincount(pick, minlength=case_ids.size).astype(np.float64)
        for c, v in _estimates_from_sums(mult @ sq, mult @ w, shares).items():
            if math.isfinite(v):
                boot[c].append(_psnr(math.sqrt(v)))
    return boot


def _strata_weights(rows: dict[str, np.ndarray], strata_counts: dict[str, np.ndarray]):
    """Per held-out pixel: the share of its land-cover stratum among the run's pixels of its
    class over that share among the held-out pixels of its class (post-stratification).

    The error of a restored pixel depends mostly on what lies under the cloud (a changing
    snow cover or a ploughed field errs far more than a forest) and on whether another date
    shows it clear at all; the few windows of a validation draw a different mix of both
    for each class than the run's clouds cover (in a two-date series, clouding one date
    leaves the other's own clouds as the only reference: the run never restores a pixel
    that way where the other date is clear)."""
    mix = np.asarray(rows["mix"], float) if "mix" in rows else np.ones(rows["sq"].shape)
    w = mix.copy()
    s = _stratum_index(rows["stratum"])
    everything = np.sum(list(strata_counts.values()), axis=0)
    for k, c in enumerate(CLASSES):
        target = strata_counts[RUN_CLASS_OF[c]]
        if target.sum() <= 0:
            target = everything
        mine = rows["cls"] == k
        held = np.bincount(s[mine], weights=mix[mine], minlength=N_STRATA).astype(float)
        if held.sum() <= 0 or target.sum() <= 0:
            continue
        ratio = np.where(
            held > 0, (target / target.sum()) / np.maximum(held / held.sum(), 1e-12), 0.0
        )
        w[mine] = ratio[s[mine]] * mix[mine]
    return w


#: Run classes (``add_run_shares``), in the order of ``_read_class``.
RUN_CLASSES = ("clear", "thin", "thick")
#: Least held-out pixels of a simulated class in a land-cover stratum for a date to stand
#: on its own there (its error, its detection rates): a thinner cell of a date takes the
#: run's cell, every date's held-out pixels of that class and stratum. A few windows give
#: a date a few clouds; 25 pixels is about one cloud's edge.
MIN_CELL_PIXELS = 25


def _run_class_index(cls: np.ndarray) -> np.ndarray:
    """Simulated class (``CLASSES`` index) -> run class (``RUN_CLASSES`` index)."""
    of = np.array([RUN_CLASSES.index(RUN_CLASS_OF[c]) for c in CLASSES])
    return of[np.asarray(cls, dtype=np.intp)]


def _read_class(rows: dict[str, np.ndarray]) -> np.ndarray:
    """What the trial's evidence made of each held-out pixel, by the rule the run's own
    pixels are counted with (``_run_class``)."""
    return _run_class(rows["cloud_probability"], rows["transmission"])


def _cell_mask(rows: dict[str, np.ndarray], own: np.ndarray) -> np.ndarray:
    """The held-out pixels a date's estimate rests on (``own``: the date's), each cell of
    simulated class x land-cover stratum with fewer than ``MIN_CELL_PIXELS`` of the date's
    own replaced by the run's cell (every date's pixels of that class and stratum).

    A date's hold-out can miss whole strata: in a two-date run whose other date carries
    snow over part of the scene, the date's clearest pixels (the hold-out) are those under
    the other date's snow, and post-stratifying them alone to the date's mix gave its thick
    cloud 13 dB against a true 24 dB. The run's cell is the best estimate there is of that
    stratum's error; the date keeps its own wherever it has enough."""
    s = _stratum_index(rows["stratum"])
    cell = np.asarray(rows["cls"], dtype=np.intp) * N_STRATA + s
    mine = np.bincount(cell[own], minlength=len(CLASSES) * N_STRATA)
    return own | (mine[cell] < MIN_CELL_PIXELS)


def _detection_corrected(
    rows: dict[str, np.ndarray], strata_counts: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The run's pixels per class and land-cover stratum as they truly are, not as its
    evidence reads them, where the evidence is blind (misclassification-corrected counts).

    The run's own pixels are counted by what its evidence reads (``add_run_shares``); where
    the evidence cannot see, the cloud it misses counts as clear. The stack evidence reads
    a date against the other dates' clear sky; a pixel no other date shows clear
    (``NO_CLEAR_OTHER``: a two-date run whose other date is snowy there) has none. On the
    real two-date crop 91 % of the simulated haze on such pixels read as clear, against
    2-6 % elsewhere; the missed haze, delivered as it is, weighed as clear pixels, and the
    date's estimate of thin cloud read 22.4 dB against a true 16.5 dB. The held-out pixels
    measure that blindness: the share ``M[r, c]`` of held-out pixels of each class ``c``
    (simulated thin and shadow: the run's "thin") that the trial read as ``r``; the run's
    read counts ``r = M n`` are solved for the true counts ``n`` (non-negative least
    squares, scaled to the stratum's pixel count: the matrix method of estimating class
    areas from an error matrix).

    Only that stratum: where another date shows the pixel clear, the evidence sees, and what
    it misses of the simulator's clouds (their faint edges) says little about the run's own:
    corrected there too, the demo's and the synthetic stack's thin cloud read 1.7 and 0.5 dB
    more pessimistic than with this stratum alone, the real crop within 0.4 dB of it. With
    fewer than ``MIN_CELL_PIXELS`` held-out pixels of a class there, the run's reading
    stays."""
    from scipy.optimize import nnls

    read_counts = np.stack([np.asarray(strata_counts[c], np.float64) for c in RUN_CLASSES])
    out = {c: read_counts[k].copy() for k, c in enumerate(RUN_CLASSES)}
    blind = N_STRATA - 2  # ``NO_CLEAR_OTHER`` (``_stratum_index``)
    observed = read_counts[:, blind]
    total = observed.sum()
    if "cloud_probability" not in rows or not rows["sq"].size or total <= 0:
        return out
    mix = np.asarray(rows["mix"], float) if "mix" in rows else np.ones(rows["sq"].shape)
    true_cls = _run_class_index(rows["cls"])
    read = _read_class(rows)
    nc = len(RUN_CLASSES)
    in_blind = _stratum_index(rows["stratum"]) == blind
    cells = [in_blind & (true_cls == c) for c in range(nc)]
    if min(int(m.sum()) for m in cells) < MIN_CELL_PIXELS:
        return out
    tallies = np.stack(
        [np.bincount(read[m], weights=mix[m], minlength=nc) for m in cells], axis=1
    )  # (read, true), each held-out pixel at its weight (``_shadowed_haze_weights``)
    confusion = tallies / tallies.sum(axis=0, keepdims=True)
    n, _ = nnls(confusion, observed)
    if n.sum() > 0:
        for k, c in enumerate(RUN_CLASSES):
            out[c][blind] = n[k] * (total / n.sum())
    return out


def _shares_of(counts: dict[str, np.ndarray]) -> dict[str, float]:
    totals = {c: float(np.sum(v)) for c, v in counts.items()}
    grand = sum(totals.values())
    return {c: v / grand for c, v in totals.items()} if grand > 0 else {}


def _per_date(rows: dict[str, np.ndarray], col: _Collector) -> dict[str, dict[str, Any]]:
    """Per date (ISO day) with held-out pixels: the estimate of that date alone, its
    held-out pixels post-stratified to the date's own land-cover mix per class (a cell the
    date's hold-out barely reaches: the run's, ``_cell_mask``) and its classes mixed at the
    date's own shares ("all"), both corrected for what the evidence misses
    (``_detection_corrected``). Point estimates: a date holds the pixels of a few windows
    only, too few cases for a bootstrap interval of its own."""
    out: dict[str, dict[str, Any]] = {}
    for label in sorted({str(d) for d in rows["date"]} - {""}):
        own = rows["date"] == label
        if not sum(col.date_class_counts.get(label, {}).values()):
            continue
        m = _cell_mask(rows, own)
        sub = {k: v[m] for k, v in rows.items()}
        counts = _detection_corrected(sub, col.date_strata_counts[label])
        weights = _strata_weights(sub, counts)
        mse = _estimates(sub, weights, _shares_of(counts))
        entry: dict[str, Any] = {}
        for k, c in enumerate(CLASSES):
            n = int((sub["cls"] == k).sum())
            if n and math.isfinite(mse[c]):
                mine = int((own & (rows["cls"] == k)).sum())
                entry[c] = {
                    "rmse": math.sqrt(mse[c]),
                    "psnr": _psnr(math.sqrt(mse[c])),
                    "pixels": mine,
                    # held-out pixels of other dates standing in where the date has few
                    "run_pixels": n - mine,
                }
        if math.isfinite(mse["all"]):
            r = math.sqrt(mse["all"])
            entry["all"] = {"rmse": r, "psnr": _psnr(r), "pixels": int(own.sum())}
        if entry:
            out[label] = entry
    return out


def _summarise(
    col: _Collector, cfg: ValidationConfig, bands, labels, rng, *, run_scene: bool = False
) -> ValidationResult:
    rows = col.arrays()
    n = int(rows["sq"].size)
    counts = _detection_corrected(rows, col.strata_counts)
    weights = _strata_weights(rows, counts)
    shares = _shares_of(counts)
    mse = _estimates(rows, weights, shares)
    boot = _bootstrap_psnr(rows, weights, shares, rng, cfg.bootstrap)

    def interval(c: str) -> tuple[float, float]:
        vals = np.array([v for v in boot[c] if math.isfinite(v)])
        if vals.size < 10:
            return float("nan"), float("nan")
        return float(np.percentile(vals, 5)), float(np.percentile(vals, 95))

    per_class = {}
    for k, c in enumerate(CLASSES):
        m = rows["cls"] == k
        if m.any() and math.isfinite(mse[c]):
            lo, hi = interval(c)
            per_class[c] = {
                "rmse": math.sqrt(mse[c]),
                "psnr": _psnr(math.sqrt(mse[c])),
                "psnr_low": lo,
                "psnr_high": hi,
                "pixels": int(m.sum()),
            }
    per_tile = {}
    cloudy = rows["cls"] > 0
    for k, label in enumerate(labels):
        m = cloudy & (rows["tile"] == k)
        if m.any():
            r = math.sqrt(float((rows["sq"][m] / rows["nb"][m]).mean()))
            per_tile[str(label)] = {"pixels": int(m.sum()), "rmse": r, "psnr": _psnr(r)}
    per_date = _per_date(rows, col)
    band_sq = np.concatenate(col.band_sq, axis=1) if col.band_sq else np.zeros((len(bands), 0))
    rmse_all = math.sqrt(mse["all"]) if math.isfinite(mse["all"]) else float("nan")
    lo, hi = interval("all")
    return ValidationResult(
        pixels=n,
        psnr=_psnr(rmse_all),
        rmse=rmse_all,
        mae=float(rows["abs"].sum() / max(rows["nb"].sum(), 1)),
        rmse_per_band={b: float(np.sqrt(band_sq[i][cloudy].mean())) for i, b in enumerate(bands)}
        if cloudy.any()
        else {},
        per_class=per_class,
        cases=col.cases,
        config=asdict(cfg),
        shares=shares,
        per_tile=per_tile,
        per_date=per_date,
        psnr_low=lo,
        psnr_high=hi,
        error_model=fit_error_model(rows, rows["case"], weights),
        note=(
            "simulated cloud (pipeline.cloud_simulator)"
            if run_scene
            else "windows re-estimate the scene parameters; simulated cloud "
            "(pipeline.cloud_simulator)"
        ),
    )


# --------------------------------------------------------------------------- the run


def self_validate(
    cube: xr.Dataset | Sequence[xr.Dataset],
    *,
    prior: Any = DEFAULT_PRIOR,
    config: ValidationConfig | None = None,
    labels: Sequence[str] | None = None,
    scene: Any = None,
    origins: Sequence[tuple[int, int]] | None = None,
    grid_shape: tuple[int, int] | None = None,
    read_window: Callable[[int, slice, slice], xr.Dataset] | None = None,
    **options: Any,
) -> ValidationResult:
    """Estimate the restoration error of a run (see the module docstring).

    ``cube``: the run's cube, or one cube per tile (``labels`` name them in the per-tile
    table). ``read_window(k, ys, xs)``: a lazy cube of cube k's pixels ``ys`` x ``xs``
    (all its dates) read on its own, so a window reads its extent rather than every chunk of
    the run's cube it touches (by default ``cube.isel``: a window then reads whole chunks).
    ``prior`` and ``options`` are what the run passes to ``pipeline.restore``;
    ``scene`` (a ``SceneState`` of the run's area), ``origins`` (each cube's first row and
    column in the run's grid) and ``grid_shape`` place the windows in the run as its own
    restoration does, so a window is restored with the run's scene parameters, pair
    harmonisation and date ranks. Cubes may be lazy: only the windows are loaded.

    Each window is one task (load, evidence, simulated cloud, restore, score; its reads run
    inside it, ``_WindowCube``): on the Dask cluster of the run when there is one (the
    windows' reads, priors and models run on the workers, side by side), else one after the
    other here. A window that fails to load
    costs that window, not the run.
    """
    started = time.perf_counter()
    cfg = config or ValidationConfig()
    options = {k: v for k, v in options.items() if k not in ("period", "mode")}
    cubes = [cube] if isinstance(cube, xr.Dataset) else list(cube)
    labels = list(labels) if labels is not None else [str(k) for k in range(len(cubes))]
    if len(labels) != len(cubes):
        raise ValueError(f"self_validate got {len(cubes)} cubes but {len(labels)} labels")
    if origins is not None and len(origins) != len(cubes):
        raise ValueError(f"self_validate got {len(cubes)} cubes but {len(origins)} origins")
    bands = _bands_of(cubes[0])
    rng = np.random.default_rng(cfg.seed)
    per_cube = [
        cfg.windows // len(cubes) + (k < cfg.windows % len(cubes)) for k in range(len(cubes))
    ]
    prior_halo, restore_halo = _halos(prior, options)
    context = cfg.context if cfg.context >= 0 else restore_halo

    def window_tasks():
        """One (task, place) per window, built as the loop reaches it: a window's lazy cube
        takes a tenth of a second to build (``read_window``), so the first windows compute
        while the client builds the next."""
        for k, c in enumerate(cubes):
            ny, nx, nt = c.sizes["y"], c.sizes["x"], c.sizes["time"]
            if nt < 2:
                continue
            size = min(cfg.window, ny, nx)
            oy, ox = origins[k] if origins is not None else (0, 0)
            for y0, x0 in window_origins(ny, nx, size, max(1, per_cube[k]), rng):
                # the window is restored with its context (the restoration's own halo), as
                # the run restores it inside its chunk; only the inner window is scored
                cy0, cx0 = max(0, y0 - context), max(0, x0 - context)
                cy1, cx1 = min(ny, y0 + size + context), min(nx, x0 + size + context)
                t0, t1, eligible = _time_segment(nt, options, rng)
                window = _Window(
                    inner=(slice(y0 - cy0, y0 - cy0 + size), slice(x0 - cx0, x0 - cx0 + size)),
                    tile=k,
                    seed=int(rng.integers(0, 2**31 - 1)),
                    origin=(oy + cy0, ox + cx0),
                    grid_shape=grid_shape,
                    eligible=eligible,
                    evidence_halo=prior_halo,
                )
                win = _window_cube(c, k, slice(cy0, cy1), slice(cx0, cx1), read_window)
                carried = _WindowCube(win.isel(time=slice(t0, t1)))
                task = dask.delayed(_window_task, pure=True)(
                    carried, window, bands, cfg, prior, scene, options
                )
                yield task, f"{labels[k]} at ({y0}, {x0})"

    col = _Collector(len(bands))
    for part in _compute_each(window_tasks()):
        col.merge(part)
    result = (
        _summarise(col, cfg, bands, labels, rng, run_scene=scene is not None)
        if col.cases
        else ValidationResult(
            0,
            math.nan,
            math.nan,
            math.nan,
            {},
            {},
            0,
            asdict(cfg),
            note="needs at least two dates and clear pixels in a window",
        )
    )
    result.seconds = time.perf_counter() - started
    log.info("self-validation: %s", result.line())
    return result


class _WindowCube:
    """A window's (lazy) cube carried whole inside its window's task and read there.

    Passed to ``dask.delayed`` bare, the cube's read tasks would join the graph as tasks of
    their own, spread over the workers, and each window's task would wait for its pixels to
    be gathered onto one of them: on the demo's 2 workers the windows then ran one at a
    time, in turn with the reads of the next. Read inside the task, a window's reads, prior
    and restore run on one worker and the windows run side by side.
    """

    __slots__ = ("cube",)

    def __init__(self, cube: xr.Dataset) -> None:
        self.cube = cube

    def __dask_tokenize__(self) -> tuple:
        from dask.base import tokenize

        return ("_WindowCube", tokenize(self.cube))

    def load(self) -> xr.Dataset:
        """The window's pixels, read in this thread (a worker's task, or the caller)."""
        return self.cube.compute(scheduler="sync")


def _window_cube(
    cube: xr.Dataset,
    k: int,
    ys: slice,
    xs: slice,
    read_window: Callable[[int, slice, slice], xr.Dataset] | None,
) -> xr.Dataset:
    """Cube k's pixels ``ys`` x ``xs``: read on their own where a reader is given and it
    gives the same grid and dates, else a slice of the cube."""
    part = cube.isel(y=ys, x=xs)
    if read_window is None:
        return part
    own = read_window(k, ys, xs)
    same = (
        own.sizes == part.sizes
        and np.array_equal(own["time"].values, part["time"].values)
        and np.allclose(own["y"].values, part["y"].values)
        and np.allclose(own["x"].values, part["x"].values)
    )
    if not same:
        log.debug("self-validation: the window's own read differs from the cube; slicing")
        return part
    return own


def _compute_each(tasks: Iterable[tuple[Any, str]]) -> list[_Collector]:
    """The results of the windows' (task, place) pairs: on the current Dask cluster when
    there is one (each task submitted as soon as it is built, so they run side by side
    while the next are built), else one by one in this process; a window whose task fails
    is logged and skipped."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        client = None
    out = []
    if client is not None:
        futures = [(client.compute(task), place) for task, place in tasks]
        for future, place in futures:
            try:
                out.append(future.result())
            except Exception as exc:  # noqa: BLE001 - a read failure costs a window
                log.warning("self-validation skipped the window of %s: %s", place, exc)
        return out
    for task, place in tasks:
        try:
            out.append(task.compute(scheduler="sync"))
        except Exception as exc:  # noqa: BLE001 - a read failure costs a window
            log.warning("self-validation skipped the window of %s: %s", place, exc)
    return out


def held_out_class(sim: Any) -> np.ndarray:
    """Class (``CLASSES`` index) of each pixel of a simulated cloud, one per pixel: thick,
    else shadow (a cloud shadow, hazy or not), else thin (haze over an unshadowed surface),
    else clear.

    The simulator's thin and shadow masks overlap (haze over a shadow: a fifth of its thin
    pixels); the overlap counts as shadow, so the thin estimate is that of haze, whatever
    the shadows' depth. A simulator's shadow depth is its own (this one halves the visible
    reflectance and takes 70 % of the SWIR, the demo's generator 25-45 %): counted as thin,
    the shadowed haze put the demo's thin estimate 2.5 dB under its truth. A comparison with
    truth uses the same classes (``pipeline.bench._validation_check``)."""
    return np.select([sim.thick, sim.shadow, sim.thin], [2, 3, 1], default=0)


def _shadowed_haze_weights(sim: Any, held: np.ndarray) -> np.ndarray:
    """Per held-out pixel of one trial: a weight that gives its shadow pixels the trial
    cloud's own share of haze over a shadow (1 for the other classes).

    Haze over a shadow restores far worse than a shadow alone, and the few hundred shadow
    pixels a trial's hold-out catches (the clear pixels of one inner window) hold anything
    from none to most of it (75 % on one synthetic date, against the simulator's 50 %). The
    trial's whole cloud field shows what share the simulator made; the held-out shadow
    pixels are weighted to it."""
    shadow = sim.shadow & ~sim.thick
    hazy = shadow & sim.thin
    w = np.ones(int(held.sum()))
    h_shadow, h_hazy = shadow[held], hazy[held]
    if not shadow.any() or not h_shadow.any():
        return w
    share = hazy.sum() / shadow.sum()
    held_share = h_hazy.sum() / h_shadow.sum()
    if 0 < held_share < 1:
        w[h_hazy] = share / held_share
        w[h_shadow & ~h_hazy] = (1 - share) / (1 - held_share)
    return w


def _day_labels(win: xr.Dataset) -> list[str]:
    """The ISO day of each date of a window cube (the keys of ``per_date``; two
    acquisitions of one day, as from overlapping orbits, share a row)."""
    if "time" not in win.coords:
        return [str(t) for t in range(win.sizes.get("time", 0))]
    return [str(d) for d in np.datetime_as_string(win["time"].values, unit="D")]


def _spread_dates(order: np.ndarray, count: int, gap: int) -> list[int]:
    """Up to ``count`` dates from ``order`` (a random permutation), no two within ``gap``
    places of each other in the series: a date clouded for the trial must not take away
    the nearest references of another (that would make every estimate pessimistic)."""
    picked: list[int] = []
    for t in (int(v) for v in order):
        if all(abs(t - p) > gap for p in picked):
            picked.append(t)
        if len(picked) == count:
            break
    return picked


def _halos(prior: Any, options: dict[str, Any]) -> tuple[int, int]:
    """The spatial radii the run's restoration reads around a pixel: the prior's alone (its
    cloud evidence) and the prior's plus the fusion's (the restored output)."""
    from dataclasses import fields as dc_fields

    from .kernels import FusionConfig
    from .priors import get_prior

    fusion_names = {f.name for f in dc_fields(FusionConfig)}
    fusion = FusionConfig(**{k: v for k, v in options.items() if k in fusion_names})
    prior_kw = {k: v for k, v in options.items() if k not in fusion_names and k not in RESTORE_ONLY}
    prior_obj = get_prior(prior, **prior_kw) if isinstance(prior, str) else prior
    return int(prior_obj.halo), int(prior_obj.halo + fusion.halo)


#: ``restore`` options that are neither the prior's nor the fusion's
RESTORE_ONLY = ("sample_pixels", "time_block")
#: Largest cloud probability a hold-out pixel may have when the evidence is never certain
#: (a short series: with two dates the stack evidence keeps every pixel above ~0.15).
HOLD_OUT_CAP = 0.3


#: Cloud probabilities closer than this are the same evidence: the clearest fifth takes
#: every pixel within it of the fifth's edge.
HOLD_OUT_TIES = 0.01


def _hold_out_threshold(cp: np.ndarray, cfg: ValidationConfig) -> float:
    """``cfg.clear_probability``, or, where the evidence never gets that certain, the
    clearest fifth of the window's pixels up to ``HOLD_OUT_CAP``, ties included.

    With few dates the evidence takes a few levels (a two-date pixel reads 0.125 or 0.25
    over most of a scene), so the fifth's edge falls inside a cluster of pixels at one
    level, and which side of the edge the cluster lies on turns on the fourth decimal: a
    change of 0.0008 in the cloud probability of 4 % of the real crop's pixels (a source
    abstaining where it had voted "no shadow") moved a date's hold-out from 2 208 to 444
    pixels and its thick-cloud estimate by 2.9 dB. Every pixel within ``HOLD_OUT_TIES`` of
    the edge is held out with it."""
    low = float(np.percentile(cp, 20)) if cp.size else cfg.clear_probability
    if low <= cfg.clear_probability:
        return cfg.clear_probability
    return min(HOLD_OUT_CAP, low + HOLD_OUT_TIES)


@dataclass(frozen=True)
class _Window:
    """One validation window: its scored part inside the loaded context, the tile it
    belongs to, its own seed, and where its context sits in the run's grid."""

    inner: tuple[slice, slice]
    tile: int
    seed: int
    origin: tuple[int, int]
    grid_shape: tuple[int, int] | None
    #: [first, last) of the window's dates that may be clouded (their time neighbourhood
    #: lies within the dates the window holds)
    eligible: tuple[int, int] = (0, 1 << 30)
    #: px around the inner window that its cloud evidence reads (the prior's halo)
    evidence_halo: int = 0

    def evidence_crop(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """The part of the loaded context the inner window's cloud evidence needs: the
        inner window and the prior's halo (the fusion's much wider halo serves only the
        restore)."""
        return tuple(  # type: ignore[return-value]
            slice(max(0, s.start - self.evidence_halo), min(n, s.stop + self.evidence_halo))
            for s, n in zip(self.inner, shape, strict=True)
        )


#: A windowed run's validation window holds this many times the dates one of the run's
#: tasks holds (time block + both neighbourhoods), at a seeded place in the series.
SEGMENT_BLOCKS = 3


def _time_segment(nt: int, options: dict[str, Any], rng: np.random.Generator):
    """The dates [t0, t1) a window holds and the [first, last) of them it may cloud.

    Without a time window the run restores each chunk over the whole series, and so does a
    window. With one (``time_window_dates`` N), a run task holds a block of B dates and N on
    each side whatever the series' length, and a window holds ``SEGMENT_BLOCKS`` times that
    at a random place: its memory stays a run task's order, not the series'. Only dates whose
    N neighbours on each side lie in the segment (or the series ends there) are clouded, so
    they see the references the run gives them."""
    from .restore import DEFAULT_TIME_BLOCK

    window = options.get("time_window_dates")
    if window is None:
        return 0, nt, (0, nt)
    block = int(options.get("time_block") or DEFAULT_TIME_BLOCK)
    span = min(nt, SEGMENT_BLOCKS * (block + 2 * int(window)))
    t0 = int(rng.integers(0, nt - span + 1))
    t1 = t0 + span
    first = 0 if t0 == 0 else int(window)
    last = span if t1 == nt else span - int(window)
    return t0, t1, (first, max(first, last))


def _window_task(win, window: _Window, bands, cfg, prior, scene, options) -> _Collector:
    """One window, start to end (a Dask task): evidence, hold-out, simulated cloud on a few
    dates, their restoration with the run's settings, the scores."""
    from dataclasses import fields as dc_fields

    from .cloud_simulator import simulate
    from .kernels import FusionConfig
    from .restore import cloud_evidence, restore

    col = _Collector(len(bands))
    if isinstance(win, _WindowCube):
        win = win.load()
    rng = np.random.default_rng(window.seed)
    inner = window.inner
    data = _as_array(win, bands)
    if not np.isfinite(data).any():
        return col
    fusion_names = {f.name for f in dc_fields(FusionConfig)}
    placed: dict[str, Any] = {"origin": window.origin}
    if window.grid_shape is not None:
        placed["grid_shape"] = window.grid_shape
    # The hold-out, the strata and the run shares are read on the inner window only, so its
    # evidence is computed on the inner window and the prior's halo: a sixth of the context
    # the restore below needs (the prior is the costlier half of a window otherwise).
    ey, ex = window.evidence_crop(data.shape[2:])
    evidence_placed = {
        **placed,
        "origin": (window.origin[0] + ey.start, window.origin[1] + ex.start),
    }
    base = cloud_evidence(
        win.isel(y=ey, x=ex),
        prior=prior,
        scene=scene,
        **evidence_placed,
        time_window_dates=options.get("time_window_dates"),
        time_block=options.get("time_block"),
        **{k: v for k, v in options.items() if k not in fusion_names and k not in RESTORE_ONLY},
    )
    observed = np.isfinite(data).all(axis=1)
    # NaN (no reading: cloudy) outside the evidence crop, which is never scored
    cp = np.ones(observed.shape, np.float64)
    cp[:, ey, ex] = np.nan_to_num(base["cloud_probability"].values, nan=1.0)
    # The hold-out takes the pixels the evidence is surest of; "another date shows it
    # clear" (the strata) is the run's own reading of clear, as its class shares count it:
    # read with the hold-out's stricter threshold, a two-date run's cloudy pixels would
    # mostly land in "no other clear date" (the evidence is rarely sure with two dates)
    # although their other date is a clear reference, and be matched with held-out pixels
    # whose only other date really is under cloud (6 dB pessimistic on thick cloud).
    clear = observed & (cp <= _hold_out_threshold(cp[:, inner[0], inner[1]], cfg))
    scored = np.zeros(clear.shape[1:], dtype=bool)
    scored[inner] = True
    clear &= scored[None]
    proxy = neighbour_strata(data, observed & (cp < CLOUDY_AT), bands)
    days = _day_labels(win)
    col.add_run_shares(
        base.isel(
            y=slice(inner[0].start - ey.start, inner[0].stop - ey.start),
            x=slice(inner[1].start - ex.start, inner[1].stop - ex.start),
        ),
        data[:, :, inner[0], inner[1]],
        proxy[:, inner[0], inner[1]],
        days,
    )
    first, last = window.eligible
    candidates = [
        t for t in range(data.shape[0]) if first <= t < last and clear[t][inner].mean() > 0.2
    ]
    if not candidates:
        return col
    targets = sorted(_spread_dates(rng.permutation(candidates), cfg.dates_per_window, MIN_DATE_GAP))
    wl = np.array([WAVELENGTH_NM[b] for b in bands])
    cloudy = data.copy()
    sims = {}
    for target in targets:
        # the simulator reads the clouded date alone: one date in, one date out
        sim = simulate(
            np.nan_to_num(data[target : target + 1], nan=0.0),
            wl,
            target=0,
            kind=cfg.kind,
            cover=cfg.cover,
            seed=int(rng.integers(0, 2**31 - 1)),
        )
        cloudy[target] = np.where(np.isfinite(data[target]), sim.cloudy[0], np.nan)
        sims[target] = sim
    trial = win.copy()
    for i, b in enumerate(bands):
        trial[b] = (win[b].dims, cloudy[:, i])
    if SCL_BAND in trial.data_vars:
        # the scene classification of the clear original would contradict the simulated
        # cloud; a real SCL would not call it vegetation: no evidence either way
        scl = trial[SCL_BAND].values.copy()
        for target, sim in sims.items():
            scl[target][sim.thin | sim.thick | sim.shadow] = SCL.UNCLASSIFIED
        trial[SCL_BAND] = (win[SCL_BAND].dims, scl)
    # only the clouded dates are restored; every date still serves as a reference
    out = restore(trial, prior=prior, scene=scene, dates=targets, **placed, **options)
    for k, (target, sim) in enumerate(sims.items()):
        est = np.stack([out[b].values[k] for b in bands])
        held = clear[target] & np.isfinite(est).all(axis=0)
        if not held.any():
            continue
        cls = held_out_class(sim)[held]
        layers = {n: out[n].values[k][held] for n in FEATURE_LAYERS}
        mix = _shadowed_haze_weights(sim, held)
        col.add(
            est[:, held],
            data[target][:, held],
            cls,
            proxy[target][held],
            window.tile,
            layers,
            days[target],
            mix,
        )
    return col


# --------------------------------------------------------------------------- against truth


def compare_with_truth(result: ValidationResult, true_psnr: dict[str, float]) -> str:
    """A table of the estimate beside the true restored PSNR per class (where truth exists:
    the demo, the quality benchmark)."""
    head = f"{'pixel set':<10}{'true':>9}{'estimate':>10}{'interval 5-95 %':>18}{'diff':>8}"
    lines = [head, "-" * len(head)]
    for c in ("all", *CLASSES):
        est = (
            {"psnr": result.psnr, "psnr_low": result.psnr_low, "psnr_high": result.psnr_high}
            if c == "all"
            else result.per_class.get(c)
        )
        true = true_psnr.get(c, float("nan"))
        if not est:
            continue
        diff = est["psnr"] - true
        interval = f"[{est['psnr_low']:.1f}, {est['psnr_high']:.1f}]"
        lines.append(f"{c:<10}{true:>9.2f}{est['psnr']:>10.2f}{interval:>18}{diff:>+8.2f}")
    return "\n".join(lines)


def error_layer_calibration(
    error_estimate: np.ndarray,
    interval90: float,
    estimate: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """How the error layer fares against true per-pixel errors.

    ``error_estimate`` (..., Y, X), ``estimate`` / ``truth`` (B, ..., Y, X) reflectance; the
    true error is the RMS over bands of the clipped difference. Returns the share of pixels
    within the nominal 90 % interval (``coverage90``), the rank correlation of estimate and
    error (``spearman``), and the RMS of error / estimate (``rms_ratio``, 1 = calibrated).
    """
    err = np.sqrt(np.mean((np.clip(estimate, 0, 1) - np.clip(truth, 0, 1)) ** 2, axis=0))
    est = np.asarray(error_estimate, dtype=np.float64)
    ok = np.isfinite(err) & np.isfinite(est) & (est > 0)
    if mask is not None:
        ok &= mask
    if not ok.any():
        return {
            "coverage90": float("nan"),
            "spearman": float("nan"),
            "rms_ratio": float("nan"),
            "pixels": 0,
        }
    e, s = err[ok], est[ok]
    return {
        "coverage90": float(np.mean(e <= interval90 * s)),
        "spearman": _spearman(s, e),
        "rms_ratio": float(np.sqrt(np.mean((e / s) ** 2))),
        "pixels": int(ok.sum()),
    }
