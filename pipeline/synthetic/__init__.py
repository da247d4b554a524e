"""Realistic synthetic Sentinel-2 L2A stacks with known truth, and cloud simulation.

Used by the offline demo, the tests and the quality benchmarks (DESIGN.md section 5)::

    from pipeline.synthetic import make_stack, write_stac_items
    stack = make_stack((10, 512, 512), seed=0)       # truth, observed (+SCL), masks, gamma, A
    items = write_stac_items(stack, "fixtures/")      # PC-like COGs + STAC items (file:// hrefs)

- :func:`make_stack`: a central-European landscape (fields with phenology and ploughing/mowing,
  forest, lake/river, town roofs, sand, snow) under per-date haze, thick cloud and cloud shadow,
  with a Sen2Cor-like SCL carrying realistic errors.
- :func:`simulate_clouds`: the cloud model alone, on any clear imagery (xarray or numpy).
- :func:`write_stac_items`: COGs with L2A digital numbers (BOA offset by processing baseline) and
  STAC items imitating Planetary Computer ``sentinel-2-l2a``.
"""

from __future__ import annotations

from ._clouds import (
    T_OPAQUE,
    CloudFields,
    CloudSimulation,
    apply_clouds,
    atmospheric_light,
    cloud_fields,
    simulate_clouds,
    spectral_transmission,
)
from ._landscape import LandCover
from ._noise import fractal_noise
from ._spectra import ENDMEMBERS
from ._stac import to_dn, write_stac_items
from ._stack import DEFAULT_COVER_SCHEDULE, SyntheticStack, make_stack, solar_angles

__all__ = [
    "DEFAULT_COVER_SCHEDULE",
    "ENDMEMBERS",
    "T_OPAQUE",
    "CloudFields",
    "CloudSimulation",
    "LandCover",
    "SyntheticStack",
    "apply_clouds",
    "atmospheric_light",
    "cloud_fields",
    "fractal_noise",
    "make_stack",
    "simulate_clouds",
    "solar_angles",
    "spectral_transmission",
    "to_dn",
    "write_stac_items",
]
