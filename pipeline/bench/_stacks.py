"""Benchmark stacks: clear imagery with a target date whose truth is known.

A ``BenchStack`` holds ``data`` (T, B, Y, X) float32 reflectance: the target date is the
clear truth (clouds are simulated on it per case), the other dates are what a real archive
offers (the synthetic ones keep the generator's own clouds, so references are imperfect).

Sources
-------
``austria``
    The real two-date Planetary Computer L2A crop (``PROVENANCE.md`` beside it): bands B04
    B03 B02 B08 as uint16 DN of processing baseline < 04.00, so reflectance = DN / 10000,
    DN 0 = nodata. Both dates are essentially cloud-free; each date is a target in turn
    (two stacks, ``austria-2021-06-17`` and ``austria-2021-09-25``).
``synthetic``
    ``pipeline.synthetic.make_stack`` with all ten 10/20 m bands; target = the middle date.
a path
    A Zarr store or NetCDF file with (time, y, x) float reflectance variables named by band
    (what ``load_cube`` or the archive holds); target = the middle date, assumed clear.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._bands import WAVELENGTH_NM

AUSTRIA_DIR = "pc-l2a-austria-2dates"
AUSTRIA_FILE = "inference-img.tif"
AUSTRIA_DATES = ("2021-06-17T10:05:59", "2021-09-25T10:10:19")
AUSTRIA_BAND_ORDER = ("B04", "B03", "B02", "B08")  # per date, as stored (PROVENANCE.md)
#: No-data layout (fractions of the smaller image side; see ``add_nodata_wedges``).
#: A pixel of a real image whose every visible band (B02, B03, B04) reaches this reflectance
#: is no clear view of a surface: a small real cloud or a specular glint (the Austria crop's
#: PROVENANCE.md: "essentially cloud-free (only ~0.03 % of pixels bright in all visible
#: bands)"; 58 and 71 px of its two dates, up to 1.6 in the blue). Farmland, forest and
#: roofs of that crop stay below it; a real snow scene would not (no such stack here).
TRUTH_BRIGHT_VISIBLE = 0.3
WEDGE_ALL_DATES = 0.25
WEDGE_OTHER_DATES = 0.35


@dataclass(frozen=True, eq=False)
class BenchStack:
    name: str
    data: np.ndarray  # (T, B, Y, X) float32; data[target] is the clear truth
    target: int
    times: np.ndarray  # (T,) datetime64[ns]
    bands: tuple[str, ...]
    nodata_target: np.ndarray | None = None  # (Y, X) bool: no observation on the target date
    #: (T, Y, X) bool: cloud, haze or shadow over the date (the generator's and the
    #: scenario's); None = none known (the real crop's dates are essentially cloud-free)
    cloud: np.ndarray | None = None
    #: (T, Y, X) bool: opaque cloud over the date (a subset of ``cloud``); None = none known
    opaque: np.ndarray | None = None
    #: (T, Y, X) bool: snow on the date's surface (truth, not cloud); None = none known
    snow: np.ndarray | None = None
    #: (T, Y, X) uint8 Sen2Cor-like SCL where the stack has one (never given to a method)
    scl: np.ndarray | None = None
    #: the scenario applied (``pipeline.bench._scenarios``), and the dates it put under
    #: scene-wide haze or cloud
    scenario: str = "none"
    scene_wide: tuple[int, ...] = ()
    #: (Y, X) bool: the surface change the scenario made (snow region, harvested fields)
    scenario_mask: np.ndarray | None = None
    #: (Y, X) bool: pixels where the target's "truth" is itself no clear view of the surface
    #: (a real image's own small clouds: ``bright_in_all_visible``); no method is scored on
    #: them. None = the truth is clear everywhere (generated stacks).
    truth_unclear: np.ndarray | None = None

    @property
    def days(self) -> np.ndarray:
        return (self.times - self.times[0]) / np.timedelta64(1, "D")

    @property
    def wavelengths(self) -> np.ndarray:
        return np.array([WAVELENGTH_NM[b] for b in self.bands], dtype="float64")

    @property
    def clear(self) -> np.ndarray:
        return self.data

    @property
    def key(self) -> str:
        """The name a (stack, scenario) pair goes by in the summary and the table."""
        return self.name if self.scenario == "none" else f"{self.name}/{self.scenario}"

    def cloud_mask(self) -> np.ndarray:
        """(T, Y, X) bool cloud/haze/shadow truth (all False where none is known)."""
        shape = (self.data.shape[0], *self.data.shape[2:])
        return np.zeros(shape, bool) if self.cloud is None else self.cloud

    def snow_mask(self) -> np.ndarray:
        """(T, Y, X) bool snow truth (all False where none is known)."""
        shape = (self.data.shape[0], *self.data.shape[2:])
        return np.zeros(shape, bool) if self.snow is None else self.snow

    def hidden_mask(self) -> np.ndarray:
        """(T, Y, X) bool: the date does not see the target's surface at all: opaque cloud,
        or snow the target lacks (or snow gone that the target has)."""
        shape = (self.data.shape[0], *self.data.shape[2:])
        opaque = np.zeros(shape, bool) if self.opaque is None else self.opaque
        snow = self.snow_mask()
        return opaque | (snow != snow[self.target][None])

    def usable_reference(self) -> np.ndarray:
        """(T, Y, X) bool: the date shows the target's surface faithfully at the pixel:
        observed, no cloud/haze/shadow, and the same snow state as the target (snow that
        came or went is a change of cover, not a view of the target's surface). A crop
        harvested between the dates does not disqualify a date: no date shows the new
        state, so the nearest clear date is still the best reference there is."""
        finite = np.isfinite(self.data).all(axis=1)
        snow = self.snow_mask()
        return finite & ~self.cloud_mask() & (snow == snow[self.target][None])

    def with_target(self, image: np.ndarray) -> np.ndarray:
        """The stack with ``image`` (B, Y, X) as the target date, no-data kept as no-data
        (a cloud cannot appear where the satellite did not look)."""
        out = self.data.copy()
        out[self.target] = image
        if self.nodata_target is not None:
            out[self.target][:, self.nodata_target] = np.nan
        return out

    def to_dataset(self, cube: np.ndarray) -> Any:
        """(T, B, Y, X) -> the DESIGN.md section 4 Dataset (10 m pixel coordinates)."""
        import xarray as xr

        ny, nx = cube.shape[2:]
        coords = {"time": self.times, "y": 10.0 * np.arange(ny)[::-1], "x": 10.0 * np.arange(nx)}
        return xr.Dataset(
            {
                b: (("time", "y", "x"), np.ascontiguousarray(cube[:, i], dtype="float32"))
                for i, b in enumerate(self.bands)
            },
            coords=coords,
        )


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$PHYVLM_SHARED_DATA``."""
    env = os.environ.get("PHYVLM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def austria_stacks(path: str | Path | None = None) -> list[BenchStack]:
    import rasterio

    tif = Path(path) if path else shared_data_dir() / AUSTRIA_DIR / AUSTRIA_FILE
    if not tif.exists():
        raise FileNotFoundError(
            f"the real Austria L2A image is not at {tif}; it ships in ../shared/data/{AUSTRIA_DIR} "
            "beside the checkout (set PHYVLM_SHARED_DATA to its parent folder), or run the "
            "benchmark with --inputs synthetic"
        )
    with rasterio.open(tif) as src:
        dn = src.read()  # (8, Y, X) uint16
    if dn.shape[0] != 2 * len(AUSTRIA_BAND_ORDER):
        raise ValueError(f"{tif} has {dn.shape[0]} bands, expected 8 (B04 B03 B02 B08 x 2 dates)")
    refl = np.where(dn == 0, np.nan, dn.astype("float32") / 10000.0)
    per_date = refl.reshape(2, len(AUSTRIA_BAND_ORDER), *refl.shape[1:])
    order = ("B02", "B03", "B04", "B08")  # wavelength order, as the cube loader gives
    data = np.stack([per_date[:, AUSTRIA_BAND_ORDER.index(b)] for b in order], axis=1)
    times = pd.to_datetime(list(AUSTRIA_DATES)).values.astype("datetime64[ns]")
    return [
        BenchStack(
            f"austria-{AUSTRIA_DATES[t][:10]}",
            data,
            t,
            times,
            order,
            truth_unclear=bright_in_all_visible(data[t], order),
        )
        for t in range(2)
    ]


def bright_in_all_visible(image: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """(Y, X) bool: B02, B03 and B04 of a (B, Y, X) image all at least
    ``TRUTH_BRIGHT_VISIBLE``: a real cloud or glint in what should be a clear truth."""
    out = np.ones(image.shape[1:], bool)
    for b in ("B02", "B03", "B04"):
        out &= np.nan_to_num(image[bands.index(b)], nan=0.0) >= TRUTH_BRIGHT_VISIBLE
    return out


def synthetic_stack(size: int, dates: int, seed: int) -> BenchStack:
    from ..synthetic import make_stack

    stack = make_stack((dates, size, size), seed=seed)
    bands = stack.bands
    obs = np.stack([stack.observed[b].values for b in bands], axis=1).astype("float32")
    truth = np.stack([stack.truth[b].values for b in bands], axis=1).astype("float32")
    target = dates // 2
    obs[target] = truth[target]
    times = stack.truth["time"].values.astype("datetime64[ns]")
    cloud = (stack.thin | stack.thick | stack.shadow).values.copy()
    cloud[target] = False  # the target's observation is replaced by its truth
    opaque = stack.thick.values.copy()
    opaque[target] = False
    return BenchStack(
        f"synthetic-{dates}x{size}",
        obs,
        target,
        times,
        bands,
        cloud=cloud,
        opaque=opaque,
        snow=stack.snow.values.astype(bool),
        scl=stack.observed["SCL"].values.astype("uint8"),
    )


def path_stack(path: str) -> BenchStack:
    import xarray as xr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"benchmark input {path!r} does not exist (expected a Zarr store or NetCDF file)"
        )
    ds = (
        xr.open_zarr(p)
        if p.suffix == ".zarr" or (p / "zarr.json").exists() or (p / ".zgroup").exists()
        else xr.open_dataset(p)
    )
    bands = tuple(str(v) for v in ds.data_vars if v in WAVELENGTH_NM)
    if not bands or "time" not in ds.dims:
        raise ValueError(
            f"{path}: needs (time, y, x) reflectance variables named by band (B02, B03, ...); "
            f"found variables {list(ds.data_vars)} and dims {dict(ds.sizes)}"
        )
    data = np.stack([ds[b].transpose("time", "y", "x").values for b in bands], axis=1).astype(
        "float32"
    )
    times = pd.to_datetime(ds["time"].values).values.astype("datetime64[ns]")
    return BenchStack(p.name, data, data.shape[0] // 2, times, bands)


def load_stacks(config: Any) -> list[BenchStack]:
    stacks: list[BenchStack] = []
    for source in config.inputs:
        if source == "austria":
            stacks += austria_stacks()
        elif source == "synthetic":
            stacks.append(
                synthetic_stack(
                    config.synthetic_size, config.synthetic_dates, config.synthetic_seed
                )
            )
        else:
            stacks.append(path_stack(source))
    return stacks


def add_nodata_wedges(stack: BenchStack) -> BenchStack:
    """Two triangular swath-edge wedges: top-left NaN on every date (about 3 % of pixels:
    nothing to restore), bottom-right NaN on every date but the target (about 6 %: only the
    target itself can be used; where the simulated cloud is opaque there, nothing is valid)."""
    data = stack.data.copy()
    ny, nx = data.shape[2:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    side = min(ny, nx)
    everywhere = (yy + xx) < WEDGE_ALL_DATES * side
    others = ((ny - 1 - yy) + (nx - 1 - xx)) < WEDGE_OTHER_DATES * side
    data[:, :, everywhere] = np.nan
    keep = data[stack.target].copy()
    data[:, :, others] = np.nan
    data[stack.target] = keep
    scl = None
    if stack.scl is not None:  # SCL 0 = no data, where the wedges removed the observation
        scl = np.where(np.isfinite(data).all(axis=1), stack.scl, 0).astype("uint8")
    return replace(stack, data=data, nodata_target=everywhere, scl=scl)
