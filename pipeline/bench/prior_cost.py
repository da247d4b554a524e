"""Cost of the VLM prior: crops per second, seconds per megapixel, GPU-hours for an area.

``measure_prior_cost`` times the prior's own per-block path (``VLMPrior.region_probabilities``:
quicklook, crops on the global grid, resize, batched scoring) on a synthetic one-date block
of ``crops`` regions, after one untimed warm-up block (first-call costs: kernels, caches).
The checkpoint load is timed separately. ``estimate`` turns a throughput into hours for an
area and a number of dates, counting the regions that neighbouring chunks score twice
because of the prior's halo (``halo_overhead``).

Without ``model`` a tiny random Qwen2-VL is built in a temporary folder
(``pipeline.priors._vlm_tiny``): its figures are the pipeline's overhead floor, not the cost
of a real checkpoint, and the report says so.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BANDS = ("B02", "B03", "B04")


@dataclass(frozen=True)
class PriorCostConfig:
    """What to measure and what to estimate.

    model: checkpoint folder / hub id; None builds the tiny random Qwen2-VL (overhead only).
    crops: regions in the timed block (rounded up to a square grid).
    repeats: timed passes over the block (the median is reported).
    area_km2, dates, resolution_m, chunk_px: the job to estimate.
    gpu_crops_per_s: assumed GPU throughput; None uses the measured one (labelled with the
    device it was measured on).
    """

    model: str | None = None
    crops: int = 32
    repeats: int = 3
    region_px: int = 256
    quicklook_px: int = 224
    batch_size: int = 16
    device: str = "auto"
    area_km2: float = 10_000.0
    dates: int = 12
    resolution_m: float = 10.0
    chunk_px: int = 1024
    gpu_crops_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.crops < 1 or self.repeats < 1:
            raise ValueError("crops and repeats must be >= 1")
        if self.area_km2 <= 0 or self.dates < 1 or self.resolution_m <= 0:
            raise ValueError("area_km2 and resolution_m must be > 0 and dates >= 1")
        if self.chunk_px < self.region_px:
            raise ValueError("chunk_px must be >= region_px")
        if self.gpu_crops_per_s is not None and self.gpu_crops_per_s <= 0:
            raise ValueError("gpu_crops_per_s must be > 0")


@dataclass
class PriorCostReport:
    config: PriorCostConfig
    model: str
    tiny_model: bool
    device: str
    dtype: str
    cpu: str
    load_seconds: float
    crops_timed: int
    seconds_per_pass: float
    crops_per_s: float
    seconds_per_megapixel: float
    halo_overhead: float
    crops_per_date: float
    hours_measured: float
    gpu_crops_per_s: float
    gpu_throughput_source: str
    gpu_hours: float

    def lines(self) -> list[str]:
        c = self.config
        out = [
            f"model              {self.model}"
            + ("  (tiny random: overhead floor only)" if self.tiny_model else ""),
            f"device / dtype     {self.device} / {self.dtype}   cpu: {self.cpu}",
            f"checkpoint load    {self.load_seconds:.2f} s (once per worker)",
            f"timed block        {self.crops_timed} crops of {c.region_px} px -> {c.quicklook_px} px, batch {c.batch_size}",
            f"throughput         {self.crops_per_s:.2f} crops/s   {self.seconds_per_megapixel:.3f} s/megapixel (one date)",
            f"halo overhead      x{self.halo_overhead:.2f} regions scored (chunks of {c.chunk_px} px)",
            f"job                {c.area_km2:g} km2 x {c.dates} dates at {c.resolution_m:g} m: "
            f"{self.crops_per_date * c.dates:,.0f} crops",
            f"hours at measured  {self.hours_measured:.2f} h on {self.device}",
            f"GPU-hours          {self.gpu_hours:.2f} h at {self.gpu_crops_per_s:.2f} crops/s "
            f"({self.gpu_throughput_source})",
        ]
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = asdict(self.config)
        return d


def halo_overhead(chunk_px: int, region_px: int, halo_px: int) -> float:
    """Regions scored per interior chunk (with its halo) / regions the chunk owns."""
    from ..priors._vlm_mapping import regions_inside

    origin = 10 * chunk_px  # an interior chunk aligned to the chunk grid
    big = 1000 * chunk_px
    first, stop = regions_inside(origin - halo_px, chunk_px + 2 * halo_px, big, region_px)
    return (stop - first) ** 2 / (chunk_px / region_px) ** 2


def _synthetic_block(n_side: int, region_px: int, seed: int = 0) -> np.ndarray:
    """(1, 3, H, W) float32 reflectance with smooth bright (cloud-like) and dark structure."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    side = n_side * region_px
    field = gaussian_filter(rng.standard_normal((side, side)), sigma=region_px / 6)
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    base = np.array([0.04, 0.07, 0.06])[:, None, None]  # vegetation-like B02, B03, B04
    cloud = np.clip(field - 0.6, 0, None)[None] * 2.0
    return (base + cloud).astype(np.float32)[None]


def measure_prior_cost(config: PriorCostConfig, *, progress: bool = False) -> PriorCostReport:
    """Measure throughput on this machine and estimate the job (see the module docstring)."""
    from ..priors import BlockLocation, VLMConfig, VLMPrior
    from ..priors._vlm_model import get_scorer

    with tempfile.TemporaryDirectory(prefix="phyvlm-tiny-vlm-") as tmp:
        model = config.model
        tiny = model is None
        if model is None:
            from ..priors._vlm_tiny import build_tiny_vlm

            model = str(build_tiny_vlm("qwen2_vl", Path(tmp) / "tiny-qwen2-vl"))
            log.info("no --vlm-model: built a tiny random Qwen2-VL in %s (overhead only)", model)
        prior = VLMPrior(
            VLMConfig(
                model=model,
                region_px=config.region_px,
                quicklook_px=config.quicklook_px,
                batch_size=config.batch_size,
                device=config.device,
            )
        )
        started = time.perf_counter()
        scorer = get_scorer(prior.config.scorer_spec())
        load_seconds = time.perf_counter() - started

        n_side = math.ceil(math.sqrt(config.crops))
        block = _synthetic_block(n_side, config.region_px)
        side = block.shape[-1]
        location = BlockLocation((0, 0), (side, side))
        prior.region_probabilities(block, BANDS, location)  # warm-up, untimed
        times = []
        for k in range(config.repeats):
            t0 = time.perf_counter()
            prior.region_probabilities(block, BANDS, location)
            times.append(time.perf_counter() - t0)
            if progress:
                print(f"  pass {k + 1}/{config.repeats}: {times[-1]:.2f} s", flush=True)
        seconds = float(np.median(times))
        crops = n_side * n_side
        crops_per_s = crops / seconds
        device, dtype = str(scorer.device), str(scorer.dtype).removeprefix("torch.")

    overhead = halo_overhead(config.chunk_px, config.region_px, prior.halo)
    pixels = config.area_km2 * 1e6 / config.resolution_m**2
    crops_per_date = pixels / config.region_px**2 * overhead
    total = crops_per_date * config.dates
    if config.gpu_crops_per_s is not None:
        gpu_rate, source = config.gpu_crops_per_s, "assumed (--gpu-crops-per-s)"
    else:
        gpu_rate = crops_per_s
        source = "measured here on " + device + ("" if device.startswith("cuda") else ", no GPU")
    return PriorCostReport(
        config=config,
        model=model if not tiny else "tiny random Qwen2-VL",
        tiny_model=tiny,
        device=device,
        dtype=dtype,
        cpu=platform.processor() or platform.machine(),
        load_seconds=load_seconds,
        crops_timed=crops,
        seconds_per_pass=seconds,
        crops_per_s=crops_per_s,
        seconds_per_megapixel=seconds / (side * side / 1e6),
        halo_overhead=overhead,
        crops_per_date=crops_per_date,
        hours_measured=total / crops_per_s / 3600,
        gpu_crops_per_s=gpu_rate,
        gpu_throughput_source=source,
        gpu_hours=total / gpu_rate / 3600,
    )


def write_report(report: PriorCostReport, output_dir: str | Path) -> Path:
    """Write ``prior_cost.json`` into ``output_dir``; returns its path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prior_cost.json"
    path.write_text(json.dumps(report.to_dict(), indent=1, default=str))
    return path
