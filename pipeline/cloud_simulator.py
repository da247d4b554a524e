"""Cloud simulator with known truth (DESIGN.md section 5): the quality benchmark's and every
run's self-validation (``pipeline.validation``).

A library module, not part of ``pipeline.bench``, so that a run never imports the benchmark.
Independent of ``pipeline.synthetic`` (not imported) so the benchmark does not grade the
method on its own generator. All parameters are fixed module constants; the only randomness
comes from ``numpy.random.default_rng([seed, stream])`` with a fixed stream id per quantity,
so a (clear, kind, cover, seed) tuple always yields the same simulation.

Model, applied to date ``target`` only (other dates are returned unchanged):

1. shadow: ``J_b <- J_b * f_b`` on the shadow mask, ``f_b`` from ``SHADOW_FACTOR_VIS`` (0.5,
   at 490 nm) falling linearly in wavelength to ``SHADOW_FACTOR_IR`` (0.3, at >= 1610 nm);
   the mask is a cloud-shaped mask moved by ``SHADOW_OFFSET_FRAC`` of the image size
   (periodic shift: spectral-synthesis fields are periodic, so the shape stays whole);
2. thin cloud: ``I_b = J_b t_b + A_b (1 - t_b)``, ``t_b = t_ref ** ((490 / lambda_b) ** gamma)``,
   gamma ~ U[0.5, 2] per seed, ``A_b = a0 * (490 / lambda_b) ** s`` with a0 ~ U[0.75, 0.95],
   s ~ U[0, 0.1], clipped to [0.7, 1.0] (bright, near grey, slightly bluer);
   ``t_ref`` is 1 on clear pixels, ramps 1 -> 0.95 over one standard deviation of the fractal
   field below the cover threshold (no seam), and falls from 0.95 to ``THIN_T_MIN`` (0.3)
   inside the cloud, so exactly ``cover`` of the pixels have ``t_ref < 0.95``;
3. thick cloud: opaque; the pixel is replaced by ``b_b * (1 + THICK_TEXTURE * n)`` clipped to
   [0.6, 1.1], b ~ U[0.75, 0.95] per seed with a +-2 % wavelength tilt, n a unit fractal
   texture; the mask is the fractal field thresholded at its ``1 - cover`` quantile.

``mixed`` uses one field for thin and thick (thick cores inside thin haze): total cloud
cover ``cover``, of which ``MIXED_THICK_SHARE`` (0.4) thick; the shadow is the thick mask
shifted, outside the thick cloud.

Masks returned: ``thick``; ``thin`` = (t_ref < 0.95) and not thick; ``shadow`` = shadow and
not thick. ``transmission`` is t_ref at 490 nm: 1 clear, [0.3, 0.95) thin, 0 under thick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

REF_NM = 490.0
THIN_BETA = 3.4  # power-law exponent of the thin-cloud field (smooth)
THICK_BETA = 3.0  # thick-cloud shapes (a little more detail)
TEXTURE_BETA = 2.2  # thick-cloud texture
THIN_T_MIN = 0.3
THIN_EDGE_T = 0.95
GAMMA_RANGE = (0.5, 2.0)
AIRLIGHT_RANGE = (0.75, 0.95)
AIRLIGHT_SLOPE_RANGE = (0.0, 0.1)
THICK_BRIGHT_RANGE = (0.75, 0.95)
THICK_TILT = 0.02
THICK_TEXTURE = 0.05
SHADOW_FACTOR_VIS = 0.5
SHADOW_FACTOR_IR = 0.3
SHADOW_OFFSET_FRAC = (0.12, 0.18)  # (dy, dx) as a fraction of (Y, X)
MIXED_THICK_SHARE = 0.4
KINDS = ("thin", "thick", "shadow", "mixed")

# fixed random stream ids
_S_PARAMS, _S_THIN, _S_THICK, _S_TEXTURE, _S_SHADOW = range(5)


@dataclass(frozen=True, eq=False)
class Simulation:
    cloudy: np.ndarray  # (T, B, Y, X) float32, only date `target` degraded
    thin: np.ndarray  # (Y, X) bool
    thick: np.ndarray  # (Y, X) bool
    shadow: np.ndarray  # (Y, X) bool
    transmission: np.ndarray  # (Y, X) float32, t at 490 nm
    target: int
    kind: str
    cover: float
    seed: int
    gamma: float
    airlight: np.ndarray  # (B,)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def fractal_field(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Periodic fractal noise by spectral synthesis: power spectrum ~ 1 / |k| ** beta.

    Returned with zero mean and unit standard deviation (float64)."""
    ny, nx = shape
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(ny), np.fft.fftfreq(nx), indexing="ij"))
    k[0, 0] = np.inf
    white = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    field = np.fft.ifft2(white * k ** (-beta / 2.0)).real
    field -= field.mean()
    sd = field.std()
    return field / sd if sd > 0 else field


def band_transmission(t_ref: np.ndarray, wavelengths_nm: np.ndarray, gamma: float) -> np.ndarray:
    """Angstrom law t_b = t_ref ** ((490 / lambda_b) ** gamma); returns (B, *t_ref.shape)."""
    expo = (REF_NM / np.asarray(wavelengths_nm, dtype="float64")) ** gamma
    t = np.clip(np.asarray(t_ref, dtype="float64"), 0.0, 1.0)
    return t[None] ** expo.reshape((-1,) + (1,) * t.ndim)


def boundary_mask(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` pixels (chessboard distance) of the edge of ``mask``, both sides."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return np.zeros_like(mask)
    st = np.ones((3, 3), bool)
    outer = binary_dilation(mask, st, iterations=width)
    inner = binary_erosion(mask, st, iterations=width, border_value=1)
    return outer & ~inner


def _threshold(field: np.ndarray, cover: float) -> float:
    return float(np.quantile(field, 1.0 - cover))


def _thin_t(field: np.ndarray, q: float, top: float) -> np.ndarray:
    """t_ref: 1 below q - 1, ramps to 0.95 at q, then down to THIN_T_MIN at ``top``."""
    t = 1.0 - (1.0 - THIN_EDGE_T) * np.clip(field - (q - 1.0), 0.0, 1.0)
    d = np.clip((field - q) / max(top - q, 1e-9), 0.0, 1.0)
    inside = field > q
    t[inside] = THIN_EDGE_T - 1e-4 - (THIN_EDGE_T - 1e-4 - THIN_T_MIN) * d[inside] ** 0.7
    return t


def simulate(
    clear: np.ndarray,
    wavelengths_nm: np.ndarray,
    *,
    target: int,
    kind: str,
    cover: float,
    seed: int,
) -> Simulation:
    clear = np.asarray(clear, dtype="float32")
    if clear.ndim != 4:
        raise ValueError(f"clear must be (T, B, Y, X), got {clear.shape}")
    wl = np.asarray(wavelengths_nm, dtype="float64")
    if wl.shape != (clear.shape[1],):
        raise ValueError("wavelengths_nm must have one entry per band")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if not 0.1 <= cover <= 0.9:
        raise ValueError("cover must be in [0.1, 0.9]")
    t_idx = int(target)
    if not -clear.shape[0] <= t_idx < clear.shape[0]:
        raise IndexError("target out of range")
    ny, nx = clear.shape[2:]

    prm = _rng(seed, _S_PARAMS)
    gamma = float(prm.uniform(*GAMMA_RANGE))
    a0 = prm.uniform(*AIRLIGHT_RANGE)
    slope = prm.uniform(*AIRLIGHT_SLOPE_RANGE)
    airlight = np.clip(a0 * (REF_NM / wl) ** slope, 0.7, 1.0)
    b0 = prm.uniform(*THICK_BRIGHT_RANGE)
    tilt = prm.uniform(-THICK_TILT, THICK_TILT)

    thin = np.zeros((ny, nx), bool)
    thick = np.zeros((ny, nx), bool)
    shadow = np.zeros((ny, nx), bool)
    t_ref = np.ones((ny, nx))
    dy, dx = round(SHADOW_OFFSET_FRAC[0] * ny), round(SHADOW_OFFSET_FRAC[1] * nx)

    if kind == "thin":
        f = fractal_field((ny, nx), THIN_BETA, _rng(seed, _S_THIN))
        t_ref = _thin_t(f, _threshold(f, cover), float(f.max()))
    elif kind == "thick":
        f = fractal_field((ny, nx), THICK_BETA, _rng(seed, _S_THICK))
        thick = f > _threshold(f, cover)
    elif kind == "shadow":
        f = fractal_field((ny, nx), THICK_BETA, _rng(seed, _S_SHADOW))
        shadow = np.roll(f > _threshold(f, cover), (dy, dx), axis=(0, 1))
    else:  # mixed
        f = fractal_field((ny, nx), THICK_BETA, _rng(seed, _S_THICK))
        q_thick = _threshold(f, MIXED_THICK_SHARE * cover)
        thick = f > q_thick
        t_ref = _thin_t(f, _threshold(f, cover), q_thick)
        shadow = np.roll(thick, (dy, dx), axis=(0, 1)) & ~thick

    thin = (t_ref < THIN_EDGE_T) & ~thick
    j = clear[t_idx].astype("float64")
    if shadow.any():
        frac = np.clip((wl - REF_NM) / (1610.0 - REF_NM), 0.0, 1.0)
        factor = SHADOW_FACTOR_VIS + (SHADOW_FACTOR_IR - SHADOW_FACTOR_VIS) * frac
        j = np.where(shadow[None], j * factor[:, None, None], j)
    if kind in ("thin", "mixed"):
        tb = band_transmission(t_ref, wl, gamma)
        j = j * tb + airlight[:, None, None] * (1.0 - tb)
    if thick.any():
        tex = fractal_field((ny, nx), TEXTURE_BETA, _rng(seed, _S_TEXTURE))
        bright = b0 * (1.0 + tilt * (REF_NM / wl - 1.0))
        cloud = np.clip(bright[:, None, None] * (1.0 + THICK_TEXTURE * tex[None]), 0.6, 1.1)
        j = np.where(thick[None], cloud, j)
        t_ref = np.where(thick, 0.0, t_ref)

    cloudy = clear.copy()
    cloudy[t_idx] = j.astype("float32")
    return Simulation(
        cloudy=cloudy,
        thin=thin,
        thick=thick,
        shadow=shadow,
        transmission=t_ref.astype("float32"),
        target=t_idx,
        kind=kind,
        cover=float(cover),
        seed=int(seed),
        gamma=gamma,
        airlight=airlight.astype("float32"),
    )
