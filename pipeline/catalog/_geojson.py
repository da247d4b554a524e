"""Areas of interest from GeoJSON files (a geometry, a Feature or a FeatureCollection)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ._errors import InvalidSearch
from ._params import _check_geometry


def read_geometry(path: str | Path) -> dict[str, Any]:
    """The GeoJSON geometry of a file: a bare geometry, a Feature, or a FeatureCollection (union).

    Raises InvalidSearch when the file is not GeoJSON in EPSG:4326.
    """
    import shapely
    import shapely.geometry

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidSearch(f"geometry file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise InvalidSearch(f"cannot read {path} as GeoJSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidSearch(f"{path} is not a GeoJSON object")
    crs = (
        doc.get("crs", {}).get("properties", {}).get("name", "")
        if isinstance(doc.get("crs"), dict)
        else ""
    )
    if crs and not re.search(r"(CRS84|EPSG::?4326)$", crs):
        raise InvalidSearch(
            f"{path} declares CRS {crs}: reproject it to EPSG:4326 (ogr2ogr -t_srs EPSG:4326)"
        )
    kind = doc.get("type")
    if kind == "Feature":
        geometry = doc.get("geometry")
    elif kind == "FeatureCollection":
        shapes = [
            shapely.geometry.shape(f["geometry"])
            for f in doc.get("features", [])
            if f.get("geometry")
        ]
        if not shapes:
            raise InvalidSearch(f"{path} is a FeatureCollection without geometries")
        geometry = (
            shapely.geometry.mapping(shapely.union_all(shapes))
            if len(shapes) > 1
            else shapely.geometry.mapping(shapes[0])
        )
    else:
        geometry = doc
    if not isinstance(geometry, dict):
        raise InvalidSearch(f"{path}: the Feature has no geometry")
    geometry = json.loads(json.dumps(geometry))  # tuples from shapely.mapping -> lists
    _check_geometry(geometry, str(path))
    return geometry
