"""Cloud, haze and cloud-shadow simulation with known truth (DESIGN.md sections 2 and 5).

Forward model, per band b (reflectance), surface J, observed I:

    thin cloud / haze:  I_b = J_b * t_b + A_b * (1 - t_b)
                        t_b = t_ref ** ((490 / lambda_b) ** gamma)      (Angstrom law, ref. B02)
    cloud shadow:       J_b -> J_b * (1 - w * (1 - k_b))   before the haze is applied
    thick cloud:        I_b = C_b = A_b * brightness(x)  (opaque: the surface is gone)

Fields (all from spectral-synthesis fractal noise, :func:`._noise.fractal_noise`):

- ``t_ref`` (transmission at 490 nm): a smooth (beta 3.2-3.8) haze layer thresholded at the quantile
  that gives the requested thin-cloud cover, its optical depth rising smoothly from 0 at the layer edge
  to ``1 - t_min`` (t_min 0.35-0.65 per date) in its densest part, with a little fine texture; plus a
  semi-transparent halo around every thick cloud (t falls to ~0.2 at the opaque edge), as real
  cumulus edges are. Thick pixels carry the nominal ``T_OPAQUE``.
- thick clouds: a rougher field (beta 2.6-3.2) thresholded at the quantile giving the requested
  thick cover, so the cover fraction is exact; brightness 0.8-1.1 x A with a brighter core.
- ``gamma`` (per date, 0..2): 0 is grey water-droplet cloud, 1-2 is haze whose attenuation falls fast
  with wavelength (SWIR sees through it).
- ``A_b`` (atmospheric / cloud light): near grey and bright, level 0.75-1.05 in the visible/NIR
  (L2A cloud tops often exceed 1.0), falling ~25 % towards B12 (ice/water absorption in SWIR).
- shadow: the thick-cloud mask rolled by the projected cloud-to-shadow offset (cloud height x
  tan(solar zenith), away from the sun; the noise is periodic so the roll stays consistent), blurred
  by ~1 px (penumbra). Darkening ``k_b = k0 * (490 / lambda_b) ** 0.4`` with k0 0.25-0.45: a shadow keeps
  the diffuse sky light only, which is bluer, so it darkens SWIR more than blue.

Masks: ``thick`` (opaque), ``thin`` (0 < 1 - t_ref, not thick), ``shadow`` (darkened, not thick);
``thin`` and ``shadow`` can overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr
from scipy import ndimage

from .._bands import REFERENCE_WAVELENGTH_NM, WAVELENGTH_NM, check_bands
from ._noise import fractal_noise, smoothstep, threshold_for_fraction

#: Nominal reference transmission recorded on thick (opaque) pixels; the forward model there is
#: replacement by the cloud reflectance, not the haze equation.
T_OPAQUE = 0.01
#: Largest transmission of a pixel counted as thin cloud (keeps t < 1 strictly on the mask).
T_THIN_MAX = 0.999

CloudKind = Literal["thin", "thick", "shadow", "mixed"]


@dataclass(frozen=True)
class CloudFields:
    """The cloud of one date on an (H, W) grid (numpy)."""

    transmission: np.ndarray  # float32, t at 490 nm; 1 clear, T_OPAQUE on thick
    thin: np.ndarray  # bool
    thick: np.ndarray  # bool
    shadow: np.ndarray  # bool
    shadow_weight: np.ndarray  # float32 0..1, darkening weight w
    cloud_brightness: np.ndarray  # float32, thick-cloud reflectance / A_b (0 outside thick)


def atmospheric_light(
    wavelengths_nm: Sequence[float], rng: np.random.Generator, level: float | None = None
) -> np.ndarray:
    """A_b per band: ``level`` (default uniform 0.75-1.05) x a grey shape falling 25 % to 2190 nm,
    with 2 % per-band jitter."""
    lam = np.asarray(wavelengths_nm, dtype=np.float64)
    if level is None:
        level = float(rng.uniform(0.75, 1.05))
    shape = 1.0 - 0.25 * np.clip((lam - 900.0) / (2190.0 - 900.0), 0.0, 1.0)
    jitter = 1.0 + rng.normal(0.0, 0.02, lam.size)
    return (level * shape * jitter).astype(np.float32)


def shadow_darkening(wavelengths_nm: Sequence[float], k0: float) -> np.ndarray:
    """Fraction of the surface signal left in full shadow per band: ``k0 * (490/lambda) ** 0.4``."""
    lam = np.asarray(wavelengths_nm, dtype=np.float64)
    return (k0 * (REFERENCE_WAVELENGTH_NM / lam) ** 0.4).astype(np.float32)


def spectral_transmission(
    t_ref: np.ndarray, wavelengths_nm: Sequence[float], gamma: float
) -> np.ndarray:
    """(B, H, W) float32 ``t_b = t_ref ** ((490 / lambda_b) ** gamma)``."""
    lam = np.asarray(wavelengths_nm, dtype=np.float64)
    expo = ((REFERENCE_WAVELENGTH_NM / lam) ** float(gamma)).astype(np.float32)
    return np.power(t_ref[None, :, :], expo[:, None, None]).astype(np.float32)


def cloud_fields(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    thin_cover: float = 0.0,
    thick_cover: float = 0.0,
    shadow: bool = True,
    shadow_offset_px: tuple[float, float] | None = None,
    t_min: float | None = None,
    halo: bool = True,
    resolution: float = 10.0,
) -> CloudFields:
    """Draw the cloud of one date.

    ``thin_cover`` and ``thick_cover`` are fractions of the image (exact up to ties), disjoint:
    thin + thick is the cloudy fraction. ``shadow_offset_px`` (rows, cols) moves the shadow away from
    the cloud (default: 5-15 % of the image towards north-north-west, a European morning sun).
    """
    h, w = int(shape[0]), int(shape[1])
    n = h * w
    thin_cover = float(np.clip(thin_cover, 0.0, 1.0))
    thick_cover = float(np.clip(thick_cover, 0.0, 1.0 - thin_cover))
    px = lambda metres: max(float(metres) / resolution, 2.0)  # noqa: E731

    # thick clouds and their halo
    n2 = fractal_noise((h, w), rng, beta=float(rng.uniform(2.6, 3.2)), max_period_px=px(4000))
    thick = np.zeros((h, w), dtype=bool)
    t_halo = np.ones((h, w), dtype=np.float32)
    halo_mask = np.zeros((h, w), dtype=bool)
    brightness = np.zeros((h, w), dtype=np.float32)
    if thick_cover > 0:
        thr2 = threshold_for_fraction(n2, thick_cover)
        thick = n2 > thr2
        top = float(np.quantile(n2, 0.999))
        depth = np.clip((n2 - thr2) / max(top - thr2, 1e-6), 0.0, 1.0)
        tex = fractal_noise((h, w), rng, beta=2.2)
        brightness = np.where(
            thick, np.clip(0.82 + 0.18 * smoothstep(2.0 * depth) + 0.04 * tex, 0.7, 1.12), 0.0
        ).astype(np.float32)
        halo_frac = min(thin_cover, 0.35 * thick_cover + 0.01) if halo else 0.0
        if halo_frac > 0:
            thr_low = threshold_for_fraction(n2, thick_cover + halo_frac)
            halo_mask = (n2 > thr_low) & ~thick
            ramp = np.clip((n2 - thr_low) / max(thr2 - thr_low, 1e-6), 0.0, 1.0)
            t_halo = np.where(halo_mask, 1.0 - 0.8 * smoothstep(ramp), 1.0).astype(np.float32)

    # haze layer, thresholded so that thin = (haze | halo) & ~thick hits thin_cover
    t_haze = np.ones((h, w), dtype=np.float32)
    haze_mask = np.zeros((h, w), dtype=bool)
    remaining = ~(thick | halo_mask)
    k = thin_cover * n - halo_mask.sum()
    if k > 0.5 and remaining.any():
        n1 = fractal_noise((h, w), rng, beta=float(rng.uniform(3.2, 3.8)), max_period_px=px(8000))
        thr1 = threshold_for_fraction(n1, k / remaining.sum(), remaining)
        haze_mask = n1 > thr1
        top = float(np.quantile(n1, 0.995))
        dens = np.clip((n1 - thr1) / max(top - thr1, 1e-6), 0.0, 1.0)
        dens = np.clip(dens * (1.0 + 0.15 * fractal_noise((h, w), rng, beta=2.4)), 0.0, 1.0)
        tmin = float(rng.uniform(0.35, 0.65)) if t_min is None else float(t_min)
        t_haze = np.where(haze_mask, 1.0 - (1.0 - tmin) * smoothstep(dens) ** 0.8, 1.0).astype(
            np.float32
        )

    thin = (haze_mask | halo_mask) & ~thick
    t_ref = t_haze * t_halo
    t_ref = np.where(thin, np.minimum(t_ref, T_THIN_MAX), t_ref)
    t_ref = np.where(thick, T_OPAQUE, t_ref).astype(np.float32)

    # shadow of the thick clouds
    weight = np.zeros((h, w), dtype=np.float32)
    if shadow and thick.any():
        if shadow_offset_px is None:
            length = rng.uniform(0.05, 0.15) * min(h, w)
            az = np.deg2rad(rng.uniform(320.0, 350.0))  # direction the shadow falls (from north)
            shadow_offset_px = (-length * np.cos(az), length * np.sin(az))
        dy, dx = (int(round(v)) for v in shadow_offset_px)
        moved = np.roll(thick, (dy, dx), axis=(0, 1)).astype(np.float32)
        weight = ndimage.gaussian_filter(moved, sigma=1.0, mode="wrap")
    shadow_mask = (weight > 0.02) & ~thick
    weight = np.where(shadow_mask, np.minimum(weight, 1.0), 0.0).astype(np.float32)
    return CloudFields(
        transmission=t_ref,
        thin=thin,
        thick=thick,
        shadow=shadow_mask,
        shadow_weight=weight,
        cloud_brightness=brightness,
    )


def apply_clouds(
    surface: np.ndarray,
    wavelengths_nm: Sequence[float],
    fields: CloudFields,
    *,
    gamma: float,
    light: np.ndarray,
    shadow_k0: float = 0.35,
) -> tuple[np.ndarray, np.ndarray]:
    """Observed (B, H, W) float32 from surface ``surface`` (B, H, W); returns (observed, t_b)."""
    surface = np.asarray(surface, dtype=np.float32)
    light = np.asarray(light, dtype=np.float32)
    t_b = spectral_transmission(fields.transmission, wavelengths_nm, gamma)
    j = surface
    if fields.shadow.any():
        k = shadow_darkening(wavelengths_nm, shadow_k0)
        j = surface * (1.0 - fields.shadow_weight[None] * (1.0 - k[:, None, None]))
    obs = j * t_b + light[:, None, None] * (1.0 - t_b)
    if fields.thick.any():
        cloud = light[:, None, None] * fields.cloud_brightness[None]
        obs = np.where(fields.thick[None], cloud, obs)
    return obs.astype(np.float32, copy=False), t_b


class CloudSeries:
    """Clouds applied date by date to a (T, B, H, W) series, and the record of what was applied.

    The one per-date step of ``make_stack`` and ``simulate_clouds``: draw the Angstrom exponent
    (unless given), the cloud light and the shadow depth from ``rng`` in that order, apply the
    fields, and keep the observation, masks, transmission, gamma and light of the date.
    """

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        t_n, nb, h, w = shape
        self.observed = np.empty(shape, dtype=np.float32)
        self.thin = np.zeros((t_n, h, w), dtype=bool)
        self.thick = np.zeros((t_n, h, w), dtype=bool)
        self.shadow = np.zeros((t_n, h, w), dtype=bool)
        self.transmission = np.ones((t_n, h, w), dtype=np.float32)
        self.gamma = np.empty(t_n, dtype=np.float32)
        self.light = np.empty((t_n, nb), dtype=np.float32)

    def apply(
        self,
        i: int,
        surface: np.ndarray,
        wavelengths_nm: Sequence[float],
        fields: CloudFields,
        rng: np.random.Generator,
        *,
        gamma: float | None = None,
        light_level: float | None = None,
    ) -> None:
        """Date ``i``: ``surface`` (B, H, W) under ``fields``; gamma random in 0..2 unless given."""
        self.gamma[i] = rng.uniform(0.0, 2.0) if gamma is None else gamma
        self.light[i] = atmospheric_light(wavelengths_nm, rng, light_level)
        self.observed[i], _ = apply_clouds(
            surface,
            wavelengths_nm,
            fields,
            gamma=float(self.gamma[i]),
            light=self.light[i],
            shadow_k0=float(rng.uniform(0.25, 0.45)),
        )
        self.thin[i], self.thick[i], self.shadow[i] = fields.thin, fields.thick, fields.shadow
        self.transmission[i] = fields.transmission


@dataclass(frozen=True)
class CloudSimulation:
    """Result of :func:`simulate_clouds`. Arrays follow the input type (xarray or numpy)."""

    observed: Any  # xr.Dataset like the input, or np.ndarray like the input
    thin: Any  # bool (time?, y, x)
    thick: Any
    shadow: Any
    transmission: Any  # float32 t at 490 nm
    gamma: np.ndarray  # (T,) per date
    atmospheric_light: np.ndarray  # (T, B)


def _covers(kind: str, cover: float) -> tuple[float, float, bool]:
    if kind == "thin":
        return cover, 0.0, False
    if kind == "thick":
        return 0.0, cover, False
    if kind == "mixed":
        return 0.6 * cover, 0.4 * cover, True
    if kind == "shadow":
        return 0.0, cover, True
    raise ValueError(f"kind must be 'thin', 'thick', 'shadow' or 'mixed', not {kind!r}")


def simulate_clouds(
    clear: xr.Dataset | np.ndarray,
    *,
    kind: CloudKind = "mixed",
    cover: float = 0.3,
    seed: int | np.random.Generator = 0,
    bands: Sequence[str] | None = None,
    gamma: float | None = None,
    light_level: float | None = None,
    shadow_offset_px: tuple[float, float] | None = None,
    resolution: float = 10.0,
) -> CloudSimulation:
    """Put simulated clouds on clear imagery, independently per date.

    ``clear`` is an ``xr.Dataset`` of reflectance bands named by asset key with dims ``(y, x)`` or
    ``(time, y, x)``, or a numpy array ``(B, H, W)`` / ``(T, B, H, W)`` with ``bands`` naming axis B.
    ``kind``: "thin" (haze only, ``cover`` = thin fraction), "thick" (opaque clouds only), "mixed"
    (60 % of ``cover`` thin incl. halos, 40 % thick, with shadows), "shadow" (cloud shadows only:
    ``cover`` is the fraction of the casting cloud field, the clouds themselves are not drawn).
    ``gamma`` and ``light_level`` default to random per date (0..2 and 0.75..1.05).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    thin_c, thick_c, with_shadow = _covers(kind, float(cover))

    if isinstance(clear, xr.Dataset):
        names = check_bands([str(v) for v in clear.data_vars if str(v) in WAVELENGTH_NM])
        has_time = "time" in clear.dims
        ds = clear if has_time else clear.expand_dims("time")
        cube = np.stack([ds[b].transpose("time", "y", "x").values for b in names], axis=1)
    else:
        if bands is None:
            raise ValueError("simulate_clouds on a numpy array needs bands=[asset keys of axis B]")
        names = check_bands(list(bands))
        has_time = clear.ndim == 4
        cube = np.asarray(clear, dtype=np.float32)
        cube = cube if has_time else cube[None]
    lam = [WAVELENGTH_NM[b] for b in names]
    t_n, _, h, w = cube.shape

    series = CloudSeries(cube.shape)
    for i in range(t_n):
        f = cloud_fields(
            (h, w),
            rng,
            thin_cover=thin_c,
            thick_cover=thick_c,
            shadow=with_shadow,
            shadow_offset_px=shadow_offset_px,
            resolution=resolution,
            halo=kind == "mixed",
        )
        if kind == "shadow":  # keep the shadow, drop the cloud that casts it
            f = CloudFields(
                transmission=np.ones((h, w), dtype=np.float32),
                thin=np.zeros((h, w), dtype=bool),
                thick=np.zeros((h, w), dtype=bool),
                shadow=f.shadow | f.thick,
                shadow_weight=np.where(f.thick, 1.0, f.shadow_weight).astype(np.float32),
                cloud_brightness=np.zeros((h, w), dtype=np.float32),
            )
        series.apply(i, cube[i], lam, f, rng, gamma=gamma, light_level=light_level)
    obs, trans, gammas, lights = series.observed, series.transmission, series.gamma, series.light
    masks = {"thin": series.thin, "thick": series.thick, "shadow": series.shadow}

    if not isinstance(clear, xr.Dataset):
        sl = slice(None) if has_time else 0
        return CloudSimulation(
            observed=obs[sl],
            thin=masks["thin"][sl],
            thick=masks["thick"][sl],
            shadow=masks["shadow"][sl],
            transmission=trans[sl],
            gamma=gammas,
            atmospheric_light=lights,
        )
    out = ds.copy()
    for j, b in enumerate(names):
        out[b] = ds[b].transpose("time", "y", "x").copy(data=obs[:, j])
    template = ds[names[0]].transpose("time", "y", "x")

    def _da(values: np.ndarray, name: str) -> xr.DataArray:
        da = xr.DataArray(values, coords=template.coords, dims=template.dims, name=name)
        return da if has_time else da.isel(time=0, drop=True)

    return CloudSimulation(
        observed=out if has_time else out.isel(time=0, drop=True),
        thin=_da(masks["thin"], "thin"),
        thick=_da(masks["thick"], "thick"),
        shadow=_da(masks["shadow"], "shadow"),
        transmission=_da(trans, "transmission"),
        gamma=gammas,
        atmospheric_light=lights,
    )
