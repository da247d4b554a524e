"""Quality-benchmark groundwork (DESIGN.md section 5): an independent cloud simulator,
the peer baselines and extra metrics. Independent of ``pipeline.synthetic`` on purpose."""

from ._baselines import (
    clear_test,
    dark_channel_dehaze,
    masked_median,
    nearest_clear_date,
    two_stage,
)
from ._metrics_extra import seam_error
from ._simulate import Simulation, band_transmission, boundary_mask, fractal_field, simulate
from .memory import MemoryEstimate, estimate_memory
from .speed import SpeedConfig, SpeedReport, run_speed_benchmark

__all__ = [
    "MemoryEstimate",
    "Simulation",
    "SpeedConfig",
    "SpeedReport",
    "band_transmission",
    "boundary_mask",
    "clear_test",
    "dark_channel_dehaze",
    "estimate_memory",
    "fractal_field",
    "masked_median",
    "nearest_clear_date",
    "run_speed_benchmark",
    "seam_error",
    "simulate",
    "two_stage",
]
