"""The prior interface the restore step calls, and the prior registry.

A prior turns observations into per-pixel *transmission* (t at 490 nm) and *confidence* that
the physical inversion is faithful, in two steps:

1. ``estimate_scene(sample, bands, scl)`` once per cube on a strided pixel sample (small,
   in memory): per-date scene parameters (airlight, Angstrom gamma, ...);
2. ``block(data, bands, scene, scl)`` per spatial chunk with the whole time axis: returns a
   ``PriorBlock`` (t_ref, band transmissions, confidence, the physical inversion J_phys).

The restore step calls ``block_at(data, bands, scene, scl, location)``: ``block`` plus the
block's place in the whole array (``BlockLocation``) and the prior's optional extra
per-pixel ``layers`` (stored in the archive; a rerun passes them back in ``location.stored``).

The VLM prior (``pipeline.priors._vlm``, Qwen2/2.5/3-VL through ``transformers``) plugs in
behind the same interface by wrapping ``PhysicsPrior``: it calls its ``block`` and refines
transmission and confidence, then re-inverts with ``pipeline.kernels.invert``. Models are
loaded lazily on the worker (a per-process cache), never held in the prior object, so the
prior stays small, picklable and tokenizable.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


@dataclass(frozen=True, eq=False)
class SceneParams:
    """Per-date scene parameters (small numpy arrays; T dates, B bands).

    airlight (T, B), gamma (T,), dark_object (B,), hot_slope / hot_intercept (T,) (NaN where
    HOT is unusable), extras: anything a prior adds (name -> array).
    """

    bands: tuple[str, ...]
    airlight: np.ndarray
    gamma: np.ndarray
    dark_object: np.ndarray
    hot_slope: np.ndarray
    hot_intercept: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __dask_tokenize__(self) -> tuple:
        from dask.base import tokenize

        arrays = (self.airlight, self.gamma, self.dark_object, self.hot_slope, self.hot_intercept)
        return ("SceneParams", self.bands, tokenize(*arrays), tokenize(dict(self.extras)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (lists of floats) for provenance."""
        return {
            "bands": list(self.bands),
            "airlight": np.asarray(self.airlight).tolist(),
            "gamma": np.asarray(self.gamma).tolist(),
            "dark_object": np.asarray(self.dark_object).tolist(),
        }


class PriorBlock(NamedTuple):
    """What a prior returns for one block (float32; T dates, B bands)."""

    transmission: np.ndarray  # (T, Y, X) t at the reference wavelength (490 nm), 0..1
    band_transmission: np.ndarray  # (T, B, Y, X) t_b
    confidence: np.ndarray  # (T, Y, X) 0..1, faith in the physical inversion
    surface: np.ndarray  # (T, B, Y, X) physical inversion J_phys
    #: fused cloud evidence (``pipeline.priors.CloudEvidence``: p_cloud, p_shadow (T, Y, X)),
    #: or None: the restore step then takes the transmission's own reading
    #: (``physics_opinion``)
    evidence: Any = None

    def drop_x(self) -> PriorBlock:
        """Fields of a block laid out as an (N, 1) image, without the trailing x axis."""
        ev = self.evidence
        if ev is not None:
            ev = type(ev)(*(None if f is None else np.asarray(f)[..., 0] for f in ev))
        t, tb, c, j = (np.asarray(f)[..., 0] for f in self[:4])
        return PriorBlock(t, tb, c, j, evidence=ev)


class BlockLocation(NamedTuple):
    """Where a block sits in the whole array, and the prior's own stored layers for it.

    origin: global (row, column) index of the block's first pixel; shape: global (rows,
    columns) of the whole array. Priors with a global spatial layout (the VLM prior's crop
    grid) need both so that a chunk's result does not depend on the chunking.
    stored: (T, L, Y, X) float32 values of ``Prior.layers`` from an earlier run (read from an
    archive and passed in with the cube), or None: a prior may reuse them instead of
    recomputing.
    """

    origin: tuple[int, int]
    shape: tuple[int, int]
    stored: np.ndarray | None = None


def whole_image(data: np.ndarray) -> BlockLocation:
    """The location of a (T, B, Y, X) block taken as a whole image of its own."""
    return BlockLocation((0, 0), (int(data.shape[2]), int(data.shape[3])))


class Prior(ABC):
    """Interface of a cloud prior (see the module docstring)."""

    #: Registry name, recorded in the output attributes.
    name: str = "prior"

    #: Names of extra per-pixel (time, y, x) layers ``block_at`` returns (written beside the
    #: quality layers, and reusable by a rerun); empty for priors without any.
    layers: tuple[str, ...] = ()

    #: long_name attributes of ``layers``.
    layer_descriptions: Mapping[str, str] = {}

    @property
    def resources(self) -> Mapping[str, float] | None:
        """Dask worker resources each block task needs (e.g. ``{"GPU": 1}``), or None."""
        return None

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able parameters, recorded for provenance."""

    @property
    @abstractmethod
    def halo(self) -> int:
        """Spatial radius (px) ``block`` reads around each output pixel."""

    @abstractmethod
    def estimate_scene(
        self, sample: np.ndarray, bands: tuple[str, ...], scl: np.ndarray | None = None
    ) -> SceneParams:
        """Scene parameters from a (T, B, N) float32 pixel sample (and (T, N) SCL or None)."""

    @abstractmethod
    def block(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None = None,
    ) -> PriorBlock:
        """Transmission, confidence and physical inversion for a (T, B, Y, X) block."""

    def block_at(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None,
        location: BlockLocation,
    ) -> tuple[PriorBlock, np.ndarray | None]:
        """``block`` for a block at ``location``, plus the (T, L, Y, X) ``layers`` (or None).

        The restore step calls this; the default ignores the location and has no layers.
        """
        return self.block(data, bands, scene, scl), None

    def sample_block(
        self,
        sample: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None = None,
    ) -> PriorBlock:
        """``block`` on the (T, B, N) scene sample; fields come back without the x axis.

        Used for the scene-level (global) harmonisation fit. Default: ``block`` on the sample
        laid out as an (N, 1) image; priors with spatial windows should override it with a
        window-less version (sample neighbours are not image neighbours).
        """
        res = self.block(sample[..., None], bands, scene, None if scl is None else scl[..., None])
        return res.drop_x()

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__module__, type(self).__qualname__, self.name, _json(self.params()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_json(self.params())})"


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
