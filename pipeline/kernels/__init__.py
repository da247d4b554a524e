"""Pure block kernels on numpy arrays (numpy / scipy.ndimage and compiled numba passes; no
xarray, no dask).

Shapes: reflectance (T, B, Y, X), per-pixel layers (T, Y, X), per-date band parameters (T, B),
float32, NaN = nodata. Spatial windows treat out-of-array pixels as absent, so a block with a
halo of at least ``halo`` pixels gives the same interior as the whole array.

One module per concept, each holding its numpy fronts and their compiled (numba) passes:

=============================  ===================  ================================================
concept                        module               what
=============================  ===================  ================================================
prior: scene parameters        ``_scene``           airlight, dark object, gamma, clear-sky line
prior: cloud evidence          ``_evidence``        cloud, haze, shadow from the series
transmission of one date       ``_transmission``    haze cues, t_ref, per-band t_b, floor of t_b
transmission from a reference  ``_temporal``        temporal haze cue, refinement of t and J
harmonisation                  ``_harmonisation``   local and date-pair gain/offset fits, pre-weight
harmonisation in torch         ``_harmonisation_``  the local fit and pre-weight on any torch device
                               ``torch``            (``FusionConfig.backend = "torch"``)
reference choice               ``_reference``       quality, consistency, candidate blend
gate and inversion             ``_inversion``       J, confidence, plausibility, the gate
fusion: the steps per date     ``_fusion``          ``fuse_dates``, the time neighbourhood
fusion settings                ``_config``          ``FusionConfig``
composite                      ``_composite``       robust per-period reduction
surface change (validation)    ``_surface_change``  change between the clear dates around a date
shared helpers                 ``_common``          smoothstep, windows, array layouts, SCL tables
=============================  ===================  ================================================
"""

from ._common import box_mean_nan, min_filter_nan, smoothstep, wavelengths_of
from ._composite import CompositeResult, composite_block
from ._config import FusionConfig
from ._fusion import FusionResult, fuse_dates, time_context, time_neighbourhood
from ._harmonisation import harmonise_local, pair_gain_offset
from ._inversion import forward_model, gate, inversion_confidence, invert
from ._reference import reference_quality, spectral_consistency
from ._scene import estimate_airlight, estimate_dark_object, estimate_gamma, fit_clear_line
from ._surface_change import surface_change
from ._transmission import (
    band_transmission,
    dark_channel_haze,
    floor_transmission,
    hot_haze,
    pixel_haze_bound,
    snow_score,
    temporal_dark_object,
    transmission,
)

__all__ = [
    "CompositeResult",
    "FusionConfig",
    "FusionResult",
    "band_transmission",
    "box_mean_nan",
    "composite_block",
    "dark_channel_haze",
    "estimate_airlight",
    "estimate_dark_object",
    "estimate_gamma",
    "fit_clear_line",
    "forward_model",
    "floor_transmission",
    "fuse_dates",
    "gate",
    "harmonise_local",
    "hot_haze",
    "inversion_confidence",
    "invert",
    "min_filter_nan",
    "pair_gain_offset",
    "pixel_haze_bound",
    "reference_quality",
    "smoothstep",
    "snow_score",
    "spectral_consistency",
    "surface_change",
    "temporal_dark_object",
    "time_context",
    "time_neighbourhood",
    "transmission",
    "wavelengths_of",
]
