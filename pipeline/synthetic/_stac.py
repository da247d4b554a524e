"""Write a :class:`SyntheticStack` as Planetary-Computer-like COGs + STAC items (local fixtures).

One Cloud-Optimized GeoTIFF per band and date at the band's native resolution (10 m bands as is,
20 m bands and SCL by 2x2 block mean / nearest sample), uint16 digital numbers
``DN = round(reflectance * 10000) + 1000`` for processing baseline >= 04.00 (else no offset),
0 = nodata; and one STAC item per date whose fields imitate real PC ``sentinel-2-l2a`` items
(``../shared/data/pc-stac-items``), asset hrefs as ``file://`` URIs (what odc-stac needs locally).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

from .._bands import NATIVE_RESOLUTION_M, QUANTIFICATION, SCL, boa_offset_dn, parse_baseline
from ._stack import SyntheticStack

PC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
COLLECTION = "sentinel-2-l2a"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

# name, common_name, description, center_wavelength (um), fwhm (um), as in PC items
_EO = {
    "B01": ("coastal", "Band 1 - Coastal aerosol", 0.443, 0.027),
    "B02": ("blue", "Band 2 - Blue", 0.49, 0.098),
    "B03": ("green", "Band 3 - Green", 0.56, 0.045),
    "B04": ("red", "Band 4 - Red", 0.665, 0.038),
    "B05": ("rededge", "Band 5 - Vegetation red edge 1", 0.704, 0.019),
    "B06": ("rededge", "Band 6 - Vegetation red edge 2", 0.74, 0.018),
    "B07": ("rededge", "Band 7 - Vegetation red edge 3", 0.783, 0.028),
    "B08": ("nir", "Band 8 - NIR", 0.842, 0.145),
    "B8A": ("rededge", "Band 8A - Vegetation red edge 4", 0.865, 0.033),
    "B09": (None, "Band 9 - Water vapor", 0.945, 0.026),
    "B11": ("swir16", "Band 11 - SWIR (1.6)", 1.61, 0.143),
    "B12": ("swir22", "Band 12 - SWIR (2.2)", 2.19, 0.242),
}
_EXT = {
    "eo": "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "proj2": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
}


def _cycle(value, n: int, name: str) -> list:
    if isinstance(value, str | bool) or value is None:
        return [value] * n
    values = list(value)
    if not values:
        raise ValueError(f"{name} is empty")
    return [values[i % len(values)] for i in range(n)]


def _baseline_key(baseline: str) -> tuple[int, int]:
    parsed = parse_baseline(baseline)
    if parsed is None:
        raise ValueError(f"processing baseline {baseline!r} is empty: give a string like '05.10'")
    return parsed


def _block_reduce(a: np.ndarray, f: int, how: str) -> np.ndarray:
    """Downsample (H, W) by ``f``: 'mean' (NaN-aware, edge-padded) or 'nearest' (top-left sample)."""
    if f == 1:
        return a
    h, w = a.shape
    if how == "nearest":
        return a[::f, ::f]
    hp, wp = -(-h // f) * f, -(-w // f) * f
    p = np.pad(a, ((0, hp - h), (0, wp - w)), mode="edge") if (hp, wp) != (h, w) else a
    blocks = p.reshape(hp // f, f, wp // f, f)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(blocks).sum(axis=(1, 3))
        total = np.nansum(blocks, axis=(1, 3))
    return np.where(valid > 0, total / np.maximum(valid, 1), np.nan)


def to_dn(reflectance: np.ndarray, baseline: str) -> np.ndarray:
    """uint16 DN of L2A reflectance: round(r * 10000) - boa_offset_dn(baseline); NaN -> 0 (nodata)."""
    offset = -boa_offset_dn(baseline)
    dn = np.rint(np.asarray(reflectance, dtype=np.float64) * QUANTIFICATION) + offset
    dn = np.where(np.isfinite(dn), np.clip(dn, 1, 65535), 0)
    return dn.astype(np.uint16)


def _overview_count(h: int, w: int, blocksize: int) -> int:
    n, size = 0, max(h, w)
    while size > blocksize:
        size = -(-size // 2)
        n += 1
    return max(n, 1 if min(h, w) >= 32 else 0)


def _write_cog(
    path: Path, data: np.ndarray, transform, crs, *, resampling: str, blocksize: int
) -> None:
    h, w = data.shape
    profile = dict(
        driver="COG",
        width=w,
        height=h,
        count=1,
        dtype="uint16",
        nodata=0,
        crs=crs,
        transform=transform,
        compress="DEFLATE",
        predictor=2,
        blocksize=blocksize,
        overview_resampling=resampling,
        overview_count=_overview_count(h, w, blocksize),
        bigtiff="NO",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _ids(
    platform: str, when: datetime, orbit: int, tile: str, baseline: str, generated: datetime
) -> dict:
    sat = "S2A" if platform.endswith("A") else "S2B" if platform.endswith("B") else "S2C"
    acq = when.strftime("%Y%m%dT%H%M%S")
    gen = generated.strftime("%Y%m%dT%H%M%S")
    n = "N" + baseline.replace(".", "")
    abs_orbit = (
        int((when - datetime(2015, 6, 23)).days * 14.3 + 1)
        if sat == "S2A"
        else int((when - datetime(2017, 3, 7)).days * 14.3 + 1)
    )
    return {
        "id": f"{sat}_MSIL2A_{acq}_R{orbit:03d}_T{tile}_{gen}",
        "s2:granule_id": f"{sat}_OPER_MSI_L2A_TL_MSFT_{gen}_A{abs_orbit:06d}_T{tile}_N{baseline}",
        "s2:datatake_id": f"G{sat}_{acq}_{abs_orbit:06d}_N{baseline}",
        "s2:product_uri": f"{sat}_MSIL2A_{acq}_{n}_R{orbit:03d}_T{tile}_{gen}.SAFE",
        "s2:datastrip_id": f"{sat}_OPER_MSI_L2A_DS_MSFT_{gen}_S{acq}_N{baseline}",
        "s2:generation_time": generated.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
    }


def write_stac_items(
    stack: SyntheticStack,
    directory: str | Path,
    *,
    baselines: str | Sequence[str] = ("02.12", "05.10"),
    mgrs_tile: str = "33UUP",
    relative_orbit: int = 22,
    platforms: Sequence[str] = ("Sentinel-2A", "Sentinel-2B"),
    use_proj_code: bool | Sequence[bool] = False,
    duplicate_first_with_baseline: str | None = None,
    source: str = "observed",
    blocksize: int = 256,
) -> list[pystac.Item]:
    """Write COGs + one STAC item JSON per date (+ ``items.json``) under ``directory``; return items.

    ``baselines`` and ``platforms`` are cycled over the dates (or give one per date);
    ``use_proj_code`` writes ``proj:code`` "EPSG:xxxxx" (projection v2.0.0) instead of ``proj:epsg``,
    per date or for all. ``duplicate_first_with_baseline`` adds a second item for the first date
    (same acquisition, that older baseline, an earlier generation time so a different id), as PC
    holds for reprocessed data: the latest baseline is the one to keep. ``source`` "observed"
    (default, cloudy, with the SCL) or "truth" (cloud free; SCL still from the observation).
    Items are returned in date order, the duplicate right after its twin, exactly as written (not
    migrated: ``pystac.Item.from_file`` would migrate ``proj:epsg`` to ``proj:code``).
    """
    if source not in ("observed", "truth"):
        raise ValueError("source must be 'observed' or 'truth'")
    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ds = stack.observed if source == "observed" else stack.truth
    scl_all = stack.observed["SCL"].values
    bands = stack.bands
    times = [pd.Timestamp(t).to_pydatetime() for t in ds.time.values]
    t_n = len(times)
    base_l = _cycle(baselines, t_n, "baselines")
    plat_l = _cycle(platforms, t_n, "platforms")
    code_l = _cycle(use_proj_code, t_n, "use_proj_code")
    for b in [*base_l, duplicate_first_with_baseline]:
        if b is not None:
            _baseline_key(b)
    crs = ds.rio.crs
    epsg = crs.to_epsg()
    res = float(stack.attrs.get("resolution", abs(float(ds.x[1] - ds.x[0]))))
    x0 = float(ds.x[0]) - res / 2
    y0 = float(ds.y[0]) + res / 2
    h, w = ds.sizes["y"], ds.sizes["x"]
    bounds = (x0, y0 - h * res, x0 + w * res, y0)
    cloud = (stack.thin | stack.thick).mean(("y", "x")).values * 100.0

    # footprint in WGS84 (densified rectangle)
    k = np.linspace(0, 1, 11)
    xmin, ymin, xmax, ymax = bounds
    ring = (
        [(xmin + (xmax - xmin) * f, ymax) for f in k]
        + [(xmax, ymax - (ymax - ymin) * f) for f in k[1:]]
        + [(xmax - (xmax - xmin) * f, ymin) for f in k[1:]]
        + [(xmin, ymin + (ymax - ymin) * f) for f in k[1:]]
    )
    geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=8)
    lons = [c[0] for c in geom["coordinates"][0]]
    lats = [c[1] for c in geom["coordinates"][0]]
    bbox = [min(lons), min(lats), max(lons), max(lats)]

    jobs = []
    for i in range(t_n):
        gen = times[i] + timedelta(hours=2, minutes=28, seconds=59)
        jobs.append((i, base_l[i], plat_l[i], bool(code_l[i]), gen))
        if i == 0 and duplicate_first_with_baseline is not None:
            # the older baseline was generated earlier (a different id suffix)
            older = _baseline_key(duplicate_first_with_baseline) < _baseline_key(base_l[i])
            shift = timedelta(hours=1, minutes=7) * (-1 if older else 1)
            jobs.append((i, duplicate_first_with_baseline, plat_l[i], bool(code_l[i]), gen + shift))

    items: list[pystac.Item] = []
    for i, baseline, platform, proj_code, gen in jobs:
        when = times[i]
        ids = _ids(platform, when, relative_orbit, mgrs_tile, baseline, gen)
        item_id = ids.pop("id")
        folder = out / item_id
        folder.mkdir(exist_ok=True)
        assets: dict[str, dict] = {}
        for name in (*bands, "SCL"):
            native = float(NATIVE_RESOLUTION_M[name])
            f = max(int(round(native / res)), 1)
            if name == "SCL":
                data = _block_reduce(scl_all[i], f, "nearest").astype(np.uint16)
            else:
                data = to_dn(
                    _block_reduce(ds[name].values[i].astype(np.float64), f, "mean"), baseline
                )
            rh, rw = data.shape
            gsd = res * f
            transform = from_origin(x0, y0, gsd, gsd)
            tif = folder / f"T{mgrs_tile}_{when.strftime('%Y%m%dT%H%M%S')}_{name}_{int(gsd)}m.tif"
            _write_cog(
                tif,
                data,
                transform,
                crs,
                resampling="NEAREST" if name == "SCL" else "AVERAGE",
                blocksize=blocksize,
            )
            asset = {
                "href": tif.as_uri(),
                "proj:bbox": [x0, y0 - rh * gsd, x0 + rw * gsd, y0],
                "proj:shape": [rh, rw],
                "proj:transform": [gsd, 0.0, x0, 0.0, -gsd, y0],
                "gsd": gsd,
                "type": COG_MEDIA_TYPE,
                "roles": ["data"],
            }
            if name == "SCL":
                asset["title"] = "Scene classfication map (SCL)"  # sic, as in PC
            else:
                common, desc, cw, fwhm = _EO[name]
                asset["title"] = f"{desc} - {int(native)}m"
                eo = {
                    "name": name,
                    "common_name": common,
                    "description": desc,
                    "center_wavelength": cw,
                    "full_width_half_max": fwhm,
                }
                if common is None:
                    del eo["common_name"]
                asset["eo:bands"] = [eo]
            assets[name] = asset

        scl20 = _block_reduce(scl_all[i], 2, "nearest")
        valid = scl20 != SCL.NO_DATA
        counts = np.bincount(scl20[valid].ravel(), minlength=12)
        shares = counts / max(int(valid.sum()), 1) * 100.0
        props = {
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
            "platform": platform,
            ("proj:code" if proj_code else "proj:epsg"): (f"EPSG:{epsg}" if proj_code else epsg),
            "instruments": ["msi"],
            "s2:mgrs_tile": mgrs_tile,
            "constellation": "Sentinel 2",
            **{k: v for k, v in ids.items() if k != "s2:generation_time"},
            "eo:cloud_cover": round(float(cloud[i]), 6),
            "s2:product_type": "S2MSI2A",
            "sat:orbit_state": "descending",
            "s2:datatake_type": "INS-NOBS",
            "s2:generation_time": ids["s2:generation_time"],
            "sat:relative_orbit": int(relative_orbit),
            "s2:water_percentage": round(float(shares[SCL.WATER]), 6),
            "s2:mean_solar_zenith": float(stack.attrs.get("solar_zenith", [45.0] * t_n)[i]),
            "s2:mean_solar_azimuth": float(stack.attrs.get("solar_azimuth", [160.0] * t_n)[i]),
            "s2:processing_baseline": str(baseline),
            "s2:snow_ice_percentage": round(float(shares[SCL.SNOW]), 6),
            "s2:vegetation_percentage": round(float(shares[SCL.VEGETATION]), 6),
            "s2:thin_cirrus_percentage": round(float(shares[SCL.THIN_CIRRUS]), 6),
            "s2:cloud_shadow_percentage": round(float(shares[SCL.CLOUD_SHADOW]), 6),
            "s2:nodata_pixel_percentage": round(float((~valid).mean() * 100.0), 6),
            "s2:unclassified_percentage": round(float(shares[SCL.UNCLASSIFIED]), 6),
            "s2:dark_features_percentage": round(float(shares[SCL.DARK_SHADOW]), 6),
            "s2:not_vegetated_percentage": round(float(shares[SCL.BARE]), 6),
            "s2:degraded_msi_data_percentage": 0.0,
            "s2:high_proba_clouds_percentage": round(float(shares[SCL.CLOUD_HIGH]), 6),
            "s2:medium_proba_clouds_percentage": round(float(shares[SCL.CLOUD_MEDIUM]), 6),
            "s2:saturated_defective_pixel_percentage": round(float(shares[SCL.SATURATED]), 6),
        }
        item_url = f"{PC_API}/collections/{COLLECTION}/items/{item_id}"
        # No root/parent link to the remote API: pystac resolves the root on to_dict() (a network
        # call); the local fixture's self link is its file:// path.
        doc = {
            "id": item_id,
            "bbox": bbox,
            "type": "Feature",
            "links": [
                {
                    "rel": "collection",
                    "type": "application/json",
                    "href": f"{PC_API}/collections/{COLLECTION}",
                },
                {
                    "rel": "self",
                    "type": "application/geo+json",
                    "href": (out / f"{item_id}.json").as_uri(),
                },
                {
                    "rel": "license",
                    "href": "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice",
                },
                {
                    "rel": "via",
                    "type": "application/geo+json",
                    "href": item_url,
                    "title": "synthetic stand-in imitating this Planetary Computer item",
                },
            ],
            "assets": assets,
            "geometry": geom,
            "collection": COLLECTION,
            "properties": props,
            "stac_extensions": [_EXT["eo"], _EXT["sat"], _EXT["proj2" if proj_code else "proj"]],
            "stac_version": "1.0.0",
        }
        (out / f"{item_id}.json").write_text(json.dumps(doc, indent=2))
        # migrate=False keeps the item as written (pystac would rewrite proj:epsg -> proj:code)
        items.append(pystac.Item.from_dict(doc, migrate=False))

    collection = {
        "type": "FeatureCollection",
        "features": [it.to_dict(transform_hrefs=False) for it in items],
    }
    (out / "items.json").write_text(json.dumps(collection, indent=1))
    return items
