"""Endmember spectra (L2A surface reflectance) for the synthetic landscape.

Values are rounded, representative Sentinel-2 L2A bottom-of-atmosphere reflectances, i.e. laboratory
and field spectra (USGS Spectral Library v7, Kokaly et al. 2017; ECOSTRESS library, Meerdink et al.
2019) convolved with the S2 MSI spectral response functions, cross-checked against typical L2A pixel
values over central Europe. They are meant to be *plausible*, not a reference:

- green vegetation: low blue/red (chlorophyll absorption, red ~0.03), green peak ~0.07, steep red
  edge (B05 0.10 -> B07 0.40), NIR plateau ~0.45 (B08/B8A), leaf-water absorption in SWIR
  (B11 ~0.22, B12 ~0.10). NDVI ~0.87 for a closed canopy.
- conifer forest: like vegetation but darker everywhere (NIR ~0.22), deciduous in between.
- senescent vegetation / stubble: no red absorption, flat NIR, bright SWIR (cellulose/lignin).
- soils: reflectance rising monotonically with wavelength, SWIR highest; wet / freshly ploughed soil
  is about half as bright as dry soil at every wavelength.
- water: the only surface darker in NIR/SWIR than in the visible (NIR < 0.01, SWIR ~0); turbid
  water is brighter in green/red.
- snow: very bright and flat in VIS/NIR (0.7-0.86) and dark in SWIR (B11 ~0.06, NDSI > 0.8): the
  spectral trait that separates it from cloud, which stays bright in SWIR.
- sand / gravel, bright roofs: bright in every band including SWIR: surfaces easily mistaken for
  cloud (Sen2Cor does), kept deliberately in the scene.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

# fmt: off
#: Band order of the rows below.
_SPECTRUM_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")

_TABLE: dict[str, tuple[float, ...]] = {
    #                  B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B11    B12
    "green_veg":     (0.025, 0.030, 0.070, 0.030, 0.100, 0.300, 0.400, 0.440, 0.450, 0.440, 0.220, 0.100),
    "dry_veg":       (0.060, 0.070, 0.100, 0.130, 0.160, 0.200, 0.220, 0.240, 0.250, 0.250, 0.340, 0.250),
    "soil_dry":      (0.060, 0.080, 0.110, 0.150, 0.170, 0.190, 0.210, 0.220, 0.230, 0.230, 0.310, 0.260),
    "soil_wet":      (0.035, 0.045, 0.065, 0.085, 0.100, 0.110, 0.120, 0.130, 0.135, 0.130, 0.170, 0.130),
    "deciduous":     (0.020, 0.025, 0.050, 0.025, 0.080, 0.250, 0.320, 0.350, 0.360, 0.350, 0.180, 0.080),
    "branches":      (0.030, 0.040, 0.055, 0.060, 0.080, 0.110, 0.130, 0.150, 0.160, 0.160, 0.200, 0.130),
    "conifer":       (0.015, 0.018, 0.035, 0.018, 0.055, 0.150, 0.190, 0.210, 0.220, 0.210, 0.100, 0.045),
    "water_clear":   (0.050, 0.045, 0.050, 0.030, 0.022, 0.012, 0.010, 0.008, 0.007, 0.005, 0.003, 0.002),
    "water_turbid":  (0.060, 0.065, 0.090, 0.070, 0.060, 0.030, 0.025, 0.022, 0.020, 0.012, 0.006, 0.004),
    "asphalt":       (0.080, 0.090, 0.100, 0.110, 0.120, 0.130, 0.140, 0.145, 0.150, 0.150, 0.170, 0.150),
    "roof_red":      (0.050, 0.060, 0.080, 0.170, 0.210, 0.240, 0.260, 0.270, 0.280, 0.280, 0.330, 0.260),
    "roof_grey":     (0.100, 0.110, 0.120, 0.130, 0.130, 0.140, 0.140, 0.150, 0.150, 0.150, 0.160, 0.140),
    "roof_bright":   (0.400, 0.420, 0.440, 0.450, 0.450, 0.460, 0.460, 0.470, 0.470, 0.470, 0.450, 0.380),
    "sand":          (0.180, 0.220, 0.290, 0.360, 0.400, 0.420, 0.440, 0.460, 0.470, 0.470, 0.550, 0.480),
    "snow":          (0.850, 0.860, 0.850, 0.830, 0.810, 0.790, 0.760, 0.720, 0.700, 0.580, 0.060, 0.040),
    "rock":          (0.120, 0.140, 0.170, 0.200, 0.220, 0.230, 0.240, 0.250, 0.260, 0.260, 0.320, 0.280),
}
# fmt: on

#: Endmember name -> {band: reflectance}.
ENDMEMBERS: MappingProxyType[str, MappingProxyType[str, float]] = MappingProxyType(
    {
        name: MappingProxyType(dict(zip(_SPECTRUM_BANDS, values, strict=True)))
        for name, values in _TABLE.items()
    }
)
ENDMEMBER_NAMES: tuple[str, ...] = tuple(_TABLE)
EM = MappingProxyType({name: i for i, name in enumerate(ENDMEMBER_NAMES)})


def endmember_matrix(bands: tuple[str, ...] | list[str]) -> np.ndarray:
    """(n_endmembers, n_bands) float32 matrix of the spectra above, columns in ``bands`` order."""
    cols = [_SPECTRUM_BANDS.index(b) for b in bands]
    table = np.array([_TABLE[name] for name in ENDMEMBER_NAMES], dtype=np.float32)
    return np.ascontiguousarray(table[:, cols])
