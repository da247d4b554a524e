"""Pure numpy parts of the VLM prior: quicklook crops, the global crop grid, the judgement->physics map.

Nothing here touches torch or transformers, so every step is unit-tested on tiny arrays.

Crop grid
---------
Regions are squares of ``region_px`` pixels on a grid aligned to the array's GLOBAL pixel
indices: region (i, j) covers rows [i S, (i+1) S) and columns [j S, (j+1) S) of the whole
array (S = region_px), truncated at the array's far edges. A block scores only the regions
that lie entirely inside it (or are truncated only by the array edge), so a region's crop,
hence its label probabilities, are the same whichever chunk scores it.

Region maps to pixels
---------------------
Each region's probabilities sit at its nominal centre ((S - 1) / 2 px from its corner);
pixels between centres get the bilinear interpolation of the four surrounding regions, so
the per-pixel maps are continuous (no block edges at region borders). Beyond the first/last
centre of the array the edge value is held. Regions without any observation (all-NaN crops)
carry no judgement: they are skipped and interpolation re-normalises over the neighbours
that have one (NaN where none has). Interpolating a pixel needs regions up to 1.5 S + 1 px
away, which is the halo the VLM prior asks for.

Judgement -> physics (``apply_label_mapping``)
----------------------------------------------
Label probabilities are summed per role (clear, thin, thick, shadow, bright) and mixed with
the physics prior's block (t_phys, c_phys) as expectations over the roles:

=========  ==================================  ================================  ======
role       transmission t_ref                  confidence c                      gamma
=========  ==================================  ================================  ======
clear      t_phys (near 1 where truly clear)   max(c_phys, clear_confidence)     scene
thin       t_phys (trust the inversion)        c_phys                            scene
thick      min(t_phys, thick_transmission)     min(c_phys, thick_confidence)     thick_gamma (grey)
shadow     1 (shadow is not haze: no dehaze)   min(c_phys, shadow_confidence)    scene
bright     1 (snow/sand/roof: no dehazing)     max(c_phys, bright_confidence)    scene
=========  ==================================  ================================  ======

so thick cloud hands the pixel to the temporal reference (low c), thin cloud keeps the
physical inversion, bright surfaces keep the observed value with high confidence (t = 1
gives J = I) and shadow is left undehazed with a low confidence, so a clear reference wins
where one exists (the fusion step's temporal shadow test adds to that). The result is
blended with the physics prior by ``vlm_weight`` (0: physics only, 1: the table above), per
pixel t_b = t_ref ** ((490 / lambda_b) ** gamma) with the per-pixel gamma, floored as the
physics prior floors it (``floor_transmission``: t_b >= 1 - I_b / A_b, so the inversion never
gives a negative surface; a dark pixel under a thick-cloud judgement otherwise would), then
J = invert(I, A, t_b). The transmission layer t_ref and the confidence keep the judgement:
the floor only stops the inverted surface from going negative. The airlight A stays the
scene's (one cloud spectrum per date).
Pixels without an observation keep confidence 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernels import floor_transmission, invert
from ..kernels._common import angstrom_exponent
from ._base import PriorBlock

#: Physical roles a label can play; each label of the prompt maps to one.
ROLES = ("clear", "thin", "thick", "shadow", "bright")

#: Default label words (what the model is asked to answer) and their roles.
DEFAULT_LABELS: tuple[tuple[str, str], ...] = (
    ("clear", "clear"),
    ("thin cloud", "thin"),
    ("thick cloud", "thick"),
    ("shadow", "shadow"),
    ("bright surface", "bright"),
)

#: Bands of the true-colour quicklook (red, green, blue).
QUICKLOOK_BANDS = ("B04", "B03", "B02")

F32 = np.float32


@dataclass(frozen=True)
class LabelMapping:
    """Parameters of the judgement -> physics map (module docstring, table).

    vlm_weight: 0 keeps the physics prior, 1 applies the table fully.
    clear_confidence: confidence floor where the model sees a clear surface.
    thick_confidence: confidence ceiling under thick cloud (the reference takes over).
    thick_transmission: transmission ceiling under thick cloud.
    thick_gamma: Angstrom exponent of thick (water-droplet, grey) cloud.
    shadow_confidence: confidence ceiling in cloud shadow.
    bright_confidence: confidence floor on bright surfaces (observed value kept).
    """

    vlm_weight: float = 1.0
    clear_confidence: float = 0.9
    thick_confidence: float = 0.05
    thick_transmission: float = 0.1
    thick_gamma: float = 0.0
    shadow_confidence: float = 0.3
    bright_confidence: float = 0.95

    def __post_init__(self) -> None:
        for name in (
            "vlm_weight",
            "clear_confidence",
            "thick_confidence",
            "thick_transmission",
            "shadow_confidence",
            "bright_confidence",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LabelMapping.{name} must be in [0, 1], got {value}")
        if self.thick_gamma < 0:
            raise ValueError(f"LabelMapping.thick_gamma must be >= 0, got {self.thick_gamma}")


# --------------------------------------------------------------------------- quicklook


def quicklook_rgb(
    data: np.ndarray, bands: tuple[str, ...], stretch_max: float = 0.3, gamma: float = 2.2
) -> np.ndarray:
    """(T, Y, X, 3) uint8 true-colour quicklook from a (T, B, Y, X) reflectance block.

    Stretch: reflectance 0..``stretch_max`` mapped linearly to 0..1 (brighter saturates to
    white, as thick cloud looks to a person), then display gamma 1/``gamma``, then 0..255.
    NaN (no observation) is black.
    """
    missing = [b for b in QUICKLOOK_BANDS if b not in bands]
    if missing:
        raise ValueError(
            f"the VLM prior needs the true-colour bands {QUICKLOOK_BANDS} for its quicklooks; "
            f"missing {missing}; fix: load the cube with bands including B02, B03 and B04"
        )
    idx = [bands.index(b) for b in QUICKLOOK_BANDS]
    rgb = np.moveaxis(np.asarray(data, dtype=np.float32)[:, idx], 1, -1)
    scaled = np.clip(np.nan_to_num(rgb / stretch_max, nan=0.0), 0.0, 1.0) ** (1.0 / gamma)
    return np.round(scaled * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- crop grid


def region_halo(region_px: int) -> int:
    """Pixels a block must read around its output to interpolate between region centres."""
    return math.ceil(1.5 * region_px) + 1


def regions_inside(origin: int, size: int, total: int, region_px: int) -> tuple[int, int]:
    """[first, stop) indices of the global regions (on one axis) complete inside a block.

    The block covers global pixels [origin, origin + size) of an axis of ``total`` pixels; a
    region is complete when it lies inside the block or is cut only by the array's end.
    """
    first = -(-origin // region_px)
    end = origin + size
    stop = -(-total // region_px) if end >= total else end // region_px
    return first, max(first, stop)


def crop_regions(
    rgb: np.ndarray,
    origin: tuple[int, int],
    span_y: tuple[int, int],
    span_x: tuple[int, int],
    region_px: int,
    valid: np.ndarray,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Crops (region_px square, black-padded where the array ends) of the regions to score.

    rgb (T, Y, X, 3) uint8 and valid (T, Y, X) bool for the block at ``origin``. Returns the
    crops of regions with at least one valid pixel, in (t, i, j) order, and a (T, Ry, Rx) bool
    array saying which regions they are.
    """
    ntime = rgb.shape[0]
    ny, nx = span_y[1] - span_y[0], span_x[1] - span_x[0]
    has_data = np.zeros((ntime, ny, nx), dtype=bool)
    crops: list[np.ndarray] = []
    for t in range(ntime):
        for i in range(ny):
            y0 = (span_y[0] + i) * region_px - origin[0]
            for j in range(nx):
                x0 = (span_x[0] + j) * region_px - origin[1]
                window = (slice(y0, y0 + region_px), slice(x0, x0 + region_px))
                if not valid[t][window].any():
                    continue
                crop = np.zeros((region_px, region_px, 3), dtype=np.uint8)
                part = rgb[t][window]
                crop[: part.shape[0], : part.shape[1]] = part
                crops.append(crop)
                has_data[t, i, j] = True
    return crops, has_data


def _axis_weights(
    origin: int, size: int, span: tuple[int, int], total_regions: int, region_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (lower index, upper index, upper weight) into the block's region span."""
    pix = origin + np.arange(size, dtype=np.float64)
    u = (pix - (region_px - 1) / 2.0) / region_px
    u = np.clip(u, 0.0, max(total_regions - 1, 0))  # hold the edge value beyond the centres
    lo = np.floor(u).astype(np.int64)
    w = u - lo
    hi = np.minimum(lo + 1, total_regions - 1)
    # Pixels whose regions this block did not score lie in its halo (trimmed later): clamp.
    lo = np.clip(lo - span[0], 0, span[1] - span[0] - 1)
    hi = np.clip(hi - span[0], 0, span[1] - span[0] - 1)
    return lo, hi, w.astype(np.float32)


def interpolate_regions(
    region_values: np.ndarray,
    has_value: np.ndarray,
    origin: tuple[int, int],
    block_shape: tuple[int, int],
    total_shape: tuple[int, int],
    spans: tuple[tuple[int, int], tuple[int, int]],
    region_px: int,
) -> np.ndarray:
    """Bilinear per-pixel map (T, L, Y, X) float32 of region-centre values (T, L, Ry, Rx).

    Regions where ``has_value`` (T, Ry, Rx) is False do not contribute; the weights of the
    others are re-normalised (NaN where no neighbour has a value).
    """
    ntime, nlab = region_values.shape[:2]
    out_shape = (ntime, nlab) + tuple(block_shape)
    if region_values.shape[2] == 0 or region_values.shape[3] == 0:
        return np.full(out_shape, np.nan, dtype=F32)
    tot_y = -(-total_shape[0] // region_px)
    tot_x = -(-total_shape[1] // region_px)
    ylo, yhi, wy = _axis_weights(origin[0], block_shape[0], spans[0], tot_y, region_px)
    xlo, xhi, wx = _axis_weights(origin[1], block_shape[1], spans[1], tot_x, region_px)
    mask = has_value.astype(F32)[:, None]
    vals = np.where(has_value[:, None], region_values, 0.0).astype(F32)

    def along_y(a: np.ndarray) -> np.ndarray:
        return a[:, :, ylo] * (1 - wy)[:, None] + a[:, :, yhi] * wy[:, None]

    def along_x(a: np.ndarray) -> np.ndarray:
        return a[..., xlo] * (1 - wx) + a[..., xhi] * wx

    num = along_x(along_y(vals))
    den = along_x(along_y(mask))
    with np.errstate(invalid="ignore", divide="ignore"):
        res = np.where(den > 1e-6, num / np.maximum(den, 1e-12), np.nan)
    return res.astype(F32)


# --------------------------------------------------------------------------- mapping


def role_probabilities(label_probs: np.ndarray, roles: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Sum (T, L, ...) label probabilities per role -> role -> (T, ...) (zeros for absent roles)."""
    out = {}
    for role in ROLES:
        idx = [k for k, r in enumerate(roles) if r == role]
        if idx:
            out[role] = label_probs[:, idx].sum(axis=1)
        else:
            out[role] = np.zeros_like(label_probs[:, 0])
    return out


def apply_label_mapping(
    data: np.ndarray,
    airlight: np.ndarray,
    gamma: np.ndarray,
    wavelengths: np.ndarray,
    physics: PriorBlock,
    label_probs: np.ndarray,
    roles: tuple[str, ...],
    mapping: LabelMapping,
    t_min: float,
) -> PriorBlock:
    """Refine the physics prior's block with per-pixel (T, L, Y, X) label probabilities.

    See the module docstring for the table. NaN probabilities (no judgement) leave the
    physics prior unchanged at that pixel.
    """
    p = role_probabilities(np.asarray(label_probs, dtype=np.float64), roles)
    known = np.isfinite(p["clear"])
    p = {k: np.where(known, v, 0.0) for k, v in p.items()}
    w = mapping.vlm_weight * known
    t_phys = np.asarray(physics.transmission, dtype=np.float64)
    c_phys = np.asarray(physics.confidence, dtype=np.float64)

    t_vlm = (
        (p["clear"] + p["thin"]) * t_phys
        + p["thick"] * np.minimum(t_phys, mapping.thick_transmission)
        + (p["shadow"] + p["bright"]) * 1.0
    )
    c_vlm = (
        p["clear"] * np.maximum(c_phys, mapping.clear_confidence)
        + p["thin"] * c_phys
        + p["thick"] * np.minimum(c_phys, mapping.thick_confidence)
        + p["shadow"] * np.minimum(c_phys, mapping.shadow_confidence)
        + p["bright"] * np.maximum(c_phys, mapping.bright_confidence)
    )
    t_ref = np.clip((1 - w) * t_phys + w * t_vlm, 0.0, 1.0)
    conf = np.clip((1 - w) * c_phys + w * c_vlm, 0.0, 1.0)
    wt = w * p["thick"]
    scene_gamma = np.asarray(gamma, dtype=np.float64)[:, None, None]
    gamma_px = (1 - wt) * scene_gamma + wt * mapping.thick_gamma
    expo = np.moveaxis(angstrom_exponent(wavelengths, gamma_px), -1, 1)  # (T, B, Y, X)
    with np.errstate(invalid="ignore"):
        t_band = np.ascontiguousarray(t_ref[:, None] ** expo, dtype=F32)
    floor_transmission(data, airlight, t_band, out=t_band)  # in place, as the physics prior
    surface = invert(data, airlight, t_band, t_min)
    observed = np.isfinite(surface).any(axis=1)
    conf = np.where(observed, np.nan_to_num(conf, nan=0.0), 0.0)
    return PriorBlock(t_ref.astype(F32), t_band, conf.astype(F32), surface)
