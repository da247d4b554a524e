"""Cloud evidence sources: independent opinions on whether a pixel of a date is contaminated.

The physics prior answers *how much* haze lies over a pixel (a transmission) and *whether
the inversion can undo it* (a confidence). It cannot answer the question every later step
depends on first: is this pixel of this date clear at all? A scene-wide haze is an affine map
of the surface per band, which a single-date dark-object test and a harmonised comparison
with another date both absorb. Evidence sources answer that question, each from what it can
see:

* ``stack``: the series itself (a per-pixel clear-sky baseline over dates, each date's
  excess over it, dark-object levels compared across dates; ``pipeline.kernels._evidence``);
* ``csmask``: a learned cloud / shadow segmentation with real weights (``ukis-csmask``);
* ``vlm``: a vision-language model's label probabilities (when configured).

Every source returns a ``CloudEvidence``: per date and pixel, a probability of cloud (thin or
thick: anything that makes the pixel not a faithful view of the surface) and optionally of
cloud shadow, NaN where the source has no opinion. ``combine_evidence`` fuses them by summing
weighted log-odds (``EvidenceSource.weight``), so every source can raise *or* lower the
belief, and a source without an opinion at a pixel adds nothing there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._base import BlockLocation, SceneParams, _json

#: Probabilities are clipped to [EPS, 1 - EPS] before the logit: no single source is certain.
EPS = 1e-3


class CloudEvidence(NamedTuple):
    """One source's (or the fused) opinion for a (T, Y, X) block, float32 0..1, NaN = none."""

    cloud: np.ndarray  # probability the pixel is cloud- or haze-contaminated
    shadow: np.ndarray | None = None  # probability of cloud shadow, or None (no opinion)


class EvidenceSource(ABC):
    """A source of cloud / shadow evidence, fused with the others in log-odds.

    Implementations are small, picklable and tokenizable (models load lazily per worker,
    never held in the object), like ``Prior``.
    """

    #: Registry name (``--prior physics+stack+csmask``), recorded in the output attributes.
    name: str = "evidence"

    #: Weight of this source's log-odds in the sum (1 = taken at face value).
    weight: float = 1.0

    @property
    def halo(self) -> int:
        """Spatial radius (px) ``evidence`` reads around each output pixel."""
        return 0

    @property
    def resources(self) -> Mapping[str, float] | None:
        """Dask worker resources a block task needs for this source (e.g. ``{"GPU": 1}``)."""
        return None

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able parameters, recorded for provenance."""

    @abstractmethod
    def evidence(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        location: BlockLocation,
    ) -> CloudEvidence:
        """Evidence for a (T, B, Y, X) float32 reflectance block (NaN = nodata).

        ``location`` gives the block's global origin and the whole array's shape, so that
        sources with a global layout (model tiles) give the same values for any chunking.
        """

    def scene_extras(self, sample: np.ndarray, bands: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Scene-level quantities from the (T, B, N) scene sample, merged into
        ``SceneParams.extras`` (global, so they do not depend on the chunking). Default none."""
        return {}

    def sample_evidence(
        self, sample: np.ndarray, bands: tuple[str, ...], scene: SceneParams
    ) -> CloudEvidence | None:
        """Evidence on the (T, B, N) scene sample (no image: no spatial windows), or None
        when the source needs an image (a model). Feeds the scene-level harmonisation fit and
        each date's clear share, which ranks the reference candidates."""
        return None

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__module__, type(self).__qualname__, self.name, _json(self.params()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_json(self.params())})"


#: How much of a probability the transmission's own reading may claim: the physics prior
#: reads bright surfaces as haze and scene-wide haze as clear, so its opinion is bounded.
PHYSICS_OPINION_RANGE = (0.1, 0.9)
#: 1 - t over which the physics opinion rises from its least to its largest value.
PHYSICS_OPINION_HAZE = (0.05, 0.4)


def physics_opinion(transmission: np.ndarray) -> CloudEvidence:
    """The physics prior's transmission read as a (bounded) cloud probability, no shadow view.

    p = lo + (hi - lo) S(1 - t; 0.05, 0.4) with (lo, hi) = ``PHYSICS_OPINION_RANGE``.
    """
    from ..kernels import smoothstep

    lo, hi = PHYSICS_OPINION_RANGE
    t = np.asarray(transmission, dtype=np.float64)
    p = lo + (hi - lo) * smoothstep(1.0 - t, *PHYSICS_OPINION_HAZE)
    return CloudEvidence(np.where(np.isfinite(t), p, np.nan).astype(np.float32), None)


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [EPS, 1 - EPS]; NaN stays NaN."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def _fuse(layers: Sequence[tuple[float, np.ndarray]], shape: tuple[int, ...]) -> np.ndarray:
    """Weighted log-odds sum of (weight, probability) layers; NaN where no layer has a value."""
    total = np.zeros(shape)
    seen = np.zeros(shape, dtype=bool)
    for w, p in layers:
        lo = logit(p)
        ok = np.isfinite(lo)
        total[ok] += w * lo[ok]
        seen |= ok
    return np.where(seen, sigmoid(total), np.nan).astype(np.float32)


def combine_evidence(
    opinions: Sequence[tuple[float, CloudEvidence]], shape: tuple[int, ...]
) -> CloudEvidence:
    """Fuse (weight, evidence) pairs by summed weighted log-odds, per pixel.

    With independent sources and a flat prior, the posterior log-odds of "cloud" is the sum
    of the sources' log-odds; the weights temper sources that are not independent or not
    calibrated (weight < 1) or that deserve more trust. A source with NaN at a pixel has no
    opinion there; where no source has one the result is NaN.
    """
    cloud = _fuse([(w, ev.cloud) for w, ev in opinions], shape)
    shadow_layers = [(w, ev.shadow) for w, ev in opinions if ev.shadow is not None]
    shadow = _fuse(shadow_layers, shape) if shadow_layers else None
    return CloudEvidence(cloud, shadow)
