"""Every archive is described by a STAC Collection (datacube, projection, xarray-assets,
provenance) with Items; pystac loads it, its open kwargs open the archive, and a real STAC API
(stac-fastapi-pgstac) finds the archive by place and time once the collection is loaded."""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest
import xarray as xr

from pipeline.archive import ArchiveConfig
from pipeline.archive_stac import EXTENSIONS, stac_location, write_archive_stac
from pipeline.overviews import build_overviews

from .test_overviews import _archive

VALIDATION = {"pixels": 1234, "psnr": 31.5, "rmse": 0.02}


def _described(tmp_path, **attrs):
    ds, store = _archive(tmp_path, ny=300, nx=260)
    provenance = {
        "software": "phyvlm-cr",
        "software_version": "9.8.7",
        "catalog": "https://planetarycomputer.microsoft.com/api/stac/v1",
        "collection": "sentinel-2-l2a",
        "item_ids": ["S2A_one", "S2B_two"],
        "prior": "physics",
        "cube_config": json.dumps({"bands": ["B02", "B03", "B04"]}),
        "self_validation": json.dumps(VALIDATION),
        **attrs,
    }
    import zarr

    zarr.open_group(store, mode="r+").attrs.update(provenance)
    build_overviews(store, ArchiveConfig(zarr_format=3, chunk_size=128), min_size=128)
    return ds, store, write_archive_stac(store)


def test_the_collection_describes_the_archive_and_opens_it(tmp_path):
    ds, store, path = _described(tmp_path)
    assert path == f"{stac_location(store)}/collection.json"
    collection = pystac.Collection.from_file(path)
    assert set(EXTENSIONS.values()) <= set(collection.stac_extensions)

    dims = collection.extra_fields["cube:dimensions"]
    assert dims["x"]["extent"] == [400_000.0, 400_000.0 + 10 * 260]
    assert dims["y"]["extent"] == [5_300_010.0 - 10 * 300, 5_300_010.0]
    assert dims["x"]["reference_system"] == 32633 and dims["x"]["step"] == 10.0
    assert dims["time"]["values"] == ["2024-05-01T00:00:00Z", "2024-05-11T00:00:00Z"]
    variables = collection.extra_fields["cube:variables"]
    assert variables["B04"]["type"] == "data" and variables["B04"]["unit"] == "1"
    assert variables["no_valid_observation"]["type"] == "auxiliary"
    assert variables["confidence"]["dimensions"] == ["time", "y", "x"]
    assert collection.summaries.to_dict()["proj:code"] == ["EPSG:32633"]

    # the corners of the grid in lon/lat (pyproj, independently of the archive's code)
    import pyproj

    to_lonlat = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    west, north = to_lonlat.transform(400_000.0, 5_300_010.0)
    east, south = to_lonlat.transform(402_600.0, 5_297_010.0)
    extent = collection.extent.spatial.bboxes[0]
    assert extent[0] <= west + 1e-6 and extent[2] >= east - 1e-6
    assert extent[1] <= south + 1e-6 and extent[3] >= north - 1e-6
    assert extent[2] - extent[0] < 0.05 and extent[3] - extent[1] < 0.05

    assert collection.extra_fields["phyvlm:source_items"] == ["S2A_one", "S2B_two"]
    assert collection.extra_fields["processing:software"] == {"phyvlm-cr": "9.8.7"}
    assert collection.extra_fields["phyvlm:self_validation"] == VALIDATION
    derived = [link.href for link in collection.links if link.rel == "derived_from"]
    assert derived == [
        "https://planetarycomputer.microsoft.com/api/stac/v1/collections/sentinel-2-l2a"
    ]

    asset = collection.assets["zarr"]
    opened = xr.open_dataset(asset.href, **asset.extra_fields["xarray:open_kwargs"])
    assert opened.rio.crs.to_epsg() == 32633
    np.testing.assert_array_equal(opened["B04"].values, ds["B04"].values)

    overview = collection.assets["overview_2x"]
    assert "overview" in overview.roles
    level = xr.open_dataset(overview.href, **overview.extra_fields["xarray:open_kwargs"])
    assert (level.sizes["y"], level.sizes["x"]) == (150, 130)
    assert collection.extra_fields["phyvlm:overview_factors"] == [2, 4]

    (item,) = collection.get_items()
    assert item.properties["proj:shape"] == [300, 260]
    assert item.properties["phyvlm:window"] == {"y": [0, 300], "x": [0, 260]}
    assert item.properties["start_datetime"] == "2024-05-01T00:00:00Z"
    assert item.assets["zarr"].href == asset.href


def test_the_fingerprint_follows_the_configuration(tmp_path):
    def fingerprint(sub, prior):
        _, _, path = _described(tmp_path / sub, prior=prior)
        return pystac.Collection.from_file(path).extra_fields["phyvlm:config_fingerprint"]

    assert fingerprint("a", "physics") == fingerprint("b", "physics")
    assert fingerprint("c", "physics") != fingerprint("d", "vlm")


@pytest.mark.stac_server
def test_a_stac_api_finds_the_archive_by_place_and_time(tmp_path, stac_api):
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods
    from pystac_client import Client

    ds, store, path = _described(tmp_path)
    collection = pystac.Collection.from_file(path)
    items = [it.to_dict(transform_hrefs=False) for it in collection.get_items()]
    with PgstacDB(dsn=stac_api.dsn) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([collection.to_dict(transform_hrefs=False)]), Methods.upsert)
        loader.load_items(iter(items), Methods.upsert)

    client = Client.open(stac_api.url)
    found = list(
        client.search(
            collections=[collection.id], bbox=[13.67, 47.825, 13.68, 47.83], datetime="2024-05-05"
        ).items()
    )
    assert [it.id for it in found] == [f"{collection.id}-area"]
    asset = found[0].assets["zarr"]
    opened = xr.open_dataset(asset.href, **asset.extra_fields["xarray:open_kwargs"])
    np.testing.assert_array_equal(opened["confidence"].values, ds["confidence"].values)
    elsewhere = client.search(collections=[collection.id], bbox=[13.0, 48.0, 13.1, 48.1])
    assert not list(elsewhere.items())
    remote = client.get_collection(collection.id)
    assert remote.extra_fields["cube:variables"]["B04"]["type"] == "data"
