"""Sentinel-2 L2A band facts shared by every stage (DESIGN.md section 3).

Only facts live here: wavelengths, native resolutions, SCL classes and the
processing-baseline rule for the BOA offset. No I/O, no dask.
"""

from __future__ import annotations

from types import MappingProxyType

#: Central wavelength (nm) per L2A asset key. L2A has no B10 (cirrus).
WAVELENGTH_NM: MappingProxyType[str, float] = MappingProxyType(
    {
        "B01": 443.0,
        "B02": 490.0,
        "B03": 560.0,
        "B04": 665.0,
        "B05": 705.0,
        "B06": 740.0,
        "B07": 783.0,
        "B08": 842.0,
        "B8A": 865.0,
        "B09": 945.0,
        "B11": 1610.0,
        "B12": 2190.0,
    }
)

#: Reference wavelength of the Angstrom law: t_b = t_ref ** ((lambda_ref / lambda_b) ** gamma).
REFERENCE_BAND = "B02"
REFERENCE_WAVELENGTH_NM = WAVELENGTH_NM[REFERENCE_BAND]

BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
BANDS_60M = ("B01", "B09")
NATIVE_RESOLUTION_M: MappingProxyType[str, int] = MappingProxyType(
    {
        **dict.fromkeys(BANDS_10M, 10),
        **dict.fromkeys(BANDS_20M, 20),
        **dict.fromkeys(BANDS_60M, 60),
        "SCL": 20,
    }
)

#: The default band set: every 10 m and 20 m reflectance band.
DEFAULT_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")

SPECTRAL_BANDS = tuple(WAVELENGTH_NM)
SCL_BAND = "SCL"

#: L2A digital numbers use 0 as nodata for every band, SCL included.
NODATA_DN = 0
#: reflectance = (DN + offset_dn) / QUANTIFICATION
QUANTIFICATION = 10_000.0
#: From processing baseline 04.00 on, DN carry a +1000 BOA offset.
BOA_OFFSET_DN = 1000.0
BOA_OFFSET_FROM_BASELINE = (4, 0)


class SCL:
    """Scene classification (SCL) classes of Sen2Cor. A weak label: evidence, not truth."""

    NO_DATA = 0
    SATURATED = 1
    DARK_SHADOW = 2
    CLOUD_SHADOW = 3
    VEGETATION = 4
    BARE = 5
    WATER = 6
    UNCLASSIFIED = 7
    CLOUD_MEDIUM = 8
    CLOUD_HIGH = 9
    THIN_CIRRUS = 10
    SNOW = 11


def parse_baseline(baseline: str | float | None) -> tuple[int, int] | None:
    """Parse ``s2:processing_baseline`` ("05.10", "5.1", 4.0) into (major, minor); None when absent."""
    if baseline is None:
        return None
    text = str(baseline).strip()
    if not text:
        return None
    major, _, minor = text.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError as exc:
        raise ValueError(
            f"unreadable s2:processing_baseline {baseline!r}: expected a string like '05.10'"
        ) from exc


def boa_offset_dn(baseline: str | float | None) -> float:
    """The DN offset to add before dividing by 10000 (-1000 for baseline >= 04.00, else 0).

    Decided from the processing baseline, never from the acquisition date: PC holds
    reprocessed pre-2022 data with baseline >= 04.00 too.
    """
    parsed = parse_baseline(baseline)
    if parsed is not None and parsed >= BOA_OFFSET_FROM_BASELINE:
        return -BOA_OFFSET_DN
    return 0.0


def check_bands(bands: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate asset keys; raise a ValueError that lists the valid keys."""
    unknown = [b for b in bands if b not in WAVELENGTH_NM and b != SCL_BAND]
    if unknown:
        raise ValueError(
            f"unknown Sentinel-2 L2A band(s) {unknown}; valid asset keys are "
            f"{', '.join(list(WAVELENGTH_NM) + [SCL_BAND])}"
        )
    if len(set(bands)) != len(bands):
        raise ValueError(f"bands listed twice in {list(bands)}")
    return tuple(bands)
