"""A prior combined with cloud-evidence sources: ``--prior physics+stack+csmask``.

The base prior (``physics``, or ``vlm`` which wraps it) gives the transmission, the
confidence and the physical inversion; every evidence source (``stack``, ``csmask``) and the
base prior's own reading give an opinion on whether each pixel of each date is clear. The
opinions are fused into one ``CloudEvidence`` by summed weighted log-odds
(``combine_evidence``), so each source can raise or lower the belief:

* the physics prior's transmission, bounded (``physics_opinion``; weight ``physics_weight``);
* the VLM's label probabilities (thin + thick cloud vs the rest, shadow vs the rest; weight
  ``vlm_weight``): its "clear" and "bright surface" judgements now count *for* the pixel;
* each source at its own ``weight``.

The fusion step then passes clear pixels through, takes references only from dates the
evidence calls clear, and fits the harmonisation on pixels clear on both dates
(``pipeline.kernels.fuse_dates``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ._base import BlockLocation, Prior, PriorBlock, SceneParams, whole_image
from ._evidence import CloudEvidence, EvidenceSource, combine_evidence, physics_opinion

log = logging.getLogger(__name__)

#: Least and largest probability a VLM judgement may claim (a per-region judgement).
VLM_OPINION_RANGE = (0.05, 0.95)


def vlm_opinion(probs: np.ndarray, roles: Sequence[str]) -> CloudEvidence:
    """(T, L, Y, X) label probabilities with their roles -> cloud and shadow probabilities."""
    p = np.asarray(probs, dtype=np.float64)
    roles = list(roles)
    total = p.sum(axis=1)

    def share(*wanted: str) -> np.ndarray:
        idx = [k for k, r in enumerate(roles) if r in wanted]
        s = p[:, idx].sum(axis=1) if idx else np.zeros_like(total)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.clip(s / total, *VLM_OPINION_RANGE)
        return np.where(np.isfinite(out), out, np.nan).astype(np.float32)

    return CloudEvidence(share("thin", "thick"), share("shadow") if "shadow" in roles else None)


def own_opinions(
    prior: Prior,
    pb: PriorBlock,
    layers: np.ndarray | None,
    *,
    physics_weight: float = 0.5,
    vlm_weight: float = 1.0,
) -> list[tuple[float, CloudEvidence]]:
    """The opinions a prior carries by itself: its transmission's reading (bounded) and, for
    a VLM prior, its label probabilities (``vlm_opinion``), with their weights."""
    opinions = [(physics_weight, physics_opinion(pb.transmission))]
    roles = getattr(getattr(prior, "config", None), "roles", None)
    if layers is not None and roles is not None:
        opinions.append((vlm_weight, vlm_opinion(layers, roles)))
    return opinions


def own_evidence(prior: Prior, pb: PriorBlock, layers: np.ndarray | None) -> CloudEvidence:
    """``own_opinions`` fused: the evidence of a prior used without evidence sources."""
    return combine_evidence(own_opinions(prior, pb, layers), np.shape(pb.transmission))


class CombinedPrior(Prior):
    """A base prior plus cloud-evidence sources, fused in log-odds (see the module docstring)."""

    def __init__(
        self,
        base: Prior,
        sources: Sequence[EvidenceSource],
        *,
        physics_weight: float = 0.5,
        vlm_weight: float = 1.0,
    ) -> None:
        if isinstance(base, CombinedPrior):
            raise TypeError("CombinedPrior's base must be a plain prior (physics or vlm)")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"evidence sources named twice: {names}")
        self.base = base
        self.sources = tuple(sources)
        self.physics_weight = float(physics_weight)
        self.vlm_weight = float(vlm_weight)
        self.name = "+".join([base.name, *names])
        self.layers = base.layers
        self.layer_descriptions = base.layer_descriptions

    def params(self) -> dict[str, Any]:
        return {
            "base": {"name": self.base.name, **self.base.params()},
            "sources": {s.name: {"weight": s.weight, **s.params()} for s in self.sources},
            "physics_weight": self.physics_weight,
            "vlm_weight": self.vlm_weight,
        }

    @property
    def halo(self) -> int:
        return max([self.base.halo, *(s.halo for s in self.sources)])

    @property
    def resources(self) -> dict[str, float] | None:
        merged: dict[str, float] = {}
        for r in [self.base.resources, *(s.resources for s in self.sources)]:
            for k, v in (r or {}).items():
                merged[k] = max(merged.get(k, 0.0), float(v))
        return merged or None

    def estimate_scene(
        self, sample: np.ndarray, bands: tuple[str, ...], scl: np.ndarray | None = None
    ) -> SceneParams:
        scene = self.base.estimate_scene(sample, bands, scl)
        extras = dict(scene.extras)
        for s in self.sources:
            extras.update(s.scene_extras(np.asarray(sample, np.float32), bands))
        return replace(scene, extras=extras)

    def _opinions(
        self, pb: PriorBlock, layers: np.ndarray | None
    ) -> list[tuple[float, CloudEvidence]]:
        return own_opinions(
            self.base, pb, layers, physics_weight=self.physics_weight, vlm_weight=self.vlm_weight
        )

    def block_at(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None,
        location: BlockLocation,
    ) -> tuple[PriorBlock, np.ndarray | None]:
        pb, layers = self.base.block_at(data, bands, scene, scl, location)
        opinions = self._opinions(pb, layers)
        for s in self.sources:
            opinions.append((s.weight, s.evidence(data, bands, scene, location)))
        evidence = combine_evidence(opinions, np.shape(pb.transmission))
        return pb._replace(evidence=evidence), layers

    def block(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None = None,
    ) -> PriorBlock:
        return self.block_at(data, bands, scene, scl, whole_image(data))[0]

    def sample_block(
        self,
        sample: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None = None,
    ) -> PriorBlock:
        pb = self.base.sample_block(sample, bands, scene, scl)
        opinions = self._opinions(pb, None)
        for s in self.sources:
            ev = s.sample_evidence(sample, bands, scene)
            if ev is not None:
                opinions.append((s.weight, ev))
        return pb._replace(evidence=combine_evidence(opinions, np.shape(pb.transmission)))
