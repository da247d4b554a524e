"""The offline demo: the whole pipeline on an embedded synthetic stack with known truth.

Steps (each a library call): generate a synthetic L2A stack -> write COGs and PC-like STAC
items -> find them with the same search code a real run uses (a local catalog) -> the
main flow (lazy odc-stac cube, restoration on a local Dask cluster, Zarr) -> accuracy
against the truth -> quicklook PNG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import odc.geo.xr  # noqa: F401  (the .odc accessor)
import xarray as xr

from pipeline.archive import ArchiveConfig, ArchiveExistsError, open_archive
from pipeline.catalog import SearchParams, search
from pipeline.cluster import ClusterConfig
from pipeline.cube import CubeConfig, load_cube
from pipeline.metrics import format_table, score
from pipeline.priors import DEFAULT_PRIOR
from pipeline.quicklook import prior_label_layers, save_prior_labels, save_quicklook
from pipeline.validation import ERROR_LAYER, compare_with_truth, error_layer_calibration

from .run import RunConfig, RunSummary, run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    output_dir: str = "phyvlm-demo"
    size: int = 512
    dates: int = 10
    seed: int = 0
    chunk_size: int = 256
    workers: int = 2
    threads: int = 1
    zarr_format: Literal[2, 3] = 3
    overwrite: bool = False
    prior: str = DEFAULT_PRIOR
    #: overview levels halve the resolution until the image fits this many pixels
    overview_min_size: int = 256
    #: keywords of the prior, e.g. {"model": PATH} for prior "vlm" (see RunConfig)
    prior_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 64 <= self.size <= 4096:
            raise ValueError(f"--size {self.size} out of range: use 64..4096 pixels")
        if not 3 <= self.dates <= 60:
            raise ValueError(f"--dates {self.dates} out of range: use 3..60")


@dataclass
class DemoResult:
    store: Path
    quicklook: Path
    catalog: Path
    summary: RunSummary
    scores: dict[str, dict[str, dict[str, float]]]
    seconds: float
    notes: list[str] = field(default_factory=list)
    error_calibration: dict[str, float] = field(default_factory=dict)

    def validation_lines(self) -> list[str]:
        """The run's self-validation beside the truth, and the error layer's calibration."""
        v = self.summary.validation
        if v is None or not v.pixels:
            return []
        # the estimate's classes: haze over a shadow is shadow (``held_out_class``)
        scored = self.scores.get("restored_validation_classes", self.scores["restored"])
        true = {k: row["psnr"] for k, row in scored.items()}
        lines = [
            "Self-validation estimate (held-out clear pixels under simulated cloud) vs truth",
            compare_with_truth(v, true),
        ]
        if self.error_calibration:
            c = self.error_calibration
            lines.append(
                f"error_estimate vs the true per-pixel error (cloudy pixels): {c['coverage90']:.1%}"
                f" within the nominal 90 % interval, rank correlation {c['spearman']:.2f}, "
                f"RMS(error / estimate) {c['rms_ratio']:.2f}"
            )
        return [*lines, ""]

    def report(self) -> str:
        parts = [
            format_table(self.scores["input"], "Cloudy input vs truth (all dates)"),
            "",
            format_table(self.scores["restored"], "Restored vs truth (all dates)"),
            "",
            *self.validation_lines(),
            "PSNR in dB, SAM in degrees, on reflectance clipped to [0, 1], all bands; clear/thin/"
            "thick/shadow are the simulated cloud classes. Clear pixels carry the 20 m bands' "
            "resolution loss against the 10 m truth (read back at 20 m) in both tables.",
            "",
            *self.summary.lines(),
            f"quicklook        {self.quicklook}",
            f"input items      {self.catalog} (the synthetic scenes, as STAC items)",
            f"demo total       {self.seconds:.1f} s",
            "",
            "Open it in a notebook:",
            f"  import xarray as xr; ds = xr.open_zarr('{self.store}', decode_coords='all')",
            *self.notes,
        ]
        return "\n".join(parts)


def _masks(stack: Any, t: int | slice) -> dict[str, np.ndarray]:
    thin = np.asarray(stack.thin[t], dtype=bool)
    thick = np.asarray(stack.thick[t], dtype=bool)
    shadow = np.asarray(stack.shadow[t], dtype=bool)
    clear = ~(thin | thick | shadow)
    return {
        "all": np.ones_like(clear),
        "clear": clear,
        "thin": thin & ~thick,
        "thick": thick,
        "shadow": shadow & ~thick,
    }


def _stacked(ds: xr.Dataset, bands: tuple[str, ...]) -> np.ndarray:
    """(bands, y, time * x): every date side by side, so one call scores the whole series."""
    arr = np.stack([np.asarray(ds[b].values, dtype="float32") for b in bands])  # (B, T, Y, X)
    b, t, y, x = arr.shape
    return arr.transpose(0, 2, 1, 3).reshape(b, y, t * x)


def _stacked_masks(stack: Any, n: int) -> dict[str, np.ndarray]:
    per_date = [_masks(stack, t) for t in range(n)]
    return {k: np.concatenate([m[k] for m in per_date], axis=1) for k in per_date[0]}


def _quicklook_date(stack: Any) -> int:
    """The date with the most mixed cloud: the most thin + thick pixels short of overcast."""
    frac = np.asarray(stack.thin | stack.thick).mean(axis=(1, 2))
    frac = np.where(frac > 0.85, -1, frac)
    return int(np.argmax(frac))


def run_demo(config: DemoConfig | None = None, *, progress: bool = True) -> DemoResult:
    from pipeline.synthetic import make_stack, write_stac_items

    config = config or DemoConfig()
    started = time.perf_counter()
    out = Path(config.output_dir).resolve()
    store = out / "restored.zarr"
    catalog = out / "stac"
    if store.exists() and not config.overwrite:
        raise ArchiveExistsError(
            f"{store} already exists from an earlier demo: pass --overwrite to replace it, "
            "or --output to use another folder"
        )
    out.mkdir(parents=True, exist_ok=True)

    log.info(
        "generating a synthetic %d-date %dx%d px stack (seed %d)",
        config.dates,
        config.size,
        config.size,
        config.seed,
    )
    stack = make_stack(shape=(config.dates, config.size, config.size), seed=config.seed)
    items = write_stac_items(stack, catalog)
    bands = tuple(str(b) for b in stack.truth.data_vars)

    times = stack.truth["time"].values
    first = np.datetime_as_string(times.min(), unit="D")
    last = np.datetime_as_string(times.max(), unit="D")
    params = SearchParams(
        bbox=_lonlat_bbox(items), datetime=f"{first}/{last}", catalog=str(catalog / "items.json")
    )
    found = search(params)  # the same search code path as a Planetary Computer run
    log.info("search found %d of %d written items", len(found), len(items))

    run_config = RunConfig(
        search=params,
        output=str(store),
        cube=CubeConfig(bands=bands, resolution=10.0, chunk_size=config.chunk_size),
        archive=ArchiveConfig(
            zarr_format=config.zarr_format,
            chunk_size=config.chunk_size,
            mode="overwrite" if config.overwrite else "create",
        ),
        cluster=ClusterConfig(
            n_workers=config.workers,
            threads_per_worker=config.threads,
            dashboard_address="127.0.0.1:0",
        ),
        prior=config.prior,
        prior_options=config.prior_options,
        overview_min_size=config.overview_min_size,
    )
    summary = run(run_config, progress=progress, items=found, geobox=stack.truth.odc.geobox)

    restored = open_archive(store).load()
    # The input row scores what the pipeline was given (20 m bands at 20 m, read back by
    # odc-stac), so both rows share the same resolution floor on clear pixels.
    loaded = load_cube(found, run_config.cube, geobox=stack.truth.odc.geobox).compute()
    n = restored.sizes["time"]
    if n != stack.truth.sizes["time"]:
        raise RuntimeError(
            f"the archive has {n} dates, the synthetic stack {stack.truth.sizes['time']}"
        )
    masks = _stacked_masks(stack, n)
    truth = _stacked(stack.truth, bands)
    scores = {
        "input": score(truth, _stacked(loaded, bands), masks),
        "restored": score(truth, _stacked(restored, bands), masks),
        # the self-validation's classes, one per pixel: haze over a shadow counts as shadow
        "restored_validation_classes": score(
            truth,
            _stacked(restored, bands),
            {**masks, "thin": masks["thin"] & ~masks["shadow"]},
        ),
    }
    calibration = {}
    if ERROR_LAYER in restored and summary.validation and summary.validation.error_model:
        cloudy = ~_stacked_masks(stack, n)["clear"]
        est_layer = (
            np.asarray(restored[ERROR_LAYER].values).transpose(1, 0, 2).reshape(cloudy.shape)
        )
        calibration = error_layer_calibration(
            est_layer,
            summary.validation.error_model.interval90,
            _stacked(restored, bands),
            truth,
            cloudy,
        )
    t = _quicklook_date(stack)
    png = save_quicklook(
        stack.observed.isel(time=t),
        restored.isel(time=t),
        out / "quicklook.png",
        truth=stack.truth.isel(time=t),
        title=f"PhyVLM-CR demo, {np.datetime_as_string(restored.time.values[t], unit='D')}",
    )
    notes = []
    if prior_label_layers(restored):  # a VLM prior: show its per-region labels too
        labels_png = save_prior_labels(restored, out / "prior_labels.png", time_index=t)
        notes.append(f"VLM labels       {labels_png}")
    return DemoResult(
        store=store,
        quicklook=png,
        catalog=catalog,
        summary=summary,
        scores=scores,
        seconds=time.perf_counter() - started,
        notes=notes,
        error_calibration=calibration,
    )


def _lonlat_bbox(items: list) -> tuple[float, float, float, float]:
    boxes = np.array([it.bbox for it in items], dtype=float)
    return (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
