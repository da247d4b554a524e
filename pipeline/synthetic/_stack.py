"""``make_stack``: a synthetic Sentinel-2 L2A time series with known truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from pyproj import CRS, Transformer

from .._bands import DEFAULT_BANDS, SCL, WAVELENGTH_NM, check_bands
from ._clouds import CloudSeries, cloud_fields
from ._landscape import LandCover, SurfaceModel, make_landscape
from ._scl import make_scl

#: (thin, thick) cover of the default mixed scene, cycled over the dates: clear, hazy, mixed,
#: nearly clear and heavily clouded dates; per-seed jitter of +-20 % on non-zero values.
DEFAULT_COVER_SCHEDULE: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (0.35, 0.0),
    (0.25, 0.2),
    (0.04, 0.02),
    (0.2, 0.5),
    (0.4, 0.1),
    (0.0, 0.0),
    (0.15, 0.3),
    (0.6, 0.0),
    (0.2, 0.15),
)


@dataclass(frozen=True)
class SyntheticStack:
    """A synthetic L2A stack and its truth.

    ``truth`` and ``observed`` are ``xr.Dataset`` with dims ``(time, y, x)``, one float32 reflectance
    variable per band (asset key), pixel-centre ``x``/``y`` in ``crs`` and a ``spatial_ref``
    coordinate (rioxarray); ``observed`` also holds ``SCL`` (uint8). Per-pixel truth fields are
    ``(time, y, x)`` DataArrays with the same coordinates.
    """

    truth: xr.Dataset
    observed: xr.Dataset
    thin: xr.DataArray  # bool: thin cloud / haze (incl. thick-cloud halos), not thick
    thick: xr.DataArray  # bool: opaque cloud
    shadow: xr.DataArray  # bool: cloud shadow (may overlap thin)
    transmission: xr.DataArray  # float32: t at B02 (490 nm); 1 clear, 0.01 nominal on thick
    gamma: xr.DataArray  # (time,) Angstrom exponent of the date
    atmospheric_light: xr.DataArray  # (time, band) A_b
    landcover: xr.DataArray  # (y, x) uint8 LandCover codes
    snow: xr.DataArray  # bool (time, y, x): true snow cover (a bright surface, not cloud)
    seed: int
    attrs: dict = field(default_factory=dict)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(str(v) for v in self.truth.data_vars)

    @property
    def cloud_cover(self) -> xr.DataArray:
        """Fraction of cloudy pixels (thin or thick) per date."""
        return (self.thin | self.thick).mean(("y", "x")).rename("cloud_cover")

    @property
    def clear(self) -> xr.DataArray:
        """Pixels untouched by cloud, haze or shadow (the observation equals the truth)."""
        return ~(self.thin | self.thick | self.shadow) & self.observed[self.bands[0]].notnull()

    def masks(self) -> xr.Dataset:
        """All per-pixel truth fields as one Dataset."""
        return xr.Dataset(
            {
                "thin": self.thin,
                "thick": self.thick,
                "shadow": self.shadow,
                "transmission": self.transmission,
                "snow": self.snow,
                "gamma": self.gamma,
                "atmospheric_light": self.atmospheric_light,
                "landcover": self.landcover,
            }
        )


def solar_angles(when: datetime, lat: float, lon: float) -> tuple[float, float]:
    """(zenith, azimuth) in degrees, azimuth clockwise from north (NOAA low-accuracy formulae)."""
    when = when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)
    doy = when.timetuple().tm_yday
    hour = when.hour + when.minute / 60 + when.second / 3600
    g = 2 * np.pi / 365 * (doy - 1 + (hour - 12) / 24)
    decl = (
        0.006918
        - 0.399912 * np.cos(g)
        + 0.070257 * np.sin(g)
        - 0.006758 * np.cos(2 * g)
        + 0.000907 * np.sin(2 * g)
        - 0.002697 * np.cos(3 * g)
        + 0.00148 * np.sin(3 * g)
    )
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * np.cos(g)
        - 0.032077 * np.sin(g)
        - 0.014615 * np.cos(2 * g)
        - 0.040849 * np.sin(2 * g)
    )
    tst = hour * 60 + eqtime + 4 * lon
    ha = np.deg2rad(tst / 4 - 180)
    phi = np.deg2rad(lat)
    cos_z = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(ha)
    zen = np.rad2deg(np.arccos(np.clip(cos_z, -1, 1)))
    az = (
        np.rad2deg(np.arctan2(np.sin(ha), np.cos(ha) * np.sin(phi) - np.tan(decl) * np.cos(phi)))
        + 180
    )
    return float(zen), float(az % 360)


def _per_date(value: float | Sequence[float] | None, n: int, name: str) -> list[float | None]:
    if value is None:
        return [None] * n
    if np.isscalar(value):
        return [float(value)] * n  # type: ignore[arg-type]
    values: list[float | None] = [float(v) for v in value]  # type: ignore[union-attr]
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values for {n} dates")
    return values


def _dates(
    start: str | datetime, n: int, interval_days: float, acquisition_time: str
) -> list[datetime]:
    t0 = pd.Timestamp(start)
    if t0.tzinfo is not None:
        t0 = t0.tz_convert("UTC").tz_localize(None)
    if t0 == t0.normalize():
        t0 = pd.Timestamp(f"{t0.date()}T{acquisition_time}")
    return [(t0 + pd.Timedelta(days=interval_days * i)).to_pydatetime() for i in range(n)]


def make_stack(
    shape: tuple[int, int, int] = (10, 512, 512),
    *,
    bands: Sequence[str] = DEFAULT_BANDS,
    start: str | datetime = "2024-03-01",
    interval_days: float = 10.0,
    seed: int = 0,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (360000.0, 5350000.0),
    resolution: float = 10.0,
    thin_cover: float | Sequence[float] | None = None,
    thick_cover: float | Sequence[float] | None = None,
    shadows: bool = True,
    gamma: float | Sequence[float] | None = None,
    light_level: float | Sequence[float] | None = None,
    nodata_dates: Sequence[int] = (),
    acquisition_time: str = "10:05:59.024",
) -> SyntheticStack:
    """Generate a synthetic L2A stack of ``shape = (T, H, W)`` pixels.

    Dates are ``start`` + k * ``interval_days`` at ``acquisition_time`` UTC (a date-only ``start``
    gets the time). ``origin`` is the upper-left corner (x, y) in ``crs``. Cloud amount per date:
    ``thin_cover`` / ``thick_cover`` (a fraction or one per date; disjoint, so their sum is the
    cloudy fraction); with both None the default mixed schedule :data:`DEFAULT_COVER_SCHEDULE` is
    cycled (with seed jitter), with one given the other is 0. ``gamma`` (Angstrom exponent) and
    ``light_level`` (A in the visible) are random per date (0..2, 0.75..1.05) unless given.
    ``nodata_dates`` (indices) get a diagonal swath edge: NaN in ``observed`` and SCL 0 there.
    Deterministic for a ``seed``.
    """
    t_n, h, w = (int(v) for v in shape)
    if t_n < 1 or h < 8 or w < 8:
        raise ValueError(f"shape must be (T >= 1, H >= 8, W >= 8), got {shape}")
    bands = check_bands(list(bands))
    if "SCL" in bands:
        raise ValueError("bands are reflectance bands; SCL is always added to observed")
    lam = [WAVELENGTH_NM[b] for b in bands]
    rng = np.random.default_rng(seed)
    dates = _dates(start, t_n, interval_days, acquisition_time)
    doys = [d.timetuple().tm_yday + d.hour / 24 for d in dates]

    if thin_cover is None and thick_cover is None:
        jit = lambda v: float(np.clip(v * rng.uniform(0.8, 1.2), 0.0, 0.95))  # noqa: E731
        sched = [DEFAULT_COVER_SCHEDULE[i % len(DEFAULT_COVER_SCHEDULE)] for i in range(t_n)]
        thin_l = [jit(a) for a, _ in sched]
        thick_l = [jit(b) for _, b in sched]
    else:
        thin_l = [v or 0.0 for v in _per_date(thin_cover, t_n, "thin_cover")]
        thick_l = [v or 0.0 for v in _per_date(thick_cover, t_n, "thick_cover")]
    gamma_l = _per_date(gamma, t_n, "gamma")
    light_l = _per_date(light_level, t_n, "light_level")

    land = make_landscape((h, w), rng, resolution=resolution, span_doy=(doys[0], doys[-1]))
    model = SurfaceModel(land, bands)
    x0, y0 = origin
    lon, lat = Transformer.from_crs(
        CRS.from_user_input(crs), "EPSG:4326", always_xy=True
    ).transform(x0 + w * resolution / 2, y0 - h * resolution / 2)
    b04 = bands.index("B04") if "B04" in bands else None
    b08 = bands.index("B08") if "B08" in bands else None

    truth = np.empty((t_n, len(bands), h, w), dtype=np.float32)
    series = CloudSeries(truth.shape)
    obs, thin, thick, shadow = series.observed, series.thin, series.thick, series.shadow
    trans, gammas, lights = series.transmission, series.gamma, series.light
    snow = np.zeros((t_n, h, w), dtype=bool)
    scl = np.zeros((t_n, h, w), dtype=np.uint8)
    sun = []
    for i, when in enumerate(dates):
        moisture = float(rng.choice([rng.uniform(0.0, 0.5), 1.0], p=[0.8, 0.2]))
        truth[i] = model.reflectance(doys[i], rng, moisture=moisture)
        zen, az = solar_angles(when, lat, lon)
        sun.append((zen, az))
        length = rng.uniform(500.0, 1500.0) * np.tan(np.deg2rad(min(zen, 75.0))) / resolution
        away = np.deg2rad(az + 180.0)
        f = cloud_fields(
            (h, w),
            rng,
            thin_cover=thin_l[i],
            thick_cover=thick_l[i],
            shadow=shadows,
            shadow_offset_px=(-length * np.cos(away), length * np.sin(away)),
            resolution=resolution,
        )
        series.apply(i, truth[i], lam, f, rng, gamma=gamma_l[i], light_level=light_l[i])
        snow_frac = model.snow_fraction(doys[i])
        snow[i] = snow_frac > 0.5
        if b04 is not None and b08 is not None:
            ndvi = (truth[i, b08] - truth[i, b04]) / (truth[i, b08] + truth[i, b04] + 1e-6)
        else:
            ndvi = np.isin(land.classes, [1, 2, 3, 6, 7, 14]).astype(np.float32)
        scl[i] = make_scl(land.classes, ndvi, snow_frac, f, rng)
        if i in set(nodata_dates):
            yy, xx = np.mgrid[0:h, 0:w]
            edge = xx + 0.35 * yy > rng.uniform(0.55, 0.8) * (w + 0.35 * h)
            obs[i][:, edge] = np.nan
            scl[i][edge] = SCL.NO_DATA

    times = pd.DatetimeIndex(dates).values.astype("datetime64[ns]")
    coords = {
        "time": times,
        "y": y0 - (np.arange(h) + 0.5) * resolution,
        "x": x0 + (np.arange(w) + 0.5) * resolution,
    }
    dims = ("time", "y", "x")

    def dataset(cube: np.ndarray, title: str) -> xr.Dataset:
        ds = xr.Dataset(
            {
                b: xr.DataArray(
                    cube[:, j],
                    dims=dims,
                    attrs={
                        "units": "1",
                        "long_name": f"{b} surface reflectance",
                        "wavelength_nm": WAVELENGTH_NM[b],
                    },
                )
                for j, b in enumerate(bands)
            },
            coords=coords,
            attrs={"title": title, "seed": seed, "resolution": resolution},
        )
        return ds

    truth_ds = dataset(truth, "synthetic Sentinel-2 L2A truth (cloud free)")
    obs_ds = dataset(obs, "synthetic Sentinel-2 L2A observation")
    obs_ds["SCL"] = xr.DataArray(
        scl,
        dims=dims,
        attrs={"long_name": "scene classification (synthetic, with Sen2Cor-like errors)"},
    )
    for ds in (truth_ds, obs_ds):  # in place: a copy of ~100 MB per dataset costs ~0.3 s
        ds.rio.write_crs(crs, inplace=True).rio.write_coordinate_system(inplace=True)
    spatial = {k: v for k, v in truth_ds.coords.items() if k != "time"}

    def field_da(values: np.ndarray, name: str, **attrs) -> xr.DataArray:
        return xr.DataArray(
            values, dims=dims, coords={"time": times, **spatial}, name=name, attrs=attrs
        )

    return SyntheticStack(
        truth=truth_ds,
        observed=obs_ds,
        thin=field_da(thin, "thin"),
        thick=field_da(thick, "thick"),
        shadow=field_da(shadow, "shadow"),
        transmission=field_da(trans, "transmission", long_name="transmission at 490 nm (B02)"),
        gamma=xr.DataArray(gammas, dims=("time",), coords={"time": times}, name="gamma"),
        atmospheric_light=xr.DataArray(
            lights,
            dims=("time", "band"),
            coords={"time": times, "band": list(bands)},
            name="atmospheric_light",
        ),
        landcover=xr.DataArray(
            land.classes,
            dims=("y", "x"),
            coords=spatial,
            name="landcover",
            attrs={
                "flag_values": [int(c) for c in LandCover],
                "flag_meanings": " ".join(c.name.lower() for c in LandCover),
            },
        ),
        snow=field_da(snow, "snow"),
        seed=seed,
        attrs={
            "crs": crs,
            "resolution": resolution,
            "origin": tuple(origin),
            "thin_cover": thin_l,
            "thick_cover": thick_l,
            "solar_zenith": [s[0] for s in sun],
            "solar_azimuth": [s[1] for s in sun],
            "centre_lonlat": (float(lon), float(lat)),
        },
    )
