"""Pure block kernels on numpy arrays (numpy / scipy.ndimage; no xarray, no dask).

Shapes: reflectance (T, B, Y, X), per-pixel layers (T, Y, X), per-date band parameters (T, B),
float32, NaN = nodata. Spatial windows treat out-of-array pixels as absent, so a block with a
halo of at least ``halo`` pixels gives the same interior as the whole array.
"""

from ._common import box_mean_nan, min_filter_nan, smoothstep, wavelengths_of
from ._composite import CompositeResult, composite_block
from ._fusion import (
    FusionConfig,
    FusionResult,
    fuse_dates,
    gate,
    time_context,
    time_neighbourhood,
)
from ._physics import (
    band_transmission,
    dark_channel_haze,
    floor_transmission,
    forward_model,
    hot_haze,
    inversion_confidence,
    invert,
    pixel_haze_bound,
    snow_score,
    temporal_dark_object,
    transmission,
)
from ._reference import harmonise_local, reference_quality, spectral_consistency
from ._scene import (
    estimate_airlight,
    estimate_dark_object,
    estimate_gamma,
    fit_clear_line,
    pair_gain_offset,
)
from ._surface_change import surface_change

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
