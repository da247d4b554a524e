"""Settings of the fusion: reference choice, harmonisation, temporal transmission and gate.

Its own module so that every concept module can take the settings without importing the
fusion that runs them (``_fusion`` imports them all).
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

from ._harmonisation import coarse_reach

#: Implementations of the local harmonisation (``FusionConfig.backend``).
BACKENDS = ("numba", "torch")


@dataclass(frozen=True)
class FusionConfig:
    """Settings of the reference choice, harmonisation and gate (frozen, tokenizable).

    gate_low, gate_high: confidence where the gate starts to open / is fully open.
    min_confidence_without_reference: below it a pixel with no reference is flagged, NaN.
    reference_min_quality: least q = c * t of a date to serve as a reference at a pixel.
    time_scale_days: e-folding time of the closeness-in-time factor exp(-|dt| / scale).
    max_candidates: the reference is sought among this many dates nearest in time.
    reference_blend_ratio, reference_blend_power: candidates scoring at least ratio x the
        best are blended with weights score ** power (ratio 1: the best date alone).
    consistency_sigma: reflectance RMS scale of the spectral-consistency factor.
    consistency_floor: least value of that factor (it ranks candidates, never removes one).
    reference_smooth_radius: window radius (px) of the quality smoothing for the choice.
    harmonise_radius: window radius (px) of the local gain/offset fit.
    harmonise_grid_step: the local fit is evaluated once per cell of this many px (on a grid
        anchored to the whole array) and interpolated bilinearly: the map is smooth at the
        window's scale. None: radius // 4 (the default approximation); 1: every pixel.
    harmonise_shrink_pixels, harmonise_ridge: fallback strength toward the global fit.
    harmonise_keep_signature: share of the source date's spectral shape kept in the
        harmonised reference (``_keep_signature``; 0 = the plain per-band map).
    harmonise_clear_t_low, harmonise_clear_t_high: t_ref ramp of the "clear" weight of the
        pixels the local fit uses (c * S(t; low, high), squared, on both dates).
    shadow_ratio_low, shadow_ratio_high: brightness ratio J / R below which the pixel is
        taken as shadowed (confidence scaled down smoothly between the two).
    temporal_weight: trust (0..1, times the reference's quality) in the transmission from
        the harmonised reference (``temporal_band_transmission``); 0 keeps the prior's.
    temporal_radius, temporal_min_leverage, temporal_noise: its window radius (px), least
        A_b - R_b of a usable band, and the haze level below which it is shrunk to zero.
    temporal_t_min, temporal_t_low, temporal_t_high: inversion floor and transmission ramp
        of the confidence when the inversion is redone with the temporal transmission (the
        physics prior's t_min, confidence_t_low and confidence_t_high play that role there).
    gamma_max: largest Angstrom exponent (bounds the temporal per-band transmissions).
    sigma_t_clear, sigma_t_haze: error model of the transmission, sigma_t = clear + haze *
        (1 - t), behind the inverse-variance confidence (``_physics_weight``).
    reference_sigma, reference_sigma_floor: error (reflectance RMS) of a harmonised
        reference where the local fit has no support, and the least error ever assumed.
    pass_low, pass_high: ramp of the evidence's clear probability (1 - p_cloud)(1 - p_shadow)
        over which the observation itself passes through (w = S(p_clear; low, high)).
    evidence_floor: least weight of the evidence's clearness in a candidate's score (a
        cloudy date remains a reference of last resort, never the choice over a clear one).
    time_window_dates, time_window_days: the neighbourhood in time a target date draws its
        references from: dates at most this many positions away in the series and/or at
        most this many days away (both must hold when both are set; None: unbounded). It
        also bounds what a time block of ``restore`` holds (``time_neighbourhood``).
    backend: implementation of the local harmonisation, the fusion's dominant cost: "numba"
        (``_harmonisation``, compiled CPU passes) or "torch" (``_harmonisation_torch``, the
        same fit in tensor operations on ``device``; needs the ``vlm`` extra). Both give the
        same maps to float32 rounding (``tests/test_harmonisation_torch.py``).
    device: torch device of the "torch" backend ("cpu", "cuda", "cuda:N"); None = CUDA when
        torch sees one on the worker, else the CPU. Only with backend "torch".
    """

    gate_low: float = 0.2
    gate_high: float = 0.7
    min_confidence_without_reference: float = 0.5
    reference_min_quality: float = 0.5
    time_scale_days: float = 30.0
    max_candidates: int = 4
    reference_blend_ratio: float = 0.5
    reference_blend_power: float = 2.0
    consistency_sigma: float = 0.05
    consistency_floor: float = 0.05
    reference_smooth_radius: int = 3
    harmonise_radius: int = 32
    harmonise_grid_step: int | None = None
    harmonise_shrink_pixels: float = 1000.0
    harmonise_ridge: float = 4e-3
    shadow_ratio_low: float = 0.5
    shadow_ratio_high: float = 0.85
    temporal_weight: float = 1.0
    temporal_radius: int = 1
    temporal_min_leverage: float = 0.15
    temporal_noise: float = 0.03
    temporal_t_min: float = 0.1
    temporal_t_low: float = 0.25
    temporal_t_high: float = 0.6
    harmonise_keep_signature: float = 0.5
    harmonise_clear_t_low: float = 0.9
    harmonise_clear_t_high: float = 0.97
    gamma_max: float = 2.5
    sigma_t_clear: float = 0.01
    sigma_t_haze: float = 0.2
    reference_sigma: float = 0.04
    reference_sigma_floor: float = 0.01
    pass_low: float = 0.0
    pass_high: float = 1.0
    evidence_floor: float = 0.02
    time_window_dates: int | None = None
    time_window_days: float | None = None
    backend: str = "numba"
    device: str | None = None

    def __post_init__(self) -> None:
        self._check_backend()
        if not 0.0 <= self.gate_low < self.gate_high <= 1.0:
            raise ValueError(
                f"FusionConfig needs 0 <= gate_low < gate_high <= 1, got {self.gate_low}, "
                f"{self.gate_high}"
            )
        if self.max_candidates < 1:
            raise ValueError("FusionConfig.max_candidates must be >= 1")
        if not 0.0 < self.reference_blend_ratio <= 1.0:
            raise ValueError("FusionConfig.reference_blend_ratio must be in (0, 1]")
        if (
            self.reference_smooth_radius < 0
            or self.harmonise_radius < 0
            or self.temporal_radius < 0
        ):
            raise ValueError("FusionConfig radii must be >= 0")
        if self.harmonise_grid_step is not None and self.harmonise_grid_step < 1:
            raise ValueError(
                f"FusionConfig.harmonise_grid_step must be >= 1 px (1: every pixel; None: "
                f"harmonise_radius // 4), got {self.harmonise_grid_step}"
            )
        if not self.gamma_max >= 0.0:
            raise ValueError(
                f"FusionConfig.gamma_max is the largest Angstrom exponent and must be >= 0, got "
                f"{self.gamma_max}"
            )
        if not 0.0 <= self.pass_low < self.pass_high <= 1.0:
            raise ValueError(
                f"FusionConfig needs 0 <= pass_low < pass_high <= 1, got {self.pass_low}, "
                f"{self.pass_high}"
            )
        if not 0.0 < self.evidence_floor <= 1.0:
            raise ValueError("FusionConfig.evidence_floor must be in (0, 1]")
        if self.time_window_dates is not None and self.time_window_dates < 1:
            raise ValueError(
                f"FusionConfig.time_window_dates must be >= 1 (or None: unbounded), got "
                f"{self.time_window_dates}"
            )
        if self.time_window_days is not None and not self.time_window_days > 0:
            raise ValueError(
                f"FusionConfig.time_window_days must be > 0 (or None: unbounded), got "
                f"{self.time_window_days}"
            )
        if not 0.0 <= self.temporal_weight <= 1.0:
            raise ValueError(
                f"FusionConfig.temporal_weight must be in [0, 1], got {self.temporal_weight}"
            )

    def _check_backend(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"FusionConfig.backend must be one of {', '.join(map(repr, BACKENDS))}, got "
                f"{self.backend!r}"
            )
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(
                f"FusionConfig.device must be a torch device name ('cpu', 'cuda', 'cuda:N') or "
                f"None, got {self.device!r}"
            )
        if self.backend != "torch":
            if self.device is not None:
                raise ValueError(
                    f"FusionConfig.device={self.device!r} applies to backend='torch' only; set "
                    "backend='torch' or leave device None"
                )
            return
        if importlib.util.find_spec("torch") is None:
            from ._harmonisation_torch import import_torch

            import_torch()  # raises the ImportError that names the extra
        if self.device is not None:
            # the name only: whether CUDA exists is a property of the worker that runs the
            # fusion, not of the machine that builds the config
            from ._harmonisation_torch import import_torch

            try:
                import_torch().device(self.device)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(
                    f"FusionConfig.device {self.device!r} is not a torch device: use 'cpu', "
                    "'cuda', 'cuda:N' or None (CUDA when available, else CPU)"
                ) from exc

    @property
    def grid_step(self) -> int:
        """The local fit's grid step (px) in effect: ``harmonise_grid_step`` or radius // 4."""
        if self.harmonise_grid_step is not None:
            return int(self.harmonise_grid_step)
        return max(1, self.harmonise_radius // 4)

    @property
    def harmonise_reach(self) -> int:
        """Pixels around an output pixel that its local harmonisation reads."""
        if self.grid_step > 1:
            return coarse_reach(self.harmonise_radius, self.grid_step)
        return self.harmonise_radius

    @property
    def halo(self) -> int:
        """Spatial radius (px) the fusion step reads around each output pixel."""
        reach = self.harmonise_reach
        temporal = reach + self.temporal_radius if self.temporal_weight > 0 else 0
        return max(self.reference_smooth_radius, reach, temporal)

    @property
    def windowed(self) -> bool:
        """Whether a target date's references are bounded in time."""
        return self.time_window_dates is not None or self.time_window_days is not None

    def params(self) -> dict:
        return asdict(self)
