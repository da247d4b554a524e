"""Benchmarks (a leaf: nothing in a run imports it): quality against the peer baselines,
speed, memory and the prior's cost. The cloud simulator they share with self-validation is
``pipeline.cloud_simulator`` (re-exported here)."""

from ..cloud_simulator import Simulation, band_transmission, boundary_mask, fractal_field, simulate
from ._baselines import (
    clear_test,
    dark_channel_dehaze,
    masked_median,
    nearest_clear_date,
    two_stage,
)
from ._metrics_extra import seam_error
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
