"""A synthetic central-European landscape and its surface reflectance through a season.

Layout (scales in metres, converted with the pixel size so the scene looks the same at any size):

- agricultural parcels: an anisotropic Voronoi tessellation (~300 m fields elongated along x), with
  grass margins / tracks on part of the boundaries; crop types winter cereal, summer crop (maize,
  beet), grassland (mown), fallow/stubble (ploughed during the stack) and bare soil;
- forest patches from thresholded fractal noise (deciduous and conifer);
- a lake (lowest part of a smooth field) with a partial sand beach, a meandering river, a gravel pit;
- a town: a street grid of paved roads and building blocks of red-tile, grey and bright roofs with
  gardens, plus two arterial roads across the scene;
- an alpine corner of rock with a snow cover whose snow line rises through spring.

Reflectance is a per-pixel linear mixture of the endmembers of :mod:`._spectra`, with abundances
driven by phenology (day of year) and events (mowing, harvest, ploughing), times a static brightness
texture (parcel-level and pixel-level fractal noise), plus small per-date sensor noise and gain.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from ._noise import fractal_noise, smoothstep, threshold_for_fraction
from ._spectra import EM, ENDMEMBER_NAMES, endmember_matrix


class LandCover(IntEnum):
    """Land-cover codes of :attr:`SyntheticStack.landcover`."""

    WATER = 0
    WINTER_CROP = 1
    SUMMER_CROP = 2
    GRASSLAND = 3
    FALLOW = 4
    BARE_SOIL = 5
    DECIDUOUS = 6
    CONIFER = 7
    ROAD = 8
    ROOF_RED = 9
    ROOF_GREY = 10
    ROOF_BRIGHT = 11
    SAND = 12
    ALPINE = 13
    MARGIN = 14


PARCEL_CLASSES = (
    LandCover.WINTER_CROP,
    LandCover.SUMMER_CROP,
    LandCover.GRASSLAND,
    LandCover.FALLOW,
    LandCover.BARE_SOIL,
)
_PARCEL_PROBS = (0.32, 0.24, 0.25, 0.13, 0.06)

#: Static single-endmember classes.
_STATIC = {
    LandCover.CONIFER: "conifer",
    LandCover.ROAD: "asphalt",
    LandCover.ROOF_RED: "roof_red",
    LandCover.ROOF_GREY: "roof_grey",
    LandCover.ROOF_BRIGHT: "roof_bright",
    LandCover.SAND: "sand",
}


@dataclass(frozen=True)
class Landscape:
    """Static layout of the scene plus the per-parcel event calendar."""

    classes: np.ndarray  # (H, W) uint8 LandCover
    parcel: np.ndarray  # (H, W) int32 parcel id (every pixel has one; used only on parcel classes)
    parcel_type: np.ndarray  # (n,) uint8 LandCover of each parcel
    parcel_jitter: np.ndarray  # (n,) days of phenology shift
    parcel_brightness: np.ndarray  # (n,) multiplicative brightness
    mow_doy: np.ndarray  # (n, 3) mowing days (grassland)
    plough_doy: np.ndarray  # (n,) ploughing day (fallow); large = never
    elevation: np.ndarray  # (H, W) float32, rank-normalised 0..1
    texture: np.ndarray  # (H, W) float32, ~N(0,1) static brightness texture
    detail: np.ndarray  # (H, W) float32, ~N(0,1) within-field vegetation-density texture
    turbidity: np.ndarray  # (H, W) float32 0..1


def _sig(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def make_landscape(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    resolution: float = 10.0,
    span_doy: tuple[float, float] = (60.0, 150.0),
) -> Landscape:
    """Draw a landscape of ``shape`` pixels of ``resolution`` metres.

    ``span_doy`` (first and last day of year of the stack) places part of the mowing and ploughing
    events inside the stack so that every stack shows abrupt surface change.
    """
    h, w = int(shape[0]), int(shape[1])
    px = lambda metres: max(float(metres) / resolution, 1.0)  # noqa: E731
    yy, xx = np.mgrid[0:h, 0:w]

    # --- parcels: anisotropic Voronoi via the nearest-seed feature transform -------------------
    field_px = px(300.0)
    n_parcels = max(int(h * w / field_px**2 * 1.3), 4)
    seeds = np.ones((h, w), dtype=bool)
    sy = rng.integers(0, h, n_parcels)
    sx = rng.integers(0, w, n_parcels)
    seeds[sy, sx] = False
    label_img = np.full((h, w), -1, dtype=np.int32)
    label_img[sy, sx] = np.arange(n_parcels, dtype=np.int32)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds, sampling=(1.0, 0.55), return_indices=True)
    parcel = label_img[iy, ix]
    n_parcels = int(parcel.max()) + 1
    parcel_type = rng.choice(
        np.array(PARCEL_CLASSES, dtype=np.uint8), size=n_parcels, p=_PARCEL_PROBS
    )
    classes = parcel_type[parcel].astype(np.uint8)

    boundary = np.zeros((h, w), dtype=bool)
    boundary[:, 1:] |= parcel[:, 1:] != parcel[:, :-1]
    boundary[1:, :] |= parcel[1:, :] != parcel[:-1, :]
    margin_noise = fractal_noise((h, w), rng, beta=3.0)
    classes[boundary & (margin_noise > -0.3)] = LandCover.MARGIN

    # --- forest ------------------------------------------------------------------------------
    forest_f = fractal_noise((h, w), rng, beta=3.2, min_period_px=px(60), max_period_px=px(2000))
    forest = forest_f > threshold_for_fraction(forest_f, 0.17)
    conifer_f = fractal_noise((h, w), rng, beta=3.5, max_period_px=px(1500))
    classes[forest] = LandCover.DECIDUOUS
    classes[forest & (conifer_f > threshold_for_fraction(conifer_f, 0.45, forest))] = (
        LandCover.CONIFER
    )

    # --- alpine corner (rock + snow) ----------------------------------------------------------
    relief = fractal_noise((h, w), rng, beta=3.6, min_period_px=px(40))
    corner = rng.integers(0, 4)
    ry = yy / max(h - 1, 1) if corner in (0, 1) else 1 - yy / max(h - 1, 1)
    rx = xx / max(w - 1, 1) if corner in (0, 2) else 1 - xx / max(w - 1, 1)
    elev_raw = relief + 5.0 * (ry + rx) / 2.0
    elev_rank = np.empty(h * w, dtype=np.float32)
    elev_rank[np.argsort(elev_raw, axis=None, kind="stable")] = np.linspace(
        0, 1, h * w, dtype=np.float32
    )
    elevation = elev_rank.reshape(h, w)
    alpine = elevation > 0.91
    classes[alpine] = LandCover.ALPINE

    # --- town: street grid, building blocks, gardens -----------------------------------------
    cy = rng.uniform(0.3, 0.7) * h
    cx = rng.uniform(0.3, 0.7) * w
    radius = 0.13 * min(h, w)
    town_f = fractal_noise((h, w), rng, beta=3.0, min_period_px=px(50))
    dist = np.hypot(yy - cy, xx - cx) / max(radius, 1.0)
    town = (dist + 0.25 * town_f < 1.0) & ~alpine
    street_step = max(int(round(px(100))), 4)
    oy, ox = rng.integers(0, street_step, 2)
    street = ((yy - oy) % street_step == 0) | ((xx - ox) % street_step == 0)
    cell = max(int(round(px(25))), 1)
    roof_pick = rng.choice(
        np.array(
            [LandCover.ROOF_RED, LandCover.ROOF_GREY, LandCover.ROOF_BRIGHT, LandCover.MARGIN],
            dtype=np.uint8,
        ),
        size=(h // cell + 2, w // cell + 2),
        p=(0.45, 0.30, 0.08, 0.17),
    )
    roofs = roof_pick[yy // cell, xx // cell]
    classes[town] = roofs[town]
    classes[town & street] = LandCover.ROAD
    # arterial roads through the town centre
    road_w = max(int(round(px(12))), 1)
    classes[(np.abs(yy - int(cy)) < road_w) & ~alpine] = LandCover.ROAD
    classes[(np.abs(xx - int(cx) - 0.15 * (yy - cy)) < road_w) & ~alpine] = LandCover.ROAD

    # --- water: lake, beach, river; gravel pit ------------------------------------------------
    lake_f = fractal_noise((h, w), rng, beta=3.6, min_period_px=px(60), max_period_px=px(2500))
    lake_f = np.where(alpine | town, -np.inf, lake_f)
    lake = lake_f > threshold_for_fraction(lake_f, 0.045)
    lake = ndimage.binary_opening(lake, iterations=2)
    beach = ndimage.binary_dilation(lake, iterations=max(int(round(px(25))), 1)) & ~lake
    classes[beach & (margin_noise > 0.2) & ~alpine] = LandCover.SAND
    classes[lake] = LandCover.WATER
    # river: meandering curve along x
    y0 = rng.uniform(0.15, 0.85) * h
    walk = np.cumsum(rng.normal(0.0, 1.0, w))
    walk = ndimage.gaussian_filter1d(walk, sigma=max(w / 30, 1.0))
    phase = rng.uniform(0, 2 * np.pi)
    river_y = (
        y0 + 0.06 * h * np.sin(2 * np.pi * xx[0] / max(w / 1.7, 1) + phase) + (walk - walk.mean())
    )
    river_half = max(px(25) / 2.0, 0.75)
    river = (np.abs(yy - river_y[None, :]) <= river_half) & ~alpine
    classes[river] = LandCover.WATER
    # gravel pit / sand quarry
    gy, gx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    pit = (np.hypot(yy - gy, (xx - gx) * 0.8) < px(90)) & ~alpine & ~town & ~lake
    classes[pit] = LandCover.SAND

    n = n_parcels
    jitter = rng.normal(0.0, 6.0, n)
    brightness = rng.normal(1.0, 0.05, n).clip(0.85, 1.15)
    d0, d1 = span_doy
    mow = np.empty((n, 3))
    mow[:, 0] = 135.0 + rng.normal(0.0, 7.0, n)
    in_span = rng.random(n) < 0.5
    mow[in_span, 0] = rng.uniform(d0 + 0.15 * (d1 - d0), d1, in_span.sum())
    mow[:, 1] = mow[:, 0] + rng.uniform(35, 50, n)
    mow[:, 2] = mow[:, 1] + rng.uniform(35, 50, n)
    plough = np.where(
        rng.random(n) < 0.75, rng.uniform(d0 + 0.1 * (d1 - d0), d1 - 0.1 * (d1 - d0), n), 1e4
    )

    return Landscape(
        classes=classes,
        parcel=parcel,
        parcel_type=parcel_type,
        parcel_jitter=jitter,
        parcel_brightness=brightness,
        mow_doy=mow,
        plough_doy=plough,
        elevation=elevation,
        texture=fractal_noise((h, w), rng, beta=2.2),
        detail=fractal_noise((h, w), rng, beta=2.6, min_period_px=2.0),
        turbidity=smoothstep(0.5 + 0.35 * fractal_noise((h, w), rng, beta=3.5)).astype(np.float32),
    )


def _parcel_abundances(land: Landscape, doy: float, moisture: float) -> np.ndarray:
    """(n_parcels, 4) fractions of [green_veg, dry_veg, soil_dry, soil_wet] on day ``doy``."""
    t = land.parcel_type
    j = land.parcel_jitter
    n = t.size
    out = np.zeros((n, 4))
    wet_share = 0.15 + 0.6 * moisture

    def soil(frac: np.ndarray, wet: float | np.ndarray = wet_share) -> np.ndarray:
        return np.stack([frac * (1 - wet), frac * wet], axis=-1)

    # winter cereal: green-up in April, senescence late June, harvest ~day 200, ploughed ~25 d later
    m = t == LandCover.WINTER_CROP
    if m.any():
        jj = j[m]
        cover = 0.2 + 0.75 * _sig((doy - (105 + jj)) / 9.0)
        sen = _sig((doy - (180 + jj)) / 6.0)
        green, dry, bare = cover * (1 - sen), cover * sen, 1 - cover
        harvested = doy >= 200 + jj
        ploughed = doy >= 225 + jj
        green = np.where(harvested, 0.0, green)
        dry = np.where(harvested, 0.35, dry)
        bare = np.where(harvested, 0.65, bare)
        s = soil(bare)
        s = np.where(ploughed[:, None], soil(np.ones_like(bare), 0.7), s)
        dry = np.where(ploughed, 0.0, dry)
        out[m] = np.column_stack([green, dry, s])
    # summer crop: ploughed soil, sown ~day 120, canopy closes in July, harvest ~day 285
    m = t == LandCover.SUMMER_CROP
    if m.any():
        jj = j[m]
        cover = 0.95 * _sig((doy - (160 + jj)) / 8.0)
        sen = _sig((doy - (265 + jj)) / 7.0)
        harvested = doy >= 285 + jj
        cover = np.where(harvested, 0.0, cover)
        out[m] = np.column_stack(
            [cover * (1 - sen), cover * sen, soil(1 - cover, 0.25 + 0.6 * moisture)]
        )
    # grassland: spring growth, mown up to three times (drop of green cover, regrowth over ~3 weeks)
    m = t == LandCover.GRASSLAND
    if m.any():
        green = np.full(m.sum(), 0.55 + 0.37 * float(_sig((doy - 100) / 10.0)))
        for k in range(3):
            dt = doy - land.mow_doy[m, k]
            cut = dt >= 0
            green = np.where(cut, green * (1 - 0.75 * np.exp(-np.maximum(dt, 0) / 25.0)), green)
        rest = 1 - green
        out[m] = np.column_stack([green, 0.65 * rest, soil(0.35 * rest)])
    # fallow: stubble under a catch crop (mustard, clover), ploughed in on plough_doy (most of them
    # inside the stack): NDVI falls from ~0.6 to ~0.15 between two dates
    m = t == LandCover.FALLOW
    if m.any():
        ploughed = doy >= land.plough_doy[m]
        weeds = 0.4 + 0.15 * float(_sig((doy - 110) / 10.0))
        before = np.array([weeds, 0.3, 0.7 - weeds, 0.0])
        after = np.concatenate([[0.0, 0.03], soil(np.array(0.97), min(0.5 + 0.4 * moisture, 1.0))])
        out[m] = np.where(ploughed[:, None], after[None, :], before[None, :])
    m = t == LandCover.BARE_SOIL
    if m.any():
        out[m] = np.concatenate([[0.02, 0.03], soil(np.array(0.95))])[None, :]
    return out


class SurfaceModel:
    """Evaluates the surface reflectance of a :class:`Landscape` on given days (numpy only)."""

    def __init__(self, land: Landscape, bands: tuple[str, ...]):
        self.land = land
        self.bands = tuple(bands)
        self.E = endmember_matrix(self.bands)  # (n_em, n_bands)
        cls = land.classes.ravel()
        self.classes = cls
        self.parcel_pix = np.flatnonzero(np.isin(cls, np.array(PARCEL_CLASSES)))
        self.parcel_ids = land.parcel.ravel()[self.parcel_pix]
        self.detail = land.detail.ravel()
        self.idx = {c: np.flatnonzero(cls == c) for c in LandCover}
        n_pix = cls.size
        static = np.zeros((n_pix, len(ENDMEMBER_NAMES)), dtype=np.float32)
        for c, name in _STATIC.items():
            static[self.idx[c], EM[name]] = 1.0
        turb = land.turbidity.ravel()[self.idx[LandCover.WATER]]
        static[self.idx[LandCover.WATER], EM["water_turbid"]] = turb
        static[self.idx[LandCover.WATER], EM["water_clear"]] = 1 - turb
        self.static = static
        bright = 1.0 + 0.045 * land.texture.ravel()
        par_b = land.parcel_brightness[land.parcel.ravel()]
        is_parcel = np.zeros(n_pix, dtype=bool)
        is_parcel[self.parcel_pix] = True
        self.brightness = np.where(is_parcel, bright * par_b, bright).astype(np.float32)

    def snow_fraction(self, doy: float) -> np.ndarray:
        """(H, W) fractional snow cover: snow line rises from ~92 % to above the top of the
        elevation range between early March and early June."""
        snowline = 0.90 + 0.11 * float(np.clip((doy - 60.0) / 100.0, 0.0, 1.0))
        frac = smoothstep((self.land.elevation - snowline) / 0.03)
        return np.where(self.land.classes == LandCover.ALPINE, frac, 0.0).astype(np.float32)

    def abundances(self, doy: float, moisture: float) -> np.ndarray:
        """(H*W, n_endmembers) float32 abundances on ``doy``."""
        a = self.static.copy()
        # parcels
        par = _parcel_abundances(self.land, doy, moisture)[self.parcel_ids]  # (N, 4)
        g = par[:, 0]
        g_pix = np.clip(g * (1 + 0.12 * self.detail[self.parcel_pix]), 0.0, 1.0)
        scale = np.where(g < 1, (1 - g_pix) / np.maximum(1 - g, 1e-6), 0.0)
        par[:, 1:] *= scale[:, None]
        par[:, 0] = g_pix
        cols = [EM["green_veg"], EM["dry_veg"], EM["soil_dry"], EM["soil_wet"]]
        a[self.parcel_pix[:, None], np.array(cols)[None, :]] = par
        # margins, gardens: grass strips with seasonal green-up
        idx = self.idx[LandCover.MARGIN]
        green = 0.45 + 0.3 * float(_sig((doy - 105) / 10.0))
        a[idx, EM["green_veg"]] = green
        a[idx, EM["dry_veg"]] = 0.6 * (1 - green)
        a[idx, EM["soil_dry"]] = 0.4 * (1 - green)
        # deciduous forest: leaf-out late April / May
        idx = self.idx[LandCover.DECIDUOUS]
        leaf = np.clip(
            (0.2 + 0.8 * float(_sig((doy - 122) / 7.0)) - 0.8 * float(_sig((doy - 295) / 8.0)))
            * (1 + 0.05 * self.detail[idx]),
            0.0,
            1.0,
        )
        a[idx, EM["deciduous"]] = leaf
        a[idx, EM["branches"]] = 1 - leaf
        # alpine: rock + meadow, under a melting snow cover
        idx = self.idx[LandCover.ALPINE]
        snow = self.snow_fraction(doy).ravel()[idx]
        meadow = 0.3 * float(_sig((doy - 150) / 10.0))
        ground = 1 - snow
        a[idx, EM["snow"]] = snow
        a[idx, EM["rock"]] = ground * (0.7 - 0.5 * meadow)
        a[idx, EM["dry_veg"]] = ground * (0.3 - 0.5 * meadow)
        a[idx, EM["green_veg"]] = ground * meadow
        return a

    def reflectance(
        self,
        doy: float,
        rng: np.random.Generator,
        *,
        moisture: float = 0.3,
        noise: float = 0.002,
        gain_sigma: float = 0.01,
    ) -> np.ndarray:
        """(n_bands, H, W) float32 surface reflectance on ``doy`` (texture, per-date gain, noise)."""
        h, w = self.land.classes.shape
        a = self.abundances(doy, moisture)
        refl = (a @ self.E) * self.brightness[:, None]  # (H*W, B)
        gain = 1.0 + rng.normal(0.0, gain_sigma, len(self.bands))
        refl *= gain[None, :].astype(np.float32)
        out = np.ascontiguousarray(refl.T).reshape(len(self.bands), h, w)
        if noise > 0:
            out += np.float32(noise) * rng.standard_normal(out.shape, dtype=np.float32)
        np.maximum(out, 1e-4, out=out)
        return out.astype(np.float32, copy=False)
