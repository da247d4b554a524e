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

__all__ = [
    "Simulation",
    "band_transmission",
    "boundary_mask",
    "clear_test",
    "dark_channel_dehaze",
    "fractal_field",
    "masked_median",
    "nearest_clear_date",
    "seam_error",
    "simulate",
    "two_stage",
]
