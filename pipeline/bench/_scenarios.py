"""Scenarios of the quality benchmark: what a stack's OTHER dates look like (issue 11).

The cloud simulator (:mod:`pipeline.cloud_simulator`) degrades the target date; a scenario
changes the rest of the stack, where the method finds its temporal references and its
evidence of what is clear. Each scenario is a deterministic transformation of a :class:`BenchStack`
(fixed module constants, recorded in the JSON; randomness only from
``numpy.random.default_rng([SCENARIO_SEED, SCENARIO_STREAMS, stream])``, independent of the
cloud simulator's streams):

``none``
    The stack as it is.
``hazy_neighbours``
    The ``HAZE_NEIGHBOURS`` dates nearest the target in time are under scene-wide haze:
    ``I_b = J_b t_b + A_b (1 - t_b)`` with t at 490 nm drawn in ``HAZE_T_RANGE`` per date
    plus a smooth spatial variation of ``HAZE_T_VARIATION`` (one standard deviation),
    Angstrom exponent ``HAZE_GAMMA`` and a grey-blue airlight
    ``A_b = HAZE_AIRLIGHT * (490 / lambda_b) ** HAZE_AIRLIGHT_SLOPE``. Blue roughly doubles
    on a dark surface (0.05 -> ~0.105), as on the issue's real hazy date. Per band this is
    an affine map of the surface, which a per-band gain/offset harmonisation absorbs.
    Their SCL is left as it was: Sen2Cor does not flag such haze either.
``cloudy_neighbours``
    The ``CLOUD_NEIGHBOURS`` nearest dates are under thick cloud over the whole scene: t
    about ``CLOUD_T`` (grey, gamma 0), airlight ``CLOUD_AIRLIGHT`` with a slight texture;
    SCL 9 (cloud, high probability). On a two-date stack (the real Austria crop) no
    clear reference remains: the target's opaque-cloud pixels then have no observation of
    their surface, count as unrecoverable (as no-data does: not scored, and a method must
    flag them or they count as invented), and the thick-cloud figures are absent (n/a).
``snow_melt``
    The ``SNOW_NEIGHBOURS`` nearest dates carry snow over a smooth region of about
    ``SNOW_COVER`` of the scene (partial cover at its edge), with the snow spectrum
    ``SNOW_SPECTRUM`` (bright visible, lower NIR, dark SWIR); the target has none. The
    target's clear pixels are darker than those references (what the issue saw read as
    cloud shadow). SCL 11 where the snow fraction exceeds 0.5.
``harvest``
    Rectangular fields covering about ``HARVEST_COVER`` of the scene, placed where the
    target and its nearest other date are both vegetated (NDVI), become bare soil
    (``SOIL_SPECTRUM``) on the target's truth: red up most, NIR down. The other dates keep
    their vegetation, so every reference is out of date there.
``real_clouds``
    The other dates as they are; the target's clouds and shadows are not the simulator's
    but real ones, taken from a real Sentinel-2 scene (``pipeline.bench._real_clouds``: the
    simulator's flat, cut-edged thick cores are not what a detector trained on real clouds
    sees). Its cases have the kind ``real`` and the covers ``QualityConfig.real_covers``.

Neighbour dates: the other dates ordered by time distance to the target (ties: the
earlier one). A scenario keeps no-data as no-data and records what it did in the stack:
``cloud`` (scene-wide haze/cloud), ``snow``, ``scl``, ``scene_wide`` (the dates under
scene-wide haze or cloud) and ``scenario_mask`` (the snow region or the fields).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from ..cloud_simulator import REF_NM, band_transmission, fractal_field
from ._stacks import BenchStack

log = logging.getLogger(__name__)

SCENARIOS: tuple[str, ...] = (
    "none",
    "hazy_neighbours",
    "cloudy_neighbours",
    "snow_melt",
    "harvest",
    "real_clouds",
)
SCENARIO_SEED = 0

HAZE_NEIGHBOURS = 2
HAZE_T_RANGE = (0.70, 0.75)  # t at 490 nm, per date
HAZE_T_VARIATION = 0.02  # smooth spatial variation of t (one standard deviation)
HAZE_T_CLIP = (0.6, 0.85)
HAZE_GAMMA = 1.3
HAZE_AIRLIGHT = 0.25  # A at 490 nm
HAZE_AIRLIGHT_SLOPE = 0.5  # A_b = HAZE_AIRLIGHT * (490 / lambda_b) ** slope (grey-blue)
HAZE_BETA = 3.4

CLOUD_NEIGHBOURS = 2
CLOUD_T = 0.05  # t of the thick cloud (all bands: water droplets are grey)
CLOUD_T_VARIATION = 0.02
CLOUD_T_CLIP = (0.0, 0.1)
CLOUD_AIRLIGHT = 0.65
CLOUD_TEXTURE = 0.05
CLOUD_BETA = 2.2

SNOW_NEIGHBOURS = 2
SNOW_COVER = 0.4  # share of the scene under snow (fraction > 0)
SNOW_EDGE = 0.5  # the snow fraction ramps 0 -> 1 over this many field standard deviations
SNOW_BETA = 3.4
SNOW_TEXTURE = 0.02
#: (nm, reflectance) nodes of fresh-to-ageing snow, interpolated at the stack's bands
SNOW_SPECTRUM = (
    (443.0, 0.86),
    (490.0, 0.85),
    (560.0, 0.83),
    (665.0, 0.80),
    (705.0, 0.78),
    (740.0, 0.76),
    (783.0, 0.73),
    (842.0, 0.70),
    (865.0, 0.68),
    (945.0, 0.55),
    (1610.0, 0.10),
    (2190.0, 0.07),
)

HARVEST_COVER = 0.15
HARVEST_SIDE = (0.08, 0.2)  # field side, fraction of the image side
HARVEST_CANDIDATES = 400
HARVEST_MIN_NDVI = 0.4  # a field is placed only where both dates are this green
HARVEST_BRIGHTNESS = (0.85, 1.15)  # per-field factor on the soil spectrum
HARVEST_TEXTURE = 0.03
#: (nm, reflectance) nodes of dry bare soil after harvest
SOIL_SPECTRUM = (
    (443.0, 0.07),
    (490.0, 0.08),
    (560.0, 0.11),
    (665.0, 0.15),
    (705.0, 0.17),
    (740.0, 0.18),
    (783.0, 0.19),
    (842.0, 0.21),
    (865.0, 0.22),
    (945.0, 0.23),
    (1610.0, 0.31),
    (2190.0, 0.26),
)

#: SCL classes (DESIGN.md section 3)
SCL_CLOUD_HIGH = 9
SCL_SNOW = 11

_S_HAZE, _S_CLOUD, _S_SNOW, _S_HARVEST = range(4)
#: Entropy word that sets the scenarios' random streams apart from the cloud simulator's
#: (``default_rng([seed, stream])`` there, with small stream ids). Without it the snow
#: region of ``snow_melt`` was the simulator's thick-cloud field of seed 0 (both
#: ``[0, 2]``): the snow lay wholly under the target's simulated cloud, so no clear pixel
#: of the target ever showed that its surface differs from the snowy neighbours'.
SCENARIO_STREAMS = 0x5CE7A210


def _rng(stream: int) -> np.random.Generator:
    return np.random.default_rng([SCENARIO_SEED, SCENARIO_STREAMS, stream])


def scenario_parameters() -> dict[str, Any]:
    """The scenarios' fixed constants, for the record."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, tuple) else v

    return {n: plain(v) for n, v in globals().items() if n.isupper() and not n.startswith("_")}


def check_scenarios(names: tuple[str, ...]) -> None:
    bad = sorted(set(names) - set(SCENARIOS))
    if bad:
        raise ValueError(f"unknown scenario(s) {bad}; valid: {', '.join(SCENARIOS)}")


def nearest_dates(days: np.ndarray, target: int, n: int) -> list[int]:
    """The ``n`` dates other than ``target`` nearest to it in time (ties: the earlier one)."""
    days = np.asarray(days, dtype="float64")
    others = [i for i in range(days.size) if i != target]
    others.sort(key=lambda i: (abs(days[i] - days[target]), i))
    return others[:n]


def spectrum(nodes: tuple[tuple[float, float], ...], wavelengths_nm: np.ndarray) -> np.ndarray:
    """Reflectance of a tabulated spectrum at the band wavelengths (linear interpolation)."""
    nm, refl = np.array(nodes, dtype="float64").T
    return np.interp(np.asarray(wavelengths_nm, dtype="float64"), nm, refl)


def _unit_field(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    return fractal_field(shape, beta, rng)


def _airlight_model(
    j: np.ndarray, t_ref: np.ndarray, wl: np.ndarray, gamma: float, airlight: np.ndarray
) -> np.ndarray:
    """I_b = J_b t_b + A_b (1 - t_b), t_b from the Angstrom law; j (B, Y, X)."""
    tb = band_transmission(t_ref, wl, gamma)
    a = airlight.reshape((-1,) + (1,) * t_ref.ndim) if airlight.ndim == 1 else airlight
    return (j.astype("float64") * tb + a * (1.0 - tb)).astype("float32")


def _with_cloud(
    stack: BenchStack, dates: list[int], scl_class: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    cloud = stack.cloud_mask().copy()
    finite = np.isfinite(stack.data).all(axis=1)
    scl = None if stack.scl is None else stack.scl.copy()
    for d in dates:
        cloud[d] = finite[d]
        if scl is not None and scl_class is not None:
            scl[d] = np.where(finite[d], scl_class, scl[d])
    return cloud, scl


def hazy_neighbours(stack: BenchStack) -> BenchStack:
    dates = nearest_dates(stack.days, stack.target, HAZE_NEIGHBOURS)
    rng = _rng(_S_HAZE)
    ny, nx = stack.data.shape[2:]
    wl = stack.wavelengths
    airlight = HAZE_AIRLIGHT * (REF_NM / wl) ** HAZE_AIRLIGHT_SLOPE
    data = stack.data.copy()
    for d in dates:
        t_mean = rng.uniform(*HAZE_T_RANGE)
        t_ref = np.clip(
            t_mean + HAZE_T_VARIATION * _unit_field((ny, nx), HAZE_BETA, rng), *HAZE_T_CLIP
        )
        data[d] = _airlight_model(data[d], t_ref, wl, HAZE_GAMMA, airlight)
    cloud, scl = _with_cloud(stack, dates, None)  # Sen2Cor's classes miss such haze
    return replace(
        stack, data=data, cloud=cloud, scl=scl, scenario="hazy_neighbours", scene_wide=tuple(dates)
    )


def cloudy_neighbours(stack: BenchStack) -> BenchStack:
    dates = nearest_dates(stack.days, stack.target, CLOUD_NEIGHBOURS)
    rng = _rng(_S_CLOUD)
    ny, nx = stack.data.shape[2:]
    wl = stack.wavelengths
    data = stack.data.copy()
    for d in dates:
        t_ref = np.clip(
            CLOUD_T + CLOUD_T_VARIATION * _unit_field((ny, nx), CLOUD_BETA, rng), *CLOUD_T_CLIP
        )
        texture = 1.0 + CLOUD_TEXTURE * _unit_field((ny, nx), CLOUD_BETA, rng)
        airlight = np.full(wl.shape, CLOUD_AIRLIGHT)[:, None, None] * texture[None]
        data[d] = _airlight_model(data[d], t_ref, wl, 0.0, airlight)
    cloud, scl = _with_cloud(stack, dates, SCL_CLOUD_HIGH)
    opaque = np.zeros_like(cloud) if stack.opaque is None else stack.opaque.copy()
    opaque[dates] = cloud[dates]
    return replace(
        stack,
        data=data,
        cloud=cloud,
        opaque=opaque,
        scl=scl,
        scenario="cloudy_neighbours",
        scene_wide=tuple(dates),
    )


def snow_fraction(shape: tuple[int, int]) -> np.ndarray:
    """(Y, X) snow fraction 0..1: a smooth region, > 0 on ``SNOW_COVER`` of the pixels."""
    field = _unit_field(shape, SNOW_BETA, _rng(_S_SNOW))
    q = float(np.quantile(field, 1.0 - SNOW_COVER))
    return np.clip((field - q) / SNOW_EDGE, 0.0, 1.0)


def snow_melt(stack: BenchStack) -> BenchStack:
    """Snow on the nearest dates (mixed into the observation by its fraction; under a
    generator cloud the pixel becomes a cloud/snow mix, not a reference anyway). Snow the
    target lacks hides its surface: on a two-date stack the target's opaque pixels under
    the snow region are unrecoverable."""
    dates = nearest_dates(stack.days, stack.target, SNOW_NEIGHBOURS)
    ny, nx = stack.data.shape[2:]
    frac = snow_fraction((ny, nx))
    texture = 1.0 + SNOW_TEXTURE * _unit_field((ny, nx), SNOW_BETA, _rng(_S_SNOW + 10))
    white = spectrum(SNOW_SPECTRUM, stack.wavelengths)[:, None, None] * texture[None]
    data = stack.data.copy()
    snow = stack.snow_mask().copy()
    scl = None if stack.scl is None else stack.scl.copy()
    for d in dates:
        mixed = (1.0 - frac[None]) * data[d].astype("float64") + frac[None] * white
        data[d] = np.where(np.isfinite(data[d]), mixed, np.nan).astype("float32")
        snow[d] |= frac > 0
        if scl is not None:
            scl[d] = np.where((frac > 0.5) & (scl[d] != 0), SCL_SNOW, scl[d])
    return replace(
        stack, data=data, snow=snow, scl=scl, scenario="snow_melt", scenario_mask=frac > 0
    )


def _red_nir(wl: np.ndarray) -> tuple[int, int]:
    red = int(np.argmin(np.abs(wl - 665.0)))
    nir = int(np.argmin(np.abs(wl - 842.0)))
    if not 620.0 <= wl[red] <= 700.0 or not 740.0 <= wl[nir] <= 900.0:
        raise ValueError(
            "the harvest scenario needs a red band (B04) and a near-infrared band (B08 or B8A) "
            f"to find vegetated fields; the stack has bands at {wl.tolist()} nm"
        )
    return red, nir


def _ndvi(img: np.ndarray, red: int, nir: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (img[nir] - img[red]) / (img[nir] + img[red])


def harvest_fields(stack: BenchStack) -> np.ndarray:
    """(Y, X) bool: non-overlapping rectangles, about ``HARVEST_COVER`` of the scene, where
    the target and its nearest other date are both vegetated (the greenest candidates)."""
    red, nir = _red_nir(stack.wavelengths)
    ny, nx = stack.data.shape[2:]
    green = _ndvi(stack.data[stack.target], red, nir)
    for d in nearest_dates(stack.days, stack.target, 1):
        green = (
            np.fmin(green, _ndvi(stack.data[d], red, nir)) if np.isfinite(green).any() else green
        )
    green = np.where(np.isfinite(green), green, -1.0)
    rng = _rng(_S_HARVEST)
    lo, hi = HARVEST_SIDE
    candidates = []
    for _ in range(HARVEST_CANDIDATES):
        h = int(rng.integers(max(2, round(lo * ny)), max(3, round(hi * ny)) + 1))
        w = int(rng.integers(max(2, round(lo * nx)), max(3, round(hi * nx)) + 1))
        y0 = int(rng.integers(0, ny - h + 1))
        x0 = int(rng.integers(0, nx - w + 1))
        candidates.append((float(green[y0 : y0 + h, x0 : x0 + w].mean()), y0, x0, h, w))
    candidates.sort(key=lambda c: -c[0])
    fields = np.zeros((ny, nx), bool)
    for score, y0, x0, h, w in candidates:
        if fields.mean() >= HARVEST_COVER or score < HARVEST_MIN_NDVI:
            break
        # one pixel of headland between fields
        if fields[max(0, y0 - 1) : y0 + h + 1, max(0, x0 - 1) : x0 + w + 1].any():
            continue
        fields[y0 : y0 + h, x0 : x0 + w] = True
    if fields.mean() < HARVEST_COVER:
        log.warning(
            "%s: only %.0f %% of the scene is vegetated fields to harvest (aimed at %.0f %%)",
            stack.name,
            100 * fields.mean(),
            100 * HARVEST_COVER,
        )
    return fields


def harvest(stack: BenchStack) -> BenchStack:
    fields = harvest_fields(stack)
    ny, nx = fields.shape
    rng = _rng(_S_HARVEST + 10)
    labels = _label_rectangles(fields)
    brightness = rng.uniform(*HARVEST_BRIGHTNESS, size=labels.max() + 1)
    texture = 1.0 + HARVEST_TEXTURE * _unit_field((ny, nx), 2.2, rng)
    soil = (
        spectrum(SOIL_SPECTRUM, stack.wavelengths)[:, None, None]
        * (brightness[labels] * texture)[None]
    )
    data = stack.data.copy()
    target = data[stack.target]
    data[stack.target] = np.where(fields[None] & np.isfinite(target), soil, target).astype(
        "float32"
    )
    return replace(stack, data=data, scenario="harvest", scenario_mask=fields)


def _label_rectangles(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label

    labels, _ = label(mask)
    return labels


def real_clouds(stack: BenchStack) -> BenchStack:
    """The stack as it is: the scenario is on the target, whose clouds and shadows come
    from a real scene (``pipeline.bench._real_clouds``) instead of the simulator."""
    return replace(stack, scenario="real_clouds")


_APPLY = {
    "hazy_neighbours": hazy_neighbours,
    "cloudy_neighbours": cloudy_neighbours,
    "snow_melt": snow_melt,
    "harvest": harvest,
    "real_clouds": real_clouds,
}


def apply_scenario(stack: BenchStack, name: str) -> BenchStack:
    """The stack under scenario ``name`` (``"none"``: the stack itself)."""
    check_scenarios((name,))
    if name == "none":
        return stack
    if stack.data.shape[0] < 2:
        raise ValueError(f"scenario {name!r} needs a stack of at least 2 dates")
    return _APPLY[name](stack)


def oracle_reference(stack: BenchStack) -> np.ndarray:
    """(T, Y, X) int: per pixel of the target date, the index of the TRUE nearest date that
    shows its surface (``BenchStack.usable_reference``: observed, no cloud/haze/shadow, same
    snow state; ties: the earlier date), -1 where none does; -1 on every other date (the
    method chooses). The shape ``restore(forced_reference=...)`` takes."""
    usable = stack.usable_reference()
    days = np.asarray(stack.days, dtype="float64")
    dist = np.abs(days - days[stack.target])
    dist[stack.target] = np.inf
    cost = np.where(usable, dist[:, None, None], np.inf)
    pick = np.argmin(cost, axis=0)
    found = np.isfinite(np.take_along_axis(cost, pick[None], axis=0)[0])
    out = np.full(usable.shape, -1, dtype="int64")
    out[stack.target] = np.where(found, pick, -1)
    return out
