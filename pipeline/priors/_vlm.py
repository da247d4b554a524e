"""The VLM prior: a Qwen vision-language model's judgement refines the physics prior.

For each block the prior

1. runs the physics prior (``PhysicsPrior.block``): t_phys, c_phys, J_phys;
2. cuts true-colour quicklook crops of ``region_px`` pixels on the global crop grid
   (``_vlm_mapping``), resizes them to ``quicklook_px`` and scores the label set with the
   checkpoint in batched forward passes (``_vlm_model``: the probability of each label's
   whole answer after the prompt, two forward passes per batch of crops; no generation);
3. interpolates the region probabilities bilinearly to pixels and maps them, with the physics
   block, to transmission, per-pixel gamma, confidence and a new inversion (the table in
   ``_vlm_mapping``).

The per-label probability maps are returned as the prior's ``layers`` (``prior_p_<label>``):
``restore`` writes them beside the quality layers, and a rerun that passes them back (see
``attach_stored_prior``) skips the model entirely.

Checkpoints: any Qwen2-VL, Qwen2.5-VL or Qwen3-VL folder (or hub id where there is
internet), loaded once per worker process on first use, on CUDA in half precision when the
worker has a GPU, else on CPU in float32. Set ``gpu_resource`` to make each block task ask
Dask for that much of a ``GPU`` worker resource.

Limitations
-----------
* The halo (1.5 regions + 1 px) makes neighbouring chunks score some regions twice; chunk
  sizes that are multiples of ``region_px`` keep the repeat small (about (c/S + 3)^2 vs
  (c/S)^2 crops per chunk of c px). Scores of one region can differ between chunks by
  batch-dependent float rounding (~1e-6), not more.
* The judgement is per region and date; the airlight stays the physics prior's scene value.
* The scene-level harmonisation fit (``sample_block``) uses the physics prior only: a
  strided pixel sample has no image to show a model.
* The task token includes the checkpoint path, not its content: replacing the weights in
  place does not change task names.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..kernels import wavelengths_of
from ._base import BlockLocation, Prior, PriorBlock, SceneParams, whole_image
from ._physics import PhysicsConfig, PhysicsPrior
from ._vlm_mapping import (
    DEFAULT_LABELS,
    QUICKLOOK_BANDS,
    ROLES,
    LabelMapping,
    apply_label_mapping,
    crop_regions,
    interpolate_regions,
    quicklook_rgb,
    region_halo,
    regions_inside,
)
from ._vlm_model import ScorerSpec, check_vlm_installed, get_scorer

log = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "This is a true-colour Sentinel-2 satellite image patch. Which one of these best "
    "describes most of it: {labels}? Answer with the label only."
)

LAYER_PREFIX = "prior_p_"


def layer_name(label: str) -> str:
    """Archive variable of a label's probability map, e.g. 'thin cloud' -> 'prior_p_thin_cloud'."""
    return LAYER_PREFIX + "_".join(label.lower().split())


@dataclass(frozen=True)
class VLMConfig:
    """Settings of the VLM prior (frozen: hashable, tokenizable, recorded in provenance).

    model: checkpoint folder or hub id (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).
    region_px: side of a region (crop) in output pixels (256 px = 2.56 km at 10 m).
    quicklook_px: side the crop is resized to before the model sees it.
    labels: (label word, role) pairs; roles are clear, thin, thick, shadow, bright.
    prompt: the question; ``{labels}`` is replaced by the comma-separated label words.
    batch_size: crops per forward pass (memory vs speed).
    device: 'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:N'.
    dtype: 'auto' (bfloat16/float16 on CUDA, float32 on CPU), 'float32', 'float16', 'bfloat16'.
    stretch_max: reflectance shown as white in the quicklook (see ``quicklook_rgb``).
    gpu_resource: > 0 makes each block task request this much Dask resource 'GPU' (start
        the GPU workers with ``--resources GPU=1``; ``restore`` then turns dask's low-level
        task fusion off, which would drop the annotation).
    mapping: the judgement -> physics parameters (``LabelMapping``).
    physics: the wrapped physics prior's settings.
    """

    model: str = ""
    region_px: int = 256
    quicklook_px: int = 224
    labels: tuple[tuple[str, str], ...] = DEFAULT_LABELS
    prompt: str = DEFAULT_PROMPT
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    stretch_max: float = 0.3
    gpu_resource: float = 0.0
    mapping: LabelMapping = field(default_factory=LabelMapping)
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)

    def __post_init__(self) -> None:
        labels = tuple((str(w), str(r)) for w, r in self.labels)
        object.__setattr__(self, "labels", labels)
        if self.region_px < 8:
            raise ValueError(f"VLMConfig.region_px must be >= 8 px, got {self.region_px}")
        if self.quicklook_px < 28:
            raise ValueError(f"VLMConfig.quicklook_px must be >= 28 px, got {self.quicklook_px}")
        if self.batch_size < 1:
            raise ValueError("VLMConfig.batch_size must be >= 1")
        if len(labels) < 2:
            raise ValueError("VLMConfig.labels needs at least two labels")
        bad = sorted({r for _, r in labels} - set(ROLES))
        if bad:
            raise ValueError(f"unknown label role(s) {bad}; valid roles: {', '.join(ROLES)}")
        words = [w for w, _ in labels]
        if len({layer_name(w) for w in words}) != len(words):
            raise ValueError(f"VLMConfig.labels has duplicate label words: {words}")
        if self.stretch_max <= 0:
            raise ValueError("VLMConfig.stretch_max must be > 0")
        if self.gpu_resource < 0:
            raise ValueError("VLMConfig.gpu_resource must be >= 0")

    @property
    def label_words(self) -> tuple[str, ...]:
        return tuple(w for w, _ in self.labels)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for _, r in self.labels)

    def scorer_spec(self) -> ScorerSpec:
        prompt = self.prompt.replace("{labels}", ", ".join(self.label_words))
        return ScorerSpec(self.model, self.label_words, prompt, self.device, self.dtype)


def _split_keywords(kw: dict[str, Any]) -> VLMConfig:
    """VLMConfig from flat keywords (its own, LabelMapping's and PhysicsConfig's fields)."""
    own = {f.name for f in fields(VLMConfig)} - {"mapping", "physics"}
    mapping_names = {f.name for f in fields(LabelMapping)}
    physics_names = {f.name for f in fields(PhysicsConfig)}
    unknown = sorted(set(kw) - own - mapping_names - physics_names - {"mapping", "physics"})
    if unknown:
        valid = sorted(own | mapping_names | physics_names)
        raise TypeError(f"unknown VLM prior option(s) {unknown}; valid: {', '.join(valid)}")
    mapping = kw.pop("mapping", None) or LabelMapping(
        **{k: kw.pop(k) for k in list(kw) if k in mapping_names}
    )
    physics = kw.pop("physics", None) or PhysicsConfig(
        **{k: kw.pop(k) for k in list(kw) if k in physics_names}
    )
    if isinstance(mapping, dict):
        mapping = LabelMapping(**mapping)
    if isinstance(physics, dict):
        physics = PhysicsConfig(**physics)
    return VLMConfig(mapping=mapping, physics=physics, **kw)


class VLMPrior(Prior):
    """Physics prior refined by a Qwen VL model's per-region label probabilities."""

    name = "vlm"

    def __init__(self, config: VLMConfig | None = None, **kw: Any) -> None:
        if config is not None and kw:
            raise TypeError("VLMPrior takes a VLMConfig or keywords, not both")
        self.config = config if config is not None else _split_keywords(dict(kw))
        if not self.config.model:
            raise ValueError(
                "the VLM prior needs a checkpoint: pass model=PATH_OR_ID (CLI: --prior vlm "
                "--vlm-model PATH_OR_ID), e.g. a folder with Qwen/Qwen2.5-VL-3B-Instruct"
            )
        check_vlm_installed()  # here, on the client, not first on a worker mid-run
        self.physics = PhysicsPrior(self.config.physics)
        self.layers = tuple(layer_name(w) for w in self.config.label_words)
        self.layer_descriptions = {
            layer_name(w): f"VLM probability (0..1) of label {w!r} (role {r}), per region "
            "interpolated to pixels"
            for w, r in self.config.labels
        }

    def params(self) -> dict[str, Any]:
        p = asdict(self.config)
        p["labels"] = [list(pair) for pair in self.config.labels]
        return p

    @property
    def halo(self) -> int:
        return max(self.physics.halo, region_halo(self.config.region_px))

    @property
    def resources(self) -> dict[str, float] | None:
        return {"GPU": self.config.gpu_resource} if self.config.gpu_resource > 0 else None

    def estimate_scene(
        self, sample: np.ndarray, bands: tuple[str, ...], scl: np.ndarray | None = None
    ) -> SceneParams:
        missing = [b for b in QUICKLOOK_BANDS if b not in bands]
        if missing:
            raise ValueError(
                f"the VLM prior needs the true-colour bands {QUICKLOOK_BANDS}; missing "
                f"{missing}; fix: load the cube with bands including B02, B03 and B04"
            )
        return self.physics.estimate_scene(sample, bands, scl)

    def sample_block(
        self,
        sample: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None = None,
    ) -> PriorBlock:
        return self.physics.sample_block(sample, bands, scene, scl)

    def block(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None = None,
    ) -> PriorBlock:
        """The block as a whole image (its own crop grid from its first pixel)."""
        return self.block_at(data, bands, scene, scl, whole_image(data))[0]

    def block_at(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams,
        scl: np.ndarray | None,
        location: BlockLocation,
    ) -> tuple[PriorBlock, np.ndarray]:
        physics = self.physics.block(data, bands, scene, scl)
        if location.stored is not None:
            probs = np.asarray(location.stored, dtype=np.float32)
            if probs.shape[1] != len(self.layers) or probs.shape[2:] != data.shape[2:]:
                raise ValueError(
                    f"stored prior layers have shape {probs.shape}, expected "
                    f"(T, {len(self.layers)}, {data.shape[2]}, {data.shape[3]}) for labels "
                    f"{self.config.label_words}"
                )
        else:
            probs = self.label_maps(data, bands, location)
        refined = apply_label_mapping(
            data,
            scene.airlight,
            scene.gamma,
            wavelengths_of(bands),
            physics,
            probs,
            self.config.roles,
            self.config.mapping,
            self.config.physics.t_min,
        )
        return refined, probs

    def region_probabilities(
        self, data: np.ndarray, bands: tuple[str, ...], location: BlockLocation
    ) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], tuple[int, int]]]:
        """Label probabilities of the global regions complete in this block.

        Returns (T, L, Ry, Rx) float32 probabilities, the (T, Ry, Rx) mask of regions that
        had data (others are NaN and were not scored) and the regions' global index spans.
        """
        cfg = self.config
        ny, nx = data.shape[2:]
        spans = (
            regions_inside(location.origin[0], ny, location.shape[0], cfg.region_px),
            regions_inside(location.origin[1], nx, location.shape[1], cfg.region_px),
        )
        rgb = quicklook_rgb(data, bands, cfg.stretch_max)
        valid = np.isfinite(data).any(axis=1)
        crops, has_data = crop_regions(
            rgb, location.origin, spans[0], spans[1], cfg.region_px, valid
        )
        probs = np.full(
            has_data.shape[:1] + (len(self.layers),) + has_data.shape[1:], np.nan, np.float32
        )
        if crops:
            scorer = get_scorer(cfg.scorer_spec())
            images = [_resize(c, cfg.quicklook_px) for c in crops]
            scored = scorer.score(images, cfg.batch_size)  # (N, L) in (t, i, j) order
            t_idx, i_idx, j_idx = np.nonzero(has_data)
            probs[t_idx, :, i_idx, j_idx] = scored
        log.debug("VLM prior scored %d crops for a block at %s", len(crops), location.origin)
        return probs, has_data, spans

    def label_maps(
        self, data: np.ndarray, bands: tuple[str, ...], location: BlockLocation
    ) -> np.ndarray:
        """(T, L, Y, X) float32 per-pixel label probabilities (NaN: no judgement)."""
        probs, has_data, spans = self.region_probabilities(data, bands, location)
        return interpolate_regions(
            probs,
            has_data,
            location.origin,
            (int(data.shape[2]), int(data.shape[3])),
            location.shape,
            spans,
            self.config.region_px,
        )


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    """Square uint8 crop resized to ``size`` px (PIL, antialiased bilinear)."""
    from PIL import Image

    if crop.shape[0] == size and crop.shape[1] == size:
        return crop
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


def attach_stored_prior(cube: Any, archive: Any, prior: Prior) -> Any:
    """``cube`` with ``prior.layers`` from an earlier run's archive, for ``restore`` to reuse.

    ``archive`` is a Zarr store path or an opened Dataset. The layers must cover exactly the
    cube's dates and grid (same time, y and x coordinates); ``restore`` then passes them to
    the prior instead of running the model.
    """
    import xarray as xr

    stored = archive if isinstance(archive, xr.Dataset) else xr.open_zarr(archive)
    missing = [n for n in prior.layers if n not in stored.data_vars]
    if not prior.layers or missing:
        raise ValueError(
            f"the archive holds no stored {prior.name!r} prior layers {missing or []}; "
            "fix: reuse an archive written by a run with the same prior and labels"
        )
    for dim in ("time", "y", "x"):
        a, b = cube[dim].values, stored[dim].values
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ValueError(
                f"the stored prior's {dim!r} coordinate does not match the cube's "
                f"({b.shape[0]} vs {a.shape[0]} values, or different values); fix: run the "
                "same search and grid as the run that wrote the archive"
            )
    layers = {
        n: (("time", "y", "x"), stored[n].transpose("time", "y", "x").data) for n in prior.layers
    }
    return cube.assign(layers)
