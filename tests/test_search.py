"""pipeline.catalog against real Planetary Computer metadata and a real STAC API on 127.0.0.1."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import planetary_computer
import pystac
import pytest

from pipeline.catalog import (
    PLANETARY_COMPUTER_STAC,
    CatalogUnreachable,
    InvalidSearch,
    ItemMetadataError,
    NoItemsFound,
    SearchParams,
    acquisition_key,
    deduplicate,
    is_planetary_computer,
    item_epsg,
    item_modifier,
    items_table,
    load_local_items,
    parse_datetime_range,
    read_geometry,
    reflectance_offset,
    search,
)
from tests import stac_server
from tests.stac_server import (
    DUPLICATE_NEW_BASELINE_ID,
    DUPLICATE_OLD_BASELINE_ID,
    PROJ_CODE_ID,
    REAL_T06VVN_ID,
    REAL_T58UGE_ID,
    free_port,
    read_item_documents,
    synthetic_items,
)

WORLD = (-180.0, -90.0, 180.0, 90.0)
ALL_DATES = "2015-06-01/2025-12-31"
#: The four real 2024-04-19 items north of Severnaya Zemlya (tiles 46X*, 47X*).
ARCTIC_2024 = {
    "S2B_MSIL2A_20240419T095549_R122_T46XER_20240419T124342",
    "S2B_MSIL2A_20240419T095549_R122_T46XES_20240419T123824",
    "S2B_MSIL2A_20240419T095549_R122_T47XMJ_20240419T122756",
    "S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458",
}


def ids(items: list[pystac.Item]) -> list[str]:
    return [item.id for item in items]


@pytest.fixture
def real_item(pc_items_dir: Path):
    def load(item_id: str) -> pystac.Item:
        # migrate=False keeps the document verbatim: pystac >= 1.12 otherwise rewrites
        # projection v1.1 ``proj:epsg`` into v2 ``proj:code`` while reading.
        path = pc_items_dir / f"{item_id}.json"
        return pystac.Item.from_dict(json.loads(path.read_text()), href=str(path), migrate=False)

    return load


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bbox", "fragment"),
    [
        ((10.0, 45.0, 11.0), "4 numbers"),
        ((16.0, 47.0, 15.0, 48.0), "antimeridian"),
        ((15.0, 48.0, 16.0, 47.0), "south=48 > north=47"),
        ((15.0, 47.0, 16.0, 91.0), "outside -90..90"),
        ((500000.0, 5200000.0, 510000.0, 5210000.0), "not in projected metres"),
    ],
)
def test_invalid_bbox_names_the_problem(bbox, fragment):
    with pytest.raises(InvalidSearch, match=fragment):
        SearchParams(bbox=bbox, datetime="2024-04-01/2024-04-30").validate()


def test_invalid_search_is_a_value_error():
    with pytest.raises(ValueError, match="swap the dates"):
        SearchParams(bbox=(15, 47, 16, 48), datetime="2024-04-30/2024-04-01").validate()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"datetime": "2024-04-30/2024-04-01"}, "ends before it starts"),
        ({"datetime": "../.."}, "open at both ends"),
        ({"datetime": "April 2024"}, "cannot read"),
        ({"datetime": None}, "datetime is required"),
        ({"max_cloud_cover": 120}, "outside 0..100"),
        ({"max_cloud_cover": -1}, "outside 0..100"),
        ({"mgrs_tile": "33UUPX"}, "not an MGRS tile"),
        ({"page_size": 5000}, "1..1000"),
        ({"max_items": 0}, "positive integer"),
        (
            {"intersects": {"type": "Point", "coordinates": [15.5, 47.5]}},
            "both of bbox and intersects",
        ),
        ({"bbox": None}, "neither of bbox and intersects"),
    ],
)
def test_invalid_params(kwargs, fragment):
    base = {"bbox": (15.0, 47.0, 16.0, 48.0), "datetime": "2024-04-01/2024-04-30"}
    with pytest.raises(InvalidSearch, match=fragment):
        SearchParams(**{**base, **kwargs}).validate()


def test_params_normalise_and_build_the_query():
    params = SearchParams(
        bbox=[15, 47, 16, 48], datetime="2024-04", max_cloud_cover=20, mgrs_tile="t33uup"
    ).validate()
    assert params.bbox == (15, 47, 16, 48)
    assert params.tile == "33UUP"
    assert params.query() == {"eo:cloud_cover": {"lte": 20.0}, "s2:mgrs_tile": {"eq": "33UUP"}}
    start, end = params.interval
    assert (start.isoformat(), end.isoformat()) == (
        "2024-04-01T00:00:00+00:00",
        "2024-04-30T23:59:59.999999+00:00",
    )


def test_datetime_ranges():
    start, end = parse_datetime_range("2024-04-01/2024-04-30")
    assert end.day == 30 and end.hour == 23  # a date-only end covers the whole day
    start, end = parse_datetime_range("2024-04-19T09:55:49Z/..")
    assert end is None and start.minute == 55
    start, end = parse_datetime_range("2024")
    assert (start.month, end.month, end.day) == (1, 12, 31)


def test_read_geometry(tmp_path: Path):
    square = {
        "type": "Polygon",
        "coordinates": [[[15, 47], [16, 47], [16, 48], [15, 48], [15, 47]]],
    }
    other = {"type": "Polygon", "coordinates": [[[17, 47], [18, 47], [18, 48], [17, 48], [17, 47]]]}
    (tmp_path / "bare.geojson").write_text(json.dumps(square))
    (tmp_path / "feature.geojson").write_text(
        json.dumps({"type": "Feature", "properties": {}, "geometry": square})
    )
    fc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {}, "geometry": g} for g in (square, other)],
    }
    (tmp_path / "fc.geojson").write_text(json.dumps(fc))
    assert read_geometry(tmp_path / "bare.geojson") == square
    assert read_geometry(tmp_path / "feature.geojson") == square
    union = read_geometry(tmp_path / "fc.geojson")
    assert union["type"] == "MultiPolygon"
    projected = {
        "type": "Polygon",
        "coordinates": [[[5e5, 5.2e6], [5.1e5, 5.2e6], [5.1e5, 5.21e6], [5e5, 5.2e6]]],
    }
    (tmp_path / "utm.geojson").write_text(json.dumps(projected))
    with pytest.raises(InvalidSearch, match="EPSG:4326"):
        read_geometry(tmp_path / "utm.geojson")
    with pytest.raises(InvalidSearch, match="does not exist"):
        read_geometry(tmp_path / "missing.geojson")


def test_planetary_computer_selects_the_signing_modifier():
    pc = SearchParams(bbox=(15, 47, 16, 48), datetime="2024-04")
    assert pc.catalog == PLANETARY_COMPUTER_STAC
    assert item_modifier(pc) is planetary_computer.sign_inplace
    assert (
        item_modifier(
            SearchParams(
                bbox=(15, 47, 16, 48), datetime="2024", catalog=PLANETARY_COMPUTER_STAC + "/"
            )
        )
        is planetary_computer.sign_inplace
    )
    assert item_modifier(SearchParams(bbox=(15, 47, 16, 48), datetime="2024", sign=False)) is None
    assert (
        item_modifier(
            SearchParams(bbox=(15, 47, 16, 48), datetime="2024", catalog="http://127.0.0.1:8081")
        )
        is None
    )
    assert (
        item_modifier(SearchParams(bbox=(15, 47, 16, 48), datetime="2024", catalog="/data/items"))
        is None
    )
    assert not is_planetary_computer(
        "https://example.org/planetarycomputer.microsoft.com/api/stac/v1"
    )
    assert is_planetary_computer("HTTPS://PlanetaryComputer.microsoft.com/api/stac/v1")


# ------------------------------------------------------------------------------------------------
# Item helpers on real items
# ------------------------------------------------------------------------------------------------


def test_reflectance_offset_from_the_baseline(real_item):
    old = real_item("S2A_MSIL2A_20190101T000001_R116_T58UGE_20201007T214656")  # 02.12
    new = real_item("S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458")  # 05.10
    assert reflectance_offset(old) == 0.0
    assert reflectance_offset(new) == pytest.approx(-0.1)


def test_reflectance_offset_without_baseline(real_item):
    item = real_item("S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458")
    del item.properties["s2:processing_baseline"]
    assert reflectance_offset(item) == pytest.approx(-0.1)  # from s2:product_uri _N0510_
    del item.properties["s2:product_uri"]
    with pytest.raises(ItemMetadataError, match=item.id):
        reflectance_offset(item)
    landsat = pystac.Item(
        "LC09_L2SP_190027_20240419", None, None, item.datetime, {"platform": "landsat-9"}
    )
    assert reflectance_offset(landsat) == 0.0


def test_item_epsg_proj_epsg_and_proj_code(real_item):
    item = real_item("S2B_MSIL2A_20240419T095549_R122_T46XER_20240419T124342")
    assert item.properties["proj:epsg"] == 32646
    assert item_epsg(item) == 32646
    migrated = pystac.Item.from_dict(item.to_dict(transform_hrefs=False))  # -> proj:code
    assert "proj:epsg" not in migrated.properties and item_epsg(migrated) == 32646
    del item.properties["proj:epsg"]
    item.properties["proj:code"] = "EPSG:32646"
    assert item_epsg(item) == 32646
    del item.properties["proj:code"]
    with pytest.raises(ItemMetadataError, match="no proj:epsg or proj:code"):
        item_epsg(item)
    item.assets["B02"].extra_fields["proj:code"] = "EPSG:32646"  # asset level only
    assert item_epsg(item) == 32646
    item.assets["B02"].extra_fields["proj:code"] = "IAU_2015:30100"
    with pytest.raises(ItemMetadataError, match="not an EPSG code"):
        item_epsg(item)


def test_deduplicate_keeps_latest_baseline_then_latest_processing(real_item):
    real = real_item(REAL_T06VVN_ID)  # baseline 02.12, processed 2020-10-06
    older = real.clone()
    older.id = DUPLICATE_OLD_BASELINE_ID  # processed 2019-06-30 with baseline 02.07
    older.properties["s2:processing_baseline"] = "02.07"
    rerun = real.clone()
    rerun.id = REAL_T06VVN_ID.rsplit("_", 1)[0] + "_20201006T090000"  # same baseline, later run
    assert acquisition_key(real) == acquisition_key(older) == acquisition_key(rerun)
    assert acquisition_key(real) == ("sentinel-2b", "2019-06-29T21:25:29Z", "06VVN")
    assert ids(deduplicate([older, real])) == [REAL_T06VVN_ID]
    assert ids(deduplicate([rerun, older, real])) == [rerun.id]
    other_tile = real_item("S2A_MSIL2A_20190101T000001_R116_T58UGE_20201007T214656")
    assert ids(deduplicate([real, other_tile, real])) == [other_tile.id, real.id]  # sorted by time


def test_items_table(real_item):
    items = [
        real_item(REAL_T58UGE_ID),
        real_item("S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458"),
    ]
    table = items_table(items)
    lines = table.splitlines()
    assert lines[0].split() == ["id", "datetime", "(UTC)", "tile", "cloud", "%", "baseline", "epsg"]
    assert (
        REAL_T58UGE_ID in lines[2]
        and "58UGE" in lines[2]
        and "28.8" in lines[2]
        and "02.12" in lines[2]
    )
    assert "32647" in lines[3] and "05.10" in lines[3]
    assert lines[-1] == "2 items"
    assert len({len(line) for line in lines[:2]}) == 1  # fixed width


# ------------------------------------------------------------------------------------------------
# Local catalogs
# ------------------------------------------------------------------------------------------------


def test_local_directory_catalog(pc_items_dir: Path):
    everything = load_local_items(pc_items_dir)  # 8 files + the 33-item page, 3 shared ids
    assert len(everything) == 38
    params = SearchParams(
        bbox=(92.0, 80.0, 98.0, 83.0), datetime="2024-04-01/2024-04-30", catalog=str(pc_items_dir)
    )
    assert set(ids(search(params))) == ARCTIC_2024
    clear = search(
        SearchParams(bbox=WORLD, datetime=ALL_DATES, max_cloud_cover=30, catalog=str(pc_items_dir))
    )
    assert all(item.properties["eo:cloud_cover"] <= 30 for item in clear)
    assert set(ids(clear)) == ARCTIC_2024 | {
        REAL_T06VVN_ID,
        REAL_T58UGE_ID,
        "S2A_MSIL2A_20190101T000001_R116_T59UMA_20201007T214658",  # 29.9 %
    }
    tile = search(
        SearchParams(bbox=WORLD, datetime=ALL_DATES, mgrs_tile="T06VVN", catalog=str(pc_items_dir))
    )
    assert ids(tile) == [REAL_T06VVN_ID]
    with pytest.raises(NoItemsFound, match="widen the date range"):
        search(
            SearchParams(bbox=WORLD, datetime="2030-01-01/2030-01-31", catalog=str(pc_items_dir))
        )


def test_local_item_collection_and_static_catalog(pc_items_dir: Path, tmp_path: Path):
    page = next((pc_items_dir / "search-page").glob("search_response_*.json"))
    shutil.copy(page, tmp_path / "items.json")
    found = search(
        SearchParams(
            bbox=(167.0, 53.0, 170.0, 54.2),
            datetime="2019-01-01",
            catalog=str(tmp_path / "items.json"),
        )
    )
    assert REAL_T58UGE_ID in ids(found) and all(i.datetime.year == 2019 for i in found)

    catalog = pystac.Catalog("demo", "two real items")
    for name in (REAL_T06VVN_ID, REAL_T58UGE_ID):
        item = pystac.Item.from_file(str(pc_items_dir / f"{name}.json"))
        item.clear_links()  # PC links (collection, root) would be resolved over the network
        catalog.add_item(item)
    catalog.normalize_and_save(str(tmp_path / "static"), pystac.CatalogType.SELF_CONTAINED)
    found = search(
        SearchParams(bbox=WORLD, datetime="2019-06-01/2019-06-30", catalog=str(tmp_path / "static"))
    )
    assert ids(found) == [REAL_T06VVN_ID]
    with pytest.raises(CatalogUnreachable, match="does not exist"):
        search(SearchParams(bbox=WORLD, datetime=ALL_DATES, catalog=str(tmp_path / "nowhere")))


# ------------------------------------------------------------------------------------------------
# The real STAC API (stac-fastapi-pgstac on PostgreSQL, 127.0.0.1)
# ------------------------------------------------------------------------------------------------


class _Proxy(BaseHTTPRequestHandler):
    """Forwards to the STAC API; answers 503 to the first ``failures`` requests; logs paths."""

    def _handle(self) -> None:
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        server.requests.append((self.command, self.path))  # type: ignore[attr-defined]
        if server.failures > 0:  # type: ignore[attr-defined]
            server.failures -= 1  # type: ignore[attr-defined]
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = urllib.request.Request(
            server.upstream + self.path,  # type: ignore[attr-defined]
            data=body,
            method=self.command,
            headers={
                "Content-Type": self.headers.get("Content-Type", "application/json"),
                "Host": self.headers["Host"],
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload, ctype = (
                    response.status,
                    response.read(),
                    response.headers.get("Content-Type"),
                )
        except urllib.error.HTTPError as exc:
            status, payload, ctype = exc.code, exc.read(), exc.headers.get("Content-Type")
        self.send_response(status)
        self.send_header("Content-Type", ctype or "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def proxy(stac_api) -> Iterator[ThreadingHTTPServer]:
    """A loopback proxy in front of the API that can fail on demand and counts requests."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    server.upstream = stac_api.url  # type: ignore[attr-defined]
    server.failures = 0  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _api(stac_api, **kwargs) -> SearchParams:
    defaults = {
        "bbox": WORLD,
        "datetime": ALL_DATES,
        "catalog": stac_api.url,
        "max_retries": 1,
        "backoff_factor": 0.0,
    }
    return SearchParams(**{**defaults, **kwargs})


def _expected(stac_api, **kwargs) -> set[str]:
    """What the server should return: the same filters applied locally to the loaded documents."""
    local = stac_api.workdir / "local-copy"
    if not local.exists():
        local.mkdir()
        for doc in stac_api.items:
            (local / f"{doc['id']}.json").write_text(json.dumps(doc))
    try:
        return set(ids(search(dataclasses.replace(_api(stac_api, **kwargs), catalog=str(local)))))
    except NoItemsFound:
        return set()


pytestmark_server = pytest.mark.stac_server


@pytestmark_server
def test_server_starts_quickly(stac_api):
    assert stac_api.startup_s < 30, stac_api.timings
    with urllib.request.urlopen(stac_api.url + "/conformance") as response:
        conformance = json.load(response)["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/item-search#query" in conformance


@pytestmark_server
def test_bbox_and_datetime(stac_api):
    found = search(_api(stac_api, bbox=(92.0, 80.0, 98.0, 83.0), datetime="2024-04-01/2024-04-30"))
    assert set(ids(found)) == ARCTIC_2024 | {PROJ_CODE_ID}
    assert ids(found) == sorted(ids(found))  # same datetime: sorted by id
    one_day = search(_api(stac_api, datetime="2019-06-29"))
    assert ids(one_day) == [REAL_T06VVN_ID]  # the 02.07 duplicate was dropped
    kamchatka = (160.0, 50.0, 170.0, 60.0)
    assert set(ids(search(_api(stac_api, bbox=kamchatka)))) == _expected(stac_api, bbox=kamchatka)


@pytestmark_server
@pytest.mark.parametrize("max_cloud_cover", [28.829971, 30.0, 50.0, 100.0])
def test_cloud_cover_query(stac_api, max_cloud_cover):
    found = search(_api(stac_api, max_cloud_cover=max_cloud_cover))
    assert all(item.properties["eo:cloud_cover"] <= max_cloud_cover for item in found)
    assert set(ids(found)) == _expected(stac_api, max_cloud_cover=max_cloud_cover)
    if max_cloud_cover == 30.0:  # 5.0 > "30" as text: the server must compare numbers
        assert PROJ_CODE_ID in ids(found)
    if max_cloud_cover == 28.829971:  # the T58UGE items have exactly this: the maximum is inclusive
        assert DUPLICATE_NEW_BASELINE_ID in ids(found)


@pytestmark_server
def test_mgrs_tile_and_latest_baseline(stac_api):
    found = search(_api(stac_api, mgrs_tile="T58UGE"))
    # Reprocessed 2019 scene (05.09) replaces the 02.12 original; its DN carry the offset.
    assert ids(found) == [DUPLICATE_NEW_BASELINE_ID]
    assert reflectance_offset(found[0]) == pytest.approx(-0.1)
    assert ids(search(_api(stac_api, mgrs_tile="06VVN"))) == [REAL_T06VVN_ID]


@pytestmark_server
def test_pagination_returns_every_item_once(stac_api, proxy):
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    found = search(_api(stac_api, catalog=url, page_size=5))
    expected = {doc["id"] for doc in stac_api.items} - {DUPLICATE_OLD_BASELINE_ID, REAL_T58UGE_ID}
    assert len(found) == len(set(ids(found))) == len(expected)
    assert set(ids(found)) == expected
    pages = [
        path for method, path in proxy.requests if method == "POST" and path.endswith("/search")
    ]
    assert len(pages) == math.ceil(len(stac_api.items) / 5)


@pytestmark_server
def test_max_items_caps_the_fetch(stac_api, proxy):
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    found = search(_api(stac_api, catalog=url, page_size=5, max_items=7))
    assert 1 <= len(found) <= 7
    assert len([p for m, p in proxy.requests if m == "POST"]) == 2


@pytestmark_server
def test_items_from_the_api(stac_api):
    found = search(_api(stac_api, bbox=(92.0, 80.0, 98.0, 83.0), datetime="2024-04"))
    by_id = {item.id: item for item in found}
    assert item_epsg(by_id[PROJ_CODE_ID]) == 32646  # proj:code
    assert "proj:epsg" not in by_id[PROJ_CODE_ID].properties
    assert item_epsg(by_id["S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458"]) == 32647
    assert [reflectance_offset(item) for item in found] == [pytest.approx(-0.1)] * len(found)
    assert (
        by_id[PROJ_CODE_ID]
        .assets["B04"]
        .href.startswith("https://sentinel2l2a01.blob.core.windows.net/")
    )
    old = search(_api(stac_api, datetime="2019-01-01", bbox=(173.5, 57.5, 174.2, 58.4)))
    assert reflectance_offset(old[0]) == 0.0
    table = items_table(found)
    assert all(item_id in table for item_id in by_id)


@pytestmark_server
def test_retries_transient_503(stac_api, proxy):
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    proxy.failures = 2
    found = search(_api(stac_api, catalog=url, max_retries=3, datetime="2019-06-29"))
    assert ids(found) == [REAL_T06VVN_ID]
    assert proxy.failures == 0
    proxy.failures = 1000
    with pytest.raises(CatalogUnreachable, match="HTTP 503 after 2 retries"):
        search(_api(stac_api, catalog=url, max_retries=2))


@pytestmark_server
def test_no_items_found(stac_api):
    with pytest.raises(NoItemsFound) as info:
        search(_api(stac_api, datetime="2030-01-01/2030-01-31", max_cloud_cover=10))
    message = str(info.value)
    assert stac_api.url in message and "2030-01-01/2030-01-31" in message
    assert "widen the date range" in message and "raise --max-cloud-cover" in message


def test_unreachable_api():
    url = f"http://127.0.0.1:{free_port()}/api/stac/v1"  # nothing listens there
    params = SearchParams(
        bbox=(15, 47, 16, 48), datetime="2024-04", catalog=url, max_retries=1, backoff_factor=0.0
    )
    with pytest.raises(CatalogUnreachable) as info:
        search(params)
    message = str(info.value)
    assert url in message
    assert "Connection refused" in message or "Max retries" in message
    assert "--catalog" in message and "proxy" in message


def test_synthetic_items_differ_from_real(pc_items_dir: Path):
    real = read_item_documents(pc_items_dir)
    before = copy.deepcopy(real)
    made = {doc["id"]: doc for doc in synthetic_items(real)}
    assert real == before  # copies, not edits
    assert "proj:epsg" not in made[PROJ_CODE_ID]["properties"]
    assert made[PROJ_CODE_ID]["properties"]["proj:code"] == "EPSG:32646"


def test_server_helper_reports_missing_postgres(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PHYVLM_PG_BINDIR", str(tmp_path))
    monkeypatch.setattr(stac_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(stac_server.glob, "glob", lambda pattern: [])
    with pytest.raises(stac_server.StacServerUnavailable, match="install-system-deps"):
        stac_server.find_pg_bindir()
    (tmp_path / "initdb").touch()
    (tmp_path / "postgres").touch()
    assert stac_server.find_pg_bindir() == tmp_path
    with pytest.raises(stac_server.StacServerUnavailable, match="postgis"):
        stac_server.check_postgis(tmp_path)
