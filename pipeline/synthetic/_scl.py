"""A Sen2Cor-like scene classification (SCL) with the errors real SCL layers have.

SCL is a weak label (DESIGN.md section 3); the synthetic one is deliberately imperfect:

- thin haze is caught only where it is dense: t_ref < 0.55 -> 8 (cloud medium probability),
  0.55-0.82 -> 10 (thin cirrus), fainter haze and haze edges are missed (surface class kept);
- thick cloud: bright cores 9 (high probability), dimmer edges 8;
- cloud shadow detected (3) only where the penumbra weight is > 0.5, and even there ~35 % is missed in
  patches; some water is mislabelled as cloud shadow when the scene has cloud;
- bright surfaces are partly labelled cloud: ~35 % of sand/gravel -> 8, ~60 % of bright roofs -> 9,
  ~15 % of snow -> 8 (the rest of the snow 11);
- surface classes from the true surface: 4 vegetation (NDVI > 0.4), 5 not vegetated, 6 water,
  2 dark features on part of the conifer forest, 7 unclassified scattered and along water edges;
- produced at 20 m (every other pixel) and replicated to the 10 m grid, as odc-stac would show it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .._bands import SCL
from ._clouds import CloudFields
from ._landscape import LandCover
from ._noise import fractal_noise, threshold_for_fraction


def _patches(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A patchy (spatially coherent) ``fraction`` of ``mask``."""
    if not mask.any() or fraction <= 0:
        return np.zeros_like(mask)
    noise = fractal_noise(mask.shape, rng, beta=2.8)
    return mask & (noise > threshold_for_fraction(noise, fraction, mask))


def make_scl(
    classes: np.ndarray,
    ndvi: np.ndarray,
    snow_fraction: np.ndarray,
    fields: CloudFields,
    rng: np.random.Generator,
) -> np.ndarray:
    """(H, W) uint8 SCL on the 10 m grid (20 m blocks)."""
    h, w = classes.shape
    scl = np.full((h, w), SCL.BARE, dtype=np.uint8)
    scl[ndvi > 0.4] = SCL.VEGETATION
    water = classes == LandCover.WATER
    scl[water] = SCL.WATER
    snow = snow_fraction > 0.5
    scl[snow] = SCL.SNOW
    scl[_patches(classes == LandCover.CONIFER, 0.2, rng)] = SCL.DARK_SHADOW
    edge = water & ~ndimage.binary_erosion(water)
    scl[edge & (rng.random((h, w)) < 0.3)] = SCL.UNCLASSIFIED
    scl[rng.random((h, w)) < 0.003] = SCL.UNCLASSIFIED

    # bright surfaces mistaken for cloud
    scl[_patches(classes == LandCover.SAND, 0.35, rng)] = SCL.CLOUD_MEDIUM
    scl[_patches(classes == LandCover.ROOF_BRIGHT, 0.6, rng)] = SCL.CLOUD_HIGH
    scl[_patches(snow, 0.15, rng)] = SCL.CLOUD_MEDIUM

    cloudy = fields.thick.any() or fields.thin.any()
    if fields.thick.any():
        scl[_patches(water & ~fields.shadow, 0.1, rng)] = SCL.CLOUD_SHADOW
    if cloudy:
        strong = fields.shadow & (fields.shadow_weight > 0.5)
        scl[_patches(strong, 0.65, rng)] = SCL.CLOUD_SHADOW
    t = fields.transmission
    scl[fields.thin & (t < 0.82)] = SCL.THIN_CIRRUS
    scl[fields.thin & (t < 0.55)] = SCL.CLOUD_MEDIUM
    scl[fields.thick] = SCL.CLOUD_MEDIUM
    scl[fields.thick & (fields.cloud_brightness > 0.9)] = SCL.CLOUD_HIGH

    coarse = scl[::2, ::2]
    return np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[:h, :w].copy()
