"""Real clouds for the quality benchmark: cloud and shadow fields taken from a real scene.

The simulator's clouds (:mod:`pipeline.cloud_simulator`) are thresholded fractal fields:
their opaque cores are flat and their edges are cut, while a real cloud's brightness
varies by a quarter inside and fades at its edge. A learned detector trained on real
clouds does not recognise them: on the real scene below, ``ukis-csmask``'s 4-band L2A
U-Net finds 96 % of the reference mask's cloud, but 0 % of a disk filled with that
cloud's own mean spectrum or with its pixels shuffled, 12-37 % of the simulator's thick
cores pasted onto the same scene, and 95 % of one of the scene's real clouds moved onto
clear ground. Cloud evidence judged on the simulator's clouds alone says nothing about a
learned source; these cases test every method on clouds with real structure.

The source is ``ukis-csmask``'s own test scene (``../shared/data/ukis-csmask-fixture``,
PROVENANCE.md beside it): 512 x 512 px of real Sentinel-2 at about 30 m (B02 B03 B04 B08
B11 B12, top-of-atmosphere reflectance) with a reference mask of cloud (18.9 %) and cloud
shadow (10.9 %). What is taken from it, per case:

1. A window of the scene (``stack`` size / 3 cells, so 10 m pixels map on 30 m cells),
   chosen by the case's seed among the windows whose contaminated share (cloud haze or
   shadow) lies within ``COVER_TOLERANCE`` of the case's cover (the nearest ones where
   none does), flipped by the seed.
2. The cloud's transmission, read from its brightness in the blue with the model every
   method assumes (``I = J t + A (1 - t)``): ``t = (A - C) / (A - S)``, with ``C`` the
   scene's blue, ``S`` its clear surface (the clear pixels' mean around it, a Gaussian of
   ``BACKGROUND_SIGMA`` cells) and ``A`` the cloud top (the ``CLOUD_TOP_QUANTILE``
   quantile of the reference cloud's reflectance, per band). Clouds are grey: one ``t``
   for every band.
3. The shadow's darkening per band, ``f = I / S`` on the reference mask's shadow pixels
   (at most 1), outside the cloud.
4. Both fields are brought to 10 m bilinearly and applied to the target's clear truth:
   ``I = (J f) t + A (1 - t)``. The other bands of a stack take ``A`` and ``f``
   interpolated in wavelength.

The masks a case is scored on: thick where ``t < THICK_BELOW`` (less than the simulator's
thinnest haze lets through), thin where ``t < THIN_BELOW`` (the simulator's edge of thin
cloud) and not thick, shadow where some band is darkened below ``THIN_BELOW`` of its
surface and not under thick cloud: the same classes as the simulator's, in its
``Simulation``.

The scene is top of atmosphere and the stacks are surface reflectance: over a thick
cloud the two are about the same, and the transmission and the shadow's darkening are
ratios, so the difference is small next to what a cloud does; a 30 m field brought to
10 m has no 10 m detail at its edges, which a real cloud at 10 m has.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..cloud_simulator import THIN_EDGE_T, THIN_T_MIN, Simulation, _rng
from ._stacks import shared_data_dir

#: ``kind`` of a real-cloud case (a case of the ``real_clouds`` scenario).
REAL_KIND = "real"
FIXTURE_DIR = "ukis-csmask-fixture"
FIXTURE_FILE = "sentinel2.npz"
#: Bands of the scene, in its order, and their centre wavelengths (nm).
FIXTURE_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
FIXTURE_NM = np.array([490.0, 560.0, 665.0, 842.0, 1610.0, 2190.0])
#: Reference mask values (the package's own test maps them so): 0 shadow, 4 cloud, else clear.
MASK_SHADOW, MASK_CLOUD = 0, 4
#: 10 m pixels per 30 m cell of the scene.
CELL = 3
#: Clear-surface background: Gaussian of this many cells over the clear pixels.
BACKGROUND_SIGMA = 12.0
#: Cloud top reflectance per band: this quantile of the reference cloud's pixels.
CLOUD_TOP_QUANTILE = 0.95
#: Cloud pixels are the reference mask's, grown by this many cells (its haze edge).
CLOUD_EDGE_CELLS = 2
#: A window's cover may differ from the case's by this much; else the nearest are taken.
COVER_TOLERANCE = 0.05
#: Windows are searched on a grid of this many cells.
WINDOW_STRIDE = 8
#: Class edges on the transmission (the simulator's: thin haze ends at its edge ``t``,
#: its thinnest haze lets ``THIN_T_MIN`` through; below that a cloud is opaque).
THIN_BELOW = THIN_EDGE_T
THICK_BELOW = THIN_T_MIN


class RealCloudsUnavailable(RuntimeError):
    """The real scene is not where the benchmark looks for it."""


def fixture_path() -> Path:
    return shared_data_dir() / FIXTURE_DIR / FIXTURE_FILE


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """The scene's (6, Y, X) float32 reflectance and (Y, X) reference mask."""
    path = fixture_path()
    if not path.exists():
        raise RealCloudsUnavailable(
            f"the real cloud scene is not at {path}; it ships in ../shared/data/{FIXTURE_DIR} "
            "(or set PHYVLM_SHARED_DATA to the folder that holds it)"
        )
    with np.load(path) as f:
        img = np.moveaxis(np.asarray(f["img"], dtype=np.float32), -1, 0)
        return np.ascontiguousarray(img), np.asarray(f["msk"])[..., 0]


@functools.lru_cache(maxsize=1)
def _fields() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The scene's cloud transmission (Y, X), shadow darkening (6, Y, X), shadow mask
    (Y, X) and cloud top (6,), all at 30 m."""
    scene, mask = _scene()
    img = scene.astype(np.float64)
    cloud = mask == MASK_CLOUD
    shadow = mask == MASK_SHADOW
    clear = ~cloud & ~shadow
    weight = ndimage.gaussian_filter(clear.astype(np.float64), BACKGROUND_SIGMA)
    surface = np.stack(
        [ndimage.gaussian_filter(band * clear, BACKGROUND_SIGMA) for band in img]
    ) / np.maximum(weight, 1e-6)
    top = np.quantile(img[:, cloud], CLOUD_TOP_QUANTILE, axis=1)
    grown = ndimage.binary_dilation(cloud, iterations=CLOUD_EDGE_CELLS)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (top[0] - img[0]) / (top[0] - surface[0])
    t = np.where(grown, np.clip(np.nan_to_num(t, nan=1.0), 0.0, 1.0), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        darkening = np.clip(np.nan_to_num(img / surface, nan=1.0), 0.0, 1.0)
    darkening = np.where(shadow[None] & (t >= THIN_BELOW)[None], darkening, 1.0)
    return t, darkening, shadow & (t >= THIN_BELOW), top


def _contaminated(t: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    return (t < THIN_BELOW) | shadow


def _pick_window(
    cells: tuple[int, int], cover: float, rng: np.random.Generator
) -> tuple[slice, slice]:
    t, _, shadow, _ = _fields()
    hy, hx = cells
    ny, nx = t.shape
    if hy > ny or hx > nx:
        raise ValueError(
            f"a real-cloud case needs at most {ny * CELL} x {nx * CELL} px (the scene's "
            f"{ny} x {nx} cells of 30 m); the stack has {hy * CELL} x {hx * CELL}"
        )
    # summed-area table of the contaminated cells: each window's share in O(1)
    bad = _contaminated(t, shadow).astype(np.float64)
    sat = np.pad(bad.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys = np.arange(0, ny - hy + 1, WINDOW_STRIDE)
    xs = np.arange(0, nx - hx + 1, WINDOW_STRIDE)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    share = (sat[y0 + hy, x0 + hx] - sat[y0, x0 + hx] - sat[y0 + hy, x0] + sat[y0, x0]) / float(
        hy * hx
    )
    gap = np.abs(share - cover).ravel()
    near = np.flatnonzero(gap <= COVER_TOLERANCE)
    if near.size == 0:
        near = np.argsort(gap)[:5]
    k = int(rng.choice(near))
    oy, ox = int(y0.ravel()[k]), int(x0.ravel()[k])
    return slice(oy, oy + hy), slice(ox, ox + hx)


def _to_10m(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(..., cy, cx) 30 m cells -> (..., Y, X) 10 m pixels, bilinear between cell centres."""
    ny, nx = shape
    cy, cx = field.shape[-2:]
    # pixel centres in cell units (cell i covers pixels [3i, 3i + 3))
    yy = (np.arange(ny) + 0.5) / CELL - 0.5
    xx = (np.arange(nx) + 0.5) / CELL - 0.5
    gy, gx = np.meshgrid(np.clip(yy, 0, cy - 1), np.clip(xx, 0, cx - 1), indexing="ij")
    flat = field.reshape(-1, cy, cx)
    out = np.stack([ndimage.map_coordinates(f, [gy, gx], order=1) for f in flat])
    return out.reshape(field.shape[:-2] + (ny, nx))


def _per_band(values: np.ndarray, wavelengths_nm: np.ndarray) -> np.ndarray:
    """(6, ...) at the scene's bands -> (B, ...) at the stack's, linear in wavelength."""
    wl = np.asarray(wavelengths_nm, dtype=np.float64)
    flat = values.reshape(len(FIXTURE_NM), -1)
    out = np.stack([np.interp(w, FIXTURE_NM, np.arange(len(FIXTURE_NM))) for w in wl])
    lo = np.floor(out).astype(int)
    hi = np.minimum(lo + 1, len(FIXTURE_NM) - 1)
    frac = (out - lo)[:, None]
    mixed = flat[lo] * (1 - frac) + flat[hi] * frac
    return mixed.reshape((len(wl),) + values.shape[1:])


def real_clouds(
    clear: np.ndarray,
    wavelengths_nm: np.ndarray,
    *,
    target: int,
    cover: float,
    seed: int,
) -> Simulation:
    """A real cloud and shadow field over date ``target`` of ``clear`` (T, B, Y, X) 10 m
    reflectance (module docstring); the other dates are left as they are. ``cover``: the
    share of the target's pixels under cloud, haze or shadow the window is chosen for."""
    clear = np.asarray(clear, dtype=np.float32)
    if clear.ndim != 4:
        raise ValueError(f"clear must be (T, B, Y, X), got {clear.shape}")
    ny, nx = clear.shape[2:]
    t_cells, dark_cells, _, top = _fields()
    rng = _rng(seed, 17)
    cells = (-(-ny // CELL), -(-nx // CELL))
    win = _pick_window(cells, float(cover), rng)
    t_win, dark_win = t_cells[win], dark_cells[(slice(None), *win)]
    for axis, flip in enumerate(rng.integers(0, 2, size=2).astype(bool)):
        if flip:
            t_win = np.flip(t_win, axis)
            dark_win = np.flip(dark_win, axis + 1)
    t = np.clip(_to_10m(t_win, (ny, nx)), 0.0, 1.0)
    darkening = _per_band(np.clip(_to_10m(dark_win, (ny, nx)), 0.0, 1.0), wavelengths_nm)
    airlight = _per_band(top, wavelengths_nm)
    j = clear[target].astype(np.float64) * darkening
    image = j * t[None] + airlight[:, None, None] * (1.0 - t[None])
    thick = t < THICK_BELOW
    thin = (t < THIN_BELOW) & ~thick
    # a pixel darkened beyond what counts as clear haze (the thin class's edge) is shadow
    shadow = (darkening.min(axis=0) < THIN_BELOW) & ~thick
    cloudy = clear.copy()
    cloudy[target] = image.astype(np.float32)
    return Simulation(
        cloudy=cloudy,
        thin=thin,
        thick=thick,
        shadow=shadow,
        transmission=t.astype(np.float32),
        target=int(target),
        kind=REAL_KIND,
        cover=float(cover),
        seed=int(seed),
        gamma=0.0,
        airlight=airlight.astype(np.float32),
    )


#: Priors whose cloud evidence is read on the real scene itself (one date: the stack
#: evidence has no other date to read it against, so the single-date sources are compared).
SCENE_PRIORS = ("physics", "physics+csmask")
#: Reference pixels within this many cells of a reference cloud or shadow are the mask's
#: edge, where a label is a matter of where the haze is said to end.
EDGE_CELLS = 5


def evidence_on_the_real_scene(priors: tuple[str, ...] = SCENE_PRIORS) -> dict[str, dict]:
    """How each prior's fused cloud evidence (``pipeline.restore.cloud_evidence``) reads
    the real scene's reference mask, at the scene's 30 m (the ``csmask`` source at scale 1):
    the share of the reference cloud and of its shadow read as not clear (p >= 0.5), and of
    the clear pixels, away from any cloud or shadow (``EDGE_CELLS``) and at their edge.
    A prior that cannot run here (the ``csmask`` extra missing) is reported with the reason.
    """
    import xarray as xr

    from ..priors import get_prior
    from ..priors._combined import CombinedPrior
    from ..priors._csmask import CSMaskSource
    from ..priors._evidence import EvidenceSource
    from ..priors._registry import evidence_source
    from ..restore import cloud_evidence

    img, mask = _scene()
    ny, nx = mask.shape
    cube = xr.Dataset(
        {b: (("time", "y", "x"), img[None, i]) for i, b in enumerate(FIXTURE_BANDS)},
        coords={
            "time": [np.datetime64("2020-01-01", "ns")],
            "y": 30.0 * np.arange(ny)[::-1],
            "x": 30.0 * np.arange(nx),
        },
    )
    cloud, shadow = mask == MASK_CLOUD, mask == MASK_SHADOW
    near = ndimage.binary_dilation(cloud | shadow, iterations=EDGE_CELLS)
    clear = ~cloud & ~shadow
    out: dict[str, dict] = {}
    for name in priors:
        base, *names = name.split("+")
        try:
            # the scene is at 30 m already: the csmask source reads it cell for pixel
            sources: list[EvidenceSource] = [
                CSMaskSource(scale=1) if s == "csmask" else evidence_source(s) for s in names
            ]
            prior = CombinedPrior(get_prior(base), sources) if sources else get_prior(base)
            p = cloud_evidence(cube, prior=prior)["cloud_probability"].values[0]
        except ImportError as err:
            out[name] = {"skipped": f"{err.name} is not installed (the csmask extra)"}
            continue
        flagged = np.nan_to_num(p, nan=0.0) >= 0.5
        out[name] = {
            "cloud_read_not_clear": float(flagged[cloud].mean()),
            "shadow_read_not_clear": float(flagged[shadow].mean()),
            "clear_read_not_clear": float(flagged[clear & ~near].mean()),
            "clear_edge_read_not_clear": float(flagged[clear & near].mean()),
        }
    return out


def format_scene_evidence(table: dict[str, dict]) -> list[str]:
    lines = [
        "Cloud evidence on a real scene with a reference mask (ukis-csmask's test scene, "
        "one date at 30 m; share read as not clear)",
        f"{'prior':<22}{'cloud':>8}{'shadow':>8}{'clear':>8}{'clear@edge':>12}",
    ]
    for name, row in table.items():
        if "skipped" in row:
            lines.append(f"{name:<22}not run: {row['skipped']}")
            continue
        lines.append(
            f"{name:<22}{row['cloud_read_not_clear']:>8.3f}{row['shadow_read_not_clear']:>8.3f}"
            f"{row['clear_read_not_clear']:>8.3f}{row['clear_edge_read_not_clear']:>12.3f}"
        )
    return lines
