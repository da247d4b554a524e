"""Reading under load: COGs over HTTP from a loopback server that fails, stalls and expires tokens.

The data are the real Austria L2A crop (tests/real_fixtures.py) served by tests/asset_server.py.
Every successful run is compared with the same cube read from local files; every failure that
cannot succeed must be raised with the asset named, or (``on_read_error="count"``) reported with
its asset, reason and context while its pixels are NaN.

GDAL's own retries are cut to one per request and its timeout to one second (``fast_gdal``), so
the faults below outlast GDAL and the reader's retries (``pipeline._reading``) must recover.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from pipeline._reading import (
    GDAL_SETTINGS,
    ReadFailedError,
    ReadRetry,
    collect_read_failures,
    configure_gdal,
    diagnose,
)
from pipeline.catalog import SearchParams, search
from pipeline.cube import CubeConfig, load_cube

from .asset_server import AssetServer, Fault, TokenSigner
from .real_fixtures import AUSTRIA_BANDS, write_austria_items

#: Faults outlast GDAL: it tries each request twice (GDAL_HTTP_MAX_RETRY=1 below).
GDAL_TRIES = 2
CONFIG = CubeConfig(
    bands=AUSTRIA_BANDS, include_scl=False, chunk_size=256, max_read_attempts=4, read_backoff_s=0.05
)


@pytest.fixture(scope="module")
def austria(tmp_path_factory):
    """(folder of COGs, file:// items, the cube read from the local files)."""
    from .conftest import shared_data

    tif = shared_data("pc-l2a-austria-2dates", "inference-img.tif")
    folder = tmp_path_factory.mktemp("cogs")
    items = write_austria_items(tif, shared_data("pc-stac-items"), folder)
    local = load_cube(items, CONFIG).compute(scheduler="synchronous")
    return folder, items, local


@pytest.fixture
def fast_gdal():
    """Short GDAL timeouts and few GDAL retries for this test; the project's settings after."""
    configure_gdal(
        GDAL_HTTP_MAX_RETRY=str(GDAL_TRIES - 1),
        GDAL_HTTP_RETRY_DELAY="0.05",
        GDAL_HTTP_TIMEOUT="1",
        GDAL_HTTP_CONNECTTIMEOUT="1",
    )
    collect_read_failures()
    yield
    collect_read_failures()
    configure_gdal()


@pytest.fixture
def served(austria, asset_server_factory, fast_gdal):
    """(server, the items with hrefs on the server, the local cube)."""
    folder, items, local = austria
    server = asset_server_factory(folder)
    return server, _on_server(items, server), local


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of two worker processes (one thread each) for the distributed cases."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    with Client(cluster) as client:
        collect_read_failures(client)  # events of earlier tests stay on the scheduler
        yield client


def _on_server(items, server: AssetServer):
    moved = []
    for item in items:
        clone = item.clone()
        for asset in clone.assets.values():
            asset.href = server.href(Path(asset.href.removeprefix("file://")))
        moved.append(clone)
    return moved


def _asset_name(items, date: int, band: str) -> str:
    return items[date].assets[band].href.rsplit("/", 1)[-1]


def _assert_same(got: xr.Dataset, expected: xr.Dataset) -> None:
    for band in AUSTRIA_BANDS:
        np.testing.assert_array_equal(got[band].values, expected[band].values)


# ------------------------------------------------------------------------------------------------
# Transient faults: retried until they succeed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 429, "retry_after_s": 1},
        {"status": 503},
        {"status": 504},
        {"stall_s": 2.5},  # longer than GDAL_HTTP_TIMEOUT: a timeout
    ],
    ids=["500", "429", "503", "504", "timeout"],
)
def test_transient_faults_are_retried_until_the_data_equals_the_local_read(served, fault, caplog):
    server, items, local = served
    name = _asset_name(items, 1, "B03")
    # More failures in a row than GDAL tries per request: only the reader's retry gets through.
    injected = server.inject(match=name, first=GDAL_TRIES + 1, **fault)
    # One thread: the failures then hit one request after another, so they outlast GDAL's
    # own retries. Under threads two chunks' requests can share them, GDAL's retries absorb
    # them all and the reader has nothing to retry (or a failed range request surfaces as
    # the tile decode failing): the data is still right, but this test would prove nothing.
    with caplog.at_level(logging.INFO, logger="pipeline._reading"):
        got = load_cube(items, CONFIG).compute(scheduler="synchronous")
    _assert_same(got, local)
    assert injected.fired == GDAL_TRIES + 1
    retried = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
    reason = "timeout" if "stall_s" in fault else f"HTTP {fault['status']}"
    assert retried and all(name in m and f"({reason})" in m for m in retried)
    assert collect_read_failures() == []


def test_faults_everywhere_on_a_cluster_of_two_processes(served, client):
    server, items, local = served
    for status, seed in ((500, 1), (429, 2), (503, 3), (504, 4)):
        server.inject(status=status, fraction=0.05, seed=seed)
    got = load_cube(items, CONFIG).compute()
    _assert_same(got, local)
    assert sum(f.fired for f in server.faults) >= 4
    assert collect_read_failures(client) == []


# ------------------------------------------------------------------------------------------------
# Permanent failures: raised with the asset named, or counted and NaN, never silent
# ------------------------------------------------------------------------------------------------


def test_a_permanently_failing_asset_raises_naming_it(served):
    server, items, _ = served
    name = _asset_name(items, 1, "B03")
    server.inject(status=500, match=name)
    with pytest.raises(ReadFailedError) as info:
        # synchronous: no reads of the other chunks go on in the background after the error
        load_cube(items, CONFIG).compute(scheduler="synchronous")
    message = str(info.value)
    assert name in message and "HTTP 500" in message and "after 4 attempt(s)" in message
    assert "--on-read-error count" in message


def test_a_permanently_failing_asset_is_counted_with_its_context_and_left_nan(served, client):
    server, items, local = served
    name = _asset_name(items, 1, "B03")
    server.inject(status=503, match=name)
    config = CubeConfig(**{**CONFIG.__dict__, "on_read_error": "count"})
    cube = load_cube(items, config, read_context="tile 7")
    got = cube.compute()

    # The failed band and date are NaN everywhere; everything else is the real data.
    assert np.isnan(got["B03"].values[1]).all()
    np.testing.assert_array_equal(got["B03"].values[0], local["B03"].values[0])
    for band in ("B04", "B02", "B08"):
        np.testing.assert_array_equal(got[band].values, local[band].values)

    failures = collect_read_failures(client)
    geobox = cube.odc.geobox
    ys, xs = cube["B03"].chunks[1], cube["B03"].chunks[2]
    expected_bounds = set()
    for y0, height in zip(np.cumsum((0, *ys[:-1])), ys, strict=True):
        for x0, width in zip(np.cumsum((0, *xs[:-1])), xs, strict=True):
            box = geobox[y0 : y0 + height, x0 : x0 + width].boundingbox
            expected_bounds.add((box.left, box.bottom, box.right, box.top))
    assert {f.bounds for f in failures} == expected_bounds  # one failure per chunk read
    for failure in failures:
        assert failure.href == server.href(Path(server.root / name))  # no token, no query
        assert failure.reason == "HTTP 503" and failure.attempts == 4
        assert failure.context == "tile 7" and failure.crs == "EPSG:32633"
        assert name in failure.describe() and "[tile 7]" in failure.describe()


def test_a_missing_asset_is_not_retried(served):
    server, items, _ = served
    broken = [item.clone() for item in items]
    broken[0].assets["B04"].href = server.url + "/files/gone_B04.tif"
    config = CubeConfig(**{**CONFIG.__dict__, "on_read_error": "count"})
    # One thread: two threads that open the missing asset at the same moment each ask the server
    # before GDAL's cache has recorded the 404, so the request count under threads is a race.
    load_cube(broken, config).compute(scheduler="synchronous")
    failures = collect_read_failures()
    assert failures and all(f.reason == "not found" and f.attempts == 1 for f in failures)
    # One request: GDAL's cache answers the other chunks' reads of the missing asset.
    assert len(server.file_requests(404)) == 1 < len(failures)


# ------------------------------------------------------------------------------------------------
# Tokens: signed at read time, re-signed when refused
# ------------------------------------------------------------------------------------------------


def _halves(cube: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    split = CONFIG.chunk_size
    return cube.isel(x=slice(0, split)), cube.isel(x=slice(split, None))


@pytest.mark.parametrize("distributed", [False, True], ids=["threads", "cluster"])
def test_a_token_that_expires_mid_run_is_re_signed(served, request, distributed):
    server, items, local = served
    server.require_tokens(lifetime_s=600)
    signer = TokenSigner(server.token_url)
    signer.forget_tokens()
    client = request.getfixturevalue("client") if distributed else None
    cube = load_cube(items, CONFIG, signer=signer)
    assert server.requests == []  # nothing signed (or read) when the graph is built

    first, second = _halves(cube)
    got_first = first.compute(scheduler=None if distributed else "threads")
    issued_before = _tokens_issued(server)
    server.expire_tokens()  # every cached token dies while the signers still hold it
    got_second = second.compute(scheduler=None if distributed else "threads")

    _assert_same(xr.concat([got_first, got_second], dim="x"), local)
    refused = server.file_requests(403)
    assert refused, "the second half must have met the expired token"
    assert _tokens_issued(server) > issued_before  # and signed again
    assert all(r.token is not None for r in server.file_requests())
    assert collect_read_failures(client) == []


def test_tokens_are_renewed_before_they_expire(served):
    server, items, local = served
    server.require_tokens(lifetime_s=1.0)
    signer = TokenSigner(server.token_url, renew_margin_s=0.5)
    signer.forget_tokens()
    got = load_cube(items, CONFIG, signer=signer).compute(scheduler="threads")
    _assert_same(got, local)
    assert _tokens_issued(server) >= 1


def _tokens_issued(server: AssetServer) -> int:
    return sum(1 for r in server.requests if r.path == "/token")


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "signed", "expected"),
    [
        ("HTTP response code: 503", False, ("HTTP 503", "retry")),
        ("HTTP response code: 429", False, ("HTTP 429", "retry")),
        ("HTTP response code: 403", True, ("HTTP 403 (token refused)", "resign")),
        ("HTTP response code: 403", False, ("HTTP 403 (token refused)", "give_up")),
        ("HTTP response code: 404", True, ("not found", "give_up")),
        ("CURL error: Operation timed out after 1001 milliseconds", False, ("timeout", "retry")),
        ("/data/x.tif: No such file or directory", False, ("not found", "give_up")),
        ("TIFFReadEncodedTile() failed.", False, ("read error", "retry")),
        (
            "/data/T33UUP_500m_B04.tif: TIFFReadEncodedTile() failed.",
            False,
            ("read error", "retry"),
        ),
    ],
)
def test_diagnose_gdal_errors(text, signed, expected):
    assert diagnose(RuntimeError(text), signed=signed) == expected


def test_backoff_doubles_is_capped_and_jittered():
    import random

    retry = ReadRetry(max_attempts=6, backoff_s=1.0, backoff_max_s=5.0)
    rng = random.Random(0)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)):
        waits = [retry.delay_s(attempt, rng) for _ in range(200)]
        assert full / 2 <= min(waits) and max(waits) <= full
        assert max(waits) - min(waits) > full / 4  # jittered, not constant
    with pytest.raises(ValueError, match="max_attempts"):
        ReadRetry(max_attempts=0)


def test_gdal_settings_are_in_one_constant_and_overridable():
    assert GDAL_SETTINGS["GDAL_HTTP_RETRY_CODES"] == "429,500,502,503,504"
    try:
        applied = configure_gdal(GDAL_HTTP_TIMEOUT="7")
        assert applied["GDAL_HTTP_TIMEOUT"] == "7"
        assert {k: v for k, v in applied.items() if k != "GDAL_HTTP_TIMEOUT"} == {
            k: v for k, v in GDAL_SETTINGS.items() if k != "GDAL_HTTP_TIMEOUT"
        }
        with pytest.raises(ValueError, match="upper-case"):
            configure_gdal(gdal_http_timeout="7")
    finally:
        configure_gdal()


# ------------------------------------------------------------------------------------------------
# Search: POST pages retried on 429 (honouring Retry-After) and 503, against the real STAC API
# ------------------------------------------------------------------------------------------------


class _FaultyProxy(BaseHTTPRequestHandler):
    """Forwards to the STAC API; POST /search requests may meet the injected faults."""

    server: Any

    def log_message(self, *args) -> None:  # quiet
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        is_search = self.command == "POST" and self.path.endswith("/search")
        fault = next((f for f in self.server.faults if is_search and f.fires(self.path)), None)
        self.server.log.append((time.monotonic(), self.command, self.path, body, fault))
        if fault is not None:
            self.send_response(fault.status)
            if fault.retry_after_s is not None:
                self.send_header("Retry-After", str(fault.retry_after_s))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = urllib.request.Request(
            self.server.upstream + self.path,
            data=body,
            method=self.command,
            headers={"Content-Type": "application/json", "Host": self.headers["Host"]},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle


@pytest.mark.stac_server
def test_search_pages_are_retried_on_429_with_retry_after_and_on_503(stac_api):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FaultyProxy)
    server.upstream = stac_api.url  # type: ignore[attr-defined]
    server.log = []  # type: ignore[attr-defined]
    # The 2nd page meets a 429 (Retry-After: 1 s), the 3rd page a 503.
    server.faults = [  # type: ignore[attr-defined]
        Fault(status=429, nth=(2,), retry_after_s=1),
        Fault(status=503, nth=(4,)),
    ]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        params = SearchParams(
            bbox=(-180, -90, 180, 90),
            datetime="2015-01-01/2030-12-31",
            catalog=url,
            page_size=5,
            max_retries=3,
            backoff_factor=0.0,  # any wait below comes from Retry-After
        )
        found = search(params)
        expected = search(dataclasses.replace(params, catalog=stac_api.url))
    finally:
        server.shutdown()
        server.server_close()
    assert [item.id for item in found] == [item.id for item in expected]
    posts = [entry for entry in server.log if entry[1] == "POST"]
    assert len(posts) >= 4, "needs at least three pages to fail the 2nd and 3rd"
    throttled = next(
        i for i, entry in enumerate(posts) if entry[4] is not None and entry[4].status == 429
    )
    # the same page (same body: the page token) asked again, after the server's Retry-After
    assert posts[throttled + 1][3] == posts[throttled][3]
    assert posts[throttled + 1][0] - posts[throttled][0] >= 0.9
    unavailable = next(
        i for i, entry in enumerate(posts) if entry[4] is not None and entry[4].status == 503
    )
    assert posts[unavailable + 1][3] == posts[unavailable][3] and posts[unavailable + 1][4] is None
