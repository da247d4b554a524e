"""Local COGs + STAC items built from the REAL data in ../shared/data.

The real two-date Planetary Computer L2A crop (Austria, B04 B03 B02 B08, uint16 DN, baseline
< 04.00) is cut into one COG per band and date, and each date gets a STAC item made from a
real Planetary Computer item JSON (its properties, extensions and asset metadata), with the
geometry, projection and hrefs rewritten for the crop. ``baselines`` re-encodes a date as if
it had been processed at a later baseline (DN + 1000), so scaling can be checked against
the original digital numbers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.warp import transform_geom

AUSTRIA_BANDS = ("B04", "B03", "B02", "B08")  # band order in the file, date A then date B
AUSTRIA_DATES = ("2021-06-17T10:05:59Z", "2021-09-25T10:10:19Z")
TEMPLATE_ITEM = "S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458.json"


def read_austria_dn(tif: Path) -> dict[str, np.ndarray]:
    """{band: (2, H, W) uint16 DN} from the real image."""
    with rasterio.open(tif) as src:
        data = src.read()
    return {band: data[[i, i + 4]] for i, band in enumerate(AUSTRIA_BANDS)}


def write_austria_items(
    tif: Path,
    items_dir: Path,
    out_dir: Path,
    *,
    baselines: tuple[str, str] = ("02.12", "05.10"),
    use_proj_code: tuple[bool, bool] = (False, True),
) -> list[pystac.Item]:
    """Write one COG per band and date and a PC-like STAC item per date; return the items."""
    out_dir.mkdir(parents=True, exist_ok=True)
    template = json.loads((items_dir / TEMPLATE_ITEM).read_text())
    with rasterio.open(tif) as src:
        profile = src.profile
        data = src.read()
        crs = src.crs
        transform = src.transform
        bounds = src.bounds
        height, width = src.height, src.width
    footprint = {
        "type": "Polygon",
        "coordinates": [
            [
                [bounds.left, bounds.bottom],
                [bounds.right, bounds.bottom],
                [bounds.right, bounds.top],
                [bounds.left, bounds.top],
                [bounds.left, bounds.bottom],
            ]
        ],
    }
    geometry = transform_geom(crs, "EPSG:4326", footprint)
    lons = [p[0] for p in geometry["coordinates"][0]]
    lats = [p[1] for p in geometry["coordinates"][0]]
    items = []
    for d, when in enumerate(AUSTRIA_DATES):
        doc = copy.deepcopy(template)
        stamp = when.replace("-", "").replace(":", "").rstrip("Z")
        doc["id"] = f"S2B_MSIL2A_{stamp}_R022_T33UUP_2021{d + 1:02d}01T000000"
        doc["bbox"] = [min(lons), min(lats), max(lons), max(lats)]
        doc["geometry"] = geometry
        props = doc["properties"]
        props["datetime"] = when
        props["s2:mgrs_tile"] = "33UUP"
        props["s2:processing_baseline"] = baselines[d]
        props["eo:cloud_cover"] = 0.0
        props.pop("proj:epsg", None)
        if use_proj_code[d]:
            props["proj:code"] = f"EPSG:{crs.to_epsg()}"
        else:
            props["proj:epsg"] = crs.to_epsg()
        offset = 1000 if baselines[d] >= "04.00" else 0
        keep = {}
        for i, band in enumerate(AUSTRIA_BANDS):
            dn = data[i + 4 * d].astype(np.int32)
            dn = np.where(dn > 0, np.clip(dn + offset, 1, 65535), 0).astype("uint16")
            path = out_dir / f"{doc['id']}_{band}.tif"
            cog = dict(profile, driver="COG", count=1, dtype="uint16", nodata=0, compress="deflate")
            cog.pop("blockxsize", None), cog.pop("blockysize", None), cog.pop("tiled", None)
            cog.pop("interleave", None)
            with rasterio.open(path, "w", **cog) as dst:
                dst.write(dn, 1)
            asset = copy.deepcopy(template["assets"][band])
            asset["href"] = path.resolve().as_uri()
            asset["proj:shape"] = [height, width]
            asset["proj:transform"] = list(transform)[:6]
            asset["proj:bbox"] = [bounds.left, bounds.bottom, bounds.right, bounds.top]
            keep[band] = asset
        doc["assets"] = keep
        doc["links"] = []
        item = pystac.Item.from_dict(doc)
        (out_dir / f"{doc['id']}.json").write_text(json.dumps(item.to_dict(), indent=1))
        items.append(item)
    return items
