"""The physics prior: transmission and confidence from the scattering model alone.

Scene step (per date, on the strided sample): dark object D_b, airlight A_b, clear-sky line
for HOT, Angstrom gamma (``pipeline.kernels`` scene estimators), and a ceiling of each date's
t_ref from its dark-object excess over the series (``scene_transmission_ceiling``: a date
overcast or hazy over the whole scene). Block step: t_ref from the dark-channel / HOT / snow /
SCL cues, capped by that ceiling, t_b by the Angstrom law, J_phys by inversion, and the
confidence c (``pipeline.kernels.transmission`` and ``inversion_confidence`` say how).

Limitations
-----------
* All cues are per date; the temporal cues (shadow darkening vs the reference) are added in
  the fusion step. Snow without SWIR bands is indistinguishable from cloud here.
* The airlight is one spectrum per date; scenes with clouds of very different optical
  properties (cirrus over cumulus) would need A per region.
* The transmission ceiling leaves snow out of the dark-object levels only with B11/B12 in
  the cube: in a 4-band run a date under snow over the whole scene reads as overcast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..kernels import (
    band_transmission,
    estimate_airlight,
    estimate_dark_object,
    estimate_gamma,
    fit_clear_line,
    floor_transmission,
    inversion_confidence,
    invert,
    pixel_haze_bound,
    snow_score,
    temporal_dark_object,
    transmission,
    wavelengths_of,
)
from ..kernels._common import band_index
from ..kernels._evidence import scene_haze_excess, scene_transmission_ceiling
from ._base import Prior, PriorBlock, SceneParams


@dataclass(frozen=True)
class PhysicsConfig:
    """Settings of the physics prior (frozen: hashable, tokenizable, recorded in provenance).

    t_min: lower bound of t_b in the inversion (bounds noise amplification).
    window_radius: dark-channel window radius (px); the prior reads 2x this around a pixel.
    dark_channel_max_nm: bands shorter than this feed the dark channel and the airlight.
    hot_margin: slack of the HOT veto on the dark-channel haze.
    scl_weight: 0 ignores SCL, 1 uses it as the default weak evidence.
    confidence_t_low, confidence_t_high: t_ref ramp of the confidence.
    gamma_default, gamma_min, gamma_max: Angstrom exponent fallback and clip range.
    airlight_top_fraction: share of brightest haze-channel pixels that define A.
    min_cloud_reflectance: a date's brightest pixels below this hold no thick cloud.
    dark_object_percentile: percentile of temporal minima that defines the scene D_b.
    max_dark_object: cap of the per-pixel temporal dark object (reflectance).
    scene_excess_tolerance: a date's dark-object excess in the blue over the series' lowest
        that is still clear-date variation; beyond it the excess bounds the date's t_ref
        from above (``scene_transmission_ceiling``).
    """

    t_min: float = 0.1
    window_radius: int = 1
    dark_channel_max_nm: float = 700.0
    hot_margin: float = 0.1
    scl_weight: float = 1.0
    confidence_t_low: float = 0.25
    confidence_t_high: float = 0.6
    gamma_default: float = 1.0
    gamma_min: float = 0.0
    gamma_max: float = 2.5
    airlight_top_fraction: float = 0.002
    min_cloud_reflectance: float = 0.4
    dark_object_percentile: float = 1.0
    max_dark_object: float = 0.3
    scene_excess_tolerance: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"PhysicsConfig.t_min must be in (0, 1), got {self.t_min}")
        if self.window_radius < 0:
            raise ValueError("PhysicsConfig.window_radius must be >= 0")
        if not self.confidence_t_low < self.confidence_t_high:
            raise ValueError("PhysicsConfig needs confidence_t_low < confidence_t_high")
        if not self.gamma_min <= self.gamma_default <= self.gamma_max:
            raise ValueError("PhysicsConfig needs gamma_min <= gamma_default <= gamma_max")
        if not self.scene_excess_tolerance >= 0.0:
            raise ValueError(
                "PhysicsConfig.scene_excess_tolerance is a reflectance and must be >= 0, got "
                f"{self.scene_excess_tolerance}"
            )


#: ``SceneParams.extras`` key of each date's transmission ceiling from its dark-object excess.
SCENE_T_CEILING = "physics_scene_transmission_ceiling"


def _below_ceiling(t_ref: np.ndarray, ceiling: np.ndarray | None) -> np.ndarray:
    """t_ref (T, ...) capped by each date's ceiling, for the confidence.

    A date whose darkest surfaces are lifted over the whole scene is that hazy or cloudy
    everywhere, whatever a pixel's own cues say: a pixel cloudy on every date reads its own
    cloud as its dark object and looks clear, and an overcast date then served as the
    reference of the thick cloud on the others (the cloud was copied and reported valid).
    Only the faith in the inversion reads the cap, not the inversion: the ceiling comes from
    the cloud airlight of the date, while a scene-wide haze has its own, bluer path
    radiance, and inverting a hazy date at the capped t with the cloud's grey airlight
    took its restored blue 0.014 too dark (0.002 without the cap) on the real crop.
    """
    if ceiling is None:
        return t_ref
    cap = np.asarray(ceiling, dtype=np.float32).reshape((-1,) + (1,) * (np.ndim(t_ref) - 1))
    return np.minimum(t_ref, cap)  # NaN (no data) stays NaN


class PhysicsPrior(Prior):
    """Physics-only prior (dark channel + HOT + spectral shape + SCL, Angstrom law)."""

    name = "physics"

    def __init__(self, config: PhysicsConfig | None = None, **kw: Any) -> None:
        if config is not None and kw:
            raise TypeError("PhysicsPrior takes a PhysicsConfig or keywords, not both")
        if kw:
            valid = {f.name for f in fields(PhysicsConfig)}
            unknown = sorted(set(kw) - valid)
            if unknown:
                raise TypeError(
                    f"unknown physics prior option(s) {unknown}; valid: {', '.join(sorted(valid))}"
                )
            config = PhysicsConfig(**kw)
        self.config = config or PhysicsConfig()

    def params(self) -> dict[str, Any]:
        return asdict(self.config)

    @property
    def halo(self) -> int:
        # min filter (r) then box mean (r) on the dark channel; HOT box mean (r) alongside.
        return 2 * self.config.window_radius

    def estimate_scene(
        self, sample: np.ndarray, bands: tuple[str, ...], scl: np.ndarray | None = None
    ) -> SceneParams:
        cfg = self.config
        sample = np.asarray(sample, dtype=np.float32)
        wl = wavelengths_of(bands)
        dark = estimate_dark_object(sample, cfg.dark_object_percentile)
        snow = snow_score(sample[..., None], bands)
        airlight = estimate_airlight(
            sample,
            wl,
            snow=None if snow is None else snow[..., 0],
            top_fraction=cfg.airlight_top_fraction,
            min_cloud_reflectance=cfg.min_cloud_reflectance,
            max_nm=cfg.dark_channel_max_nm,
        )
        ceiling = self._ceiling(sample, bands, airlight, dark, snow)
        gamma = estimate_gamma(
            sample,
            airlight,
            wl,
            dark,
            default=cfg.gamma_default,
            bounds=(cfg.gamma_min, cfg.gamma_max),
        )
        pix_dark = temporal_dark_object(sample[..., None], wl, dark, cap=cfg.max_dark_object)
        h = pixel_haze_bound(
            sample[..., None], airlight, pix_dark, wl, gamma, cfg.dark_channel_max_nm
        )
        slope, icpt = fit_clear_line(
            sample, band_index(bands, "B02"), band_index(bands, "B04"), h[..., 0] < 0.05
        )
        extras = {} if ceiling is None else {SCENE_T_CEILING: ceiling}
        return SceneParams(tuple(bands), airlight, gamma, dark, slope, icpt, extras)

    def _ceiling(self, sample, bands, airlight, dark, snow) -> np.ndarray | None:
        """Each date's t_ref ceiling from its dark-object excess (None without a blue band).

        Snow is left out of the dark-object levels (``snow``: (T, N, 1) scores, None without
        SWIR): a date under snow everywhere has no dark surface either, and is no overcast.
        """
        blue = band_index(bands, "B02")
        if blue is None:
            return None
        if snow is not None:
            sample = np.where((snow[..., 0] >= 0.5)[:, None, :], np.float32(np.nan), sample)
        return scene_transmission_ceiling(
            scene_haze_excess(sample, tuple(bands)),
            airlight[:, blue],
            float(dark[blue]),
            self.config.scene_excess_tolerance,
        )

    def _block(self, data, bands, scene, scl, radius) -> PriorBlock:
        cfg = self.config
        wl = wavelengths_of(bands)
        # The compiled kernels read C-contiguous arrays: convert once here rather than once
        # per kernel (a band slice of a stacked block, or the SCL plane, is strided).
        data = np.ascontiguousarray(data)
        scl = None if scl is None else np.ascontiguousarray(scl)
        dark = temporal_dark_object(data, wl, scene.dark_object, cap=cfg.max_dark_object)
        t_ref = transmission(
            data,
            scene.airlight,
            scene.gamma,
            dark,
            scene.hot_slope,
            scene.hot_intercept,
            tuple(bands),
            wl,
            scl,
            radius=radius,
            max_nm=cfg.dark_channel_max_nm,
            hot_margin=cfg.hot_margin,
            scl_weight=cfg.scl_weight,
        )
        t_b = band_transmission(t_ref, wl, scene.gamma)
        floor_transmission(data, scene.airlight, t_b, out=t_b)  # in place: one (T, B) array
        surface = invert(data, scene.airlight, t_b, cfg.t_min)
        conf = inversion_confidence(
            _below_ceiling(t_ref, scene.extras.get(SCENE_T_CEILING)),
            surface,
            scl,
            t_low=cfg.confidence_t_low,
            t_high=cfg.confidence_t_high,
            scl_weight=cfg.scl_weight,
        )
        return PriorBlock(t_ref, t_b, conf, surface)

    def block(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None = None,
    ) -> PriorBlock:
        return self._block(data, bands, scene, scl, self.config.window_radius)

    def sample_block(
        self,
        sample: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None = None,
    ) -> PriorBlock:
        res = self._block(
            sample[..., None], bands, scene, None if scl is None else scl[..., None], 0
        )
        return res.drop_x()
