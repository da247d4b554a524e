"""The ``stack`` evidence source: cloud, haze and shadow read from the time series itself.

The science is in ``pipeline.kernels._evidence`` (a per-pixel clear-sky baseline over the
dates, each date's blue and HOT excess over it, a uniform-darkening shadow test, and the
dates' dark-object levels compared across the scene sample). This module only configures it
and plugs it into the prior combination.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..kernels._evidence import scene_haze_excess, stack_evidence
from ._base import BlockLocation, SceneParams
from ._evidence import CloudEvidence, EvidenceSource

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, ...]] = set()


def _warn_once(bands: tuple[str, ...]) -> None:
    if tuple(bands) not in _WARNED:
        _WARNED.add(tuple(bands))
        log.warning(
            "stack evidence needs B02 and B04, the cube has %s: it gives no opinion (load B02 "
            "and B04 for cloud evidence from the series)",
            list(bands),
        )


#: ``SceneParams.extras`` key of each date's dark-object excess in the blue.
SCENE_EXCESS = "stack_dark_object_excess"


@dataclass(frozen=True)
class StackConfig:
    """Settings of the stack evidence (see ``pipeline.kernels._evidence``).

    quantile: the per-pixel lower envelope is this quantile of the valid dates (0.25: a
        pixel needs a quarter of its dates clear for its baseline to be clear).
    radius: box-mean radius (px) of the haze index (noise).
    haze_mid, haze_scale: haze index (reflectance) at p_cloud = 0.5, and the logistic scale
        (0.015 +- 0.005: about three times the L2A noise of a blue reflectance).
    scene_mid, scene_scale: the same for a date's dark-object excess over the series.
    darkening, spread: ramps of the shadow test (mean log ratio, its spread across bands).
    weight: log-odds weight of the source in the combination.
    """

    quantile: float = 0.25
    radius: int = 1
    haze_mid: float = 0.015
    haze_scale: float = 0.005
    scene_mid: float = 0.02
    scene_scale: float = 0.005
    darkening: tuple[float, float] = (0.2, 0.5)
    spread: tuple[float, float] = (0.3, 0.6)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.quantile <= 0.5:
            raise ValueError(f"StackConfig.quantile must be in [0, 0.5], got {self.quantile}")
        if self.radius < 0:
            raise ValueError("StackConfig.radius must be >= 0")
        if self.haze_scale <= 0 or self.scene_scale <= 0:
            raise ValueError("StackConfig scales must be > 0")
        object.__setattr__(self, "darkening", tuple(float(v) for v in self.darkening))
        object.__setattr__(self, "spread", tuple(float(v) for v in self.spread))


class StackEvidence(EvidenceSource):
    """Cloud / haze / shadow evidence from the whole stack (no model, no window but ``radius``)."""

    name = "stack"

    def __init__(self, config: StackConfig | None = None, **kw: Any) -> None:
        if config is not None and kw:
            raise TypeError("StackEvidence takes a StackConfig or keywords, not both")
        self.config = config or StackConfig(**kw)
        self.weight = self.config.weight

    def params(self) -> dict[str, Any]:
        return asdict(self.config)

    @property
    def halo(self) -> int:
        return self.config.radius

    def scene_extras(self, sample: np.ndarray, bands: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {SCENE_EXCESS: scene_haze_excess(sample, bands)}

    def _evidence(self, data, bands, scene, radius) -> CloudEvidence:
        c = self.config
        if "B02" not in bands or "B04" not in bands:
            # the default prior must work on any band subset: without blue and red the
            # stack has no opinion, and the other sources decide
            _warn_once(bands)
            nan = np.full((data.shape[0],) + data.shape[2:], np.nan, np.float32)
            return CloudEvidence(nan, None)
        cloud, shadow = stack_evidence(
            data,
            bands,
            scene_excess=scene.extras.get(SCENE_EXCESS),
            quantile=c.quantile,
            radius=radius,
            haze_mid=c.haze_mid,
            haze_scale=c.haze_scale,
            scene_mid=c.scene_mid,
            scene_scale=c.scene_scale,
            darkening=c.darkening,
            spread=c.spread,
        )
        return CloudEvidence(cloud, shadow)

    def evidence(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        location: BlockLocation,
    ) -> CloudEvidence:
        return self._evidence(data, bands, scene, self.config.radius)

    def sample_evidence(
        self, sample: np.ndarray, bands: tuple[str, ...], scene: SceneParams
    ) -> CloudEvidence:
        ev = self._evidence(sample[..., None], bands, scene, 0)
        return CloudEvidence(ev.cloud[..., 0], None if ev.shadow is None else ev.shadow[..., 0])
