"""A real STAC API on 127.0.0.1 for the tests: stac-fastapi-pgstac over a throwaway PostgreSQL.

This is the same server software Planetary Computer runs (stac-fastapi-pgstac on PostgreSQL +
PostGIS + pgstac), started from scratch in a temporary directory:

1. ``initdb`` a PostgreSQL cluster (as the ``postgres`` user when the tests run as root: the
   server refuses to run as root), listening on 127.0.0.1:<free port> and a unix socket in the
   temporary directory, with fsync off (it is thrown away);
2. ``pypgstac`` migrates the pgstac schema and loads the collection and items;
3. ``uvicorn stac_fastapi.pgstac.app:create_app --factory`` serves it on 127.0.0.1:<free port>.

Use the session fixture ``stac_api`` (registered through ``pytest_plugins`` in
``tests/conftest.py``)::

    @pytest.mark.stac_server
    def test_something(stac_api):
        client = pystac_client.Client.open(stac_api.url)

or, outside pytest, ``with running_stac_api(collection, items) as api: ...``.

Binaries are looked up in ``$PHYVLM_PG_BINDIR``, ``pg_config --bindir`` on PATH, then
``/usr/lib/postgresql/<newest>/bin``. When PostgreSQL or PostGIS is missing the fixture skips
(``.ci/install-system-deps`` installs them); under ``CI`` it fails instead.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger(__name__)

COLLECTION_ID = "sentinel-2-l2a"
START_TIMEOUT_S = 60.0
DB_NAME = "pgstac"
DB_USER = "postgres"
#: Trust authentication on 127.0.0.1: asyncpg still wants a password in its DSN.
DB_PASSWORD = "unused"

#: Queryables as Planetary Computer registers them for sentinel-2-l2a (a subset): the wrapper
#: tells pgstac how to compare a property (to_float: numerically).
QUERYABLES = (
    ("eo:cloud_cover", {"type": "number", "minimum": 0, "maximum": 100}, "to_float"),
    ("s2:mgrs_tile", {"type": "string"}, "to_text"),
    ("s2:processing_baseline", {"type": "string"}, "to_text"),
    ("platform", {"type": "string"}, "to_text"),
)


class StacServerUnavailable(RuntimeError):
    """PostgreSQL, PostGIS or the Python server packages are not installed."""


# --------------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------------


def sentinel2_l2a_collection() -> dict[str, Any]:
    """A collection document shaped like Planetary Computer's ``sentinel-2-l2a``."""
    bands = {
        "B01": (443, 60),
        "B02": (490, 10),
        "B03": (560, 10),
        "B04": (665, 10),
        "B05": (705, 20),
        "B06": (740, 20),
        "B07": (783, 20),
        "B08": (842, 10),
        "B8A": (865, 20),
        "B09": (945, 60),
        "B11": (1610, 20),
        "B12": (2190, 20),
    }
    item_assets: dict[str, Any] = {
        key: {
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "gsd": gsd,
            "eo:bands": [{"name": key, "center_wavelength": nm / 1000}],
        }
        for key, (nm, gsd) in bands.items()
    }
    item_assets["SCL"] = {
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "gsd": 20,
        "title": "Scene classfication map (SCL)",
    }
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": COLLECTION_ID,
        "title": "Sentinel-2 Level-2A",
        "description": "Sentinel-2 L2A surface reflectance (test copy of the Planetary Computer collection).",
        "license": "proprietary",
        "keywords": [
            "Sentinel",
            "Copernicus",
            "ESA",
            "Satellite",
            "Global",
            "Imagery",
            "Reflectance",
        ],
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
            "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
            "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
            "https://stac-extensions.github.io/table/v1.2.0/schema.json",
        ],
        "providers": [
            {"name": "ESA", "roles": ["producer", "licensor"], "url": "https://sentinel.esa.int/"},
            {"name": "Esri", "roles": ["processor"], "url": "https://www.esri.com/"},
            {
                "name": "Microsoft",
                "roles": ["host", "processor"],
                "url": "https://planetarycomputer.microsoft.com",
            },
        ],
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [["2015-06-27T10:25:31Z", None]]},
        },
        "summaries": {
            "platform": ["Sentinel-2A", "Sentinel-2B"],
            "constellation": ["Sentinel 2"],
            "instruments": ["msi"],
            "gsd": [10, 20, 60],
            "eo:cloud_cover": {"minimum": 0, "maximum": 100},
        },
        "item_assets": item_assets,
        "links": [
            {
                "rel": "license",
                "href": "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice",
            }
        ],
        "msft:region": "westeurope",
        "msft:container": "sentinel2-l2",
        "msft:storage_account": "sentinel2l2a01",
        "msft:short_description": "The Sentinel-2 program provides global imagery in thirteen spectral bands.",
    }


def read_item_documents(pc_items_dir: Path) -> list[dict[str, Any]]:
    """The real Planetary Computer items: every ``*.json`` Feature plus the recorded search page.

    Deduplicated by id (three items of the search page also have their own file).
    """
    docs: dict[str, dict[str, Any]] = {}
    paths = sorted(pc_items_dir.glob("*.json")) + sorted(
        (pc_items_dir / "search-page").glob("*.json")
    )
    for path in paths:
        doc = json.loads(path.read_text())
        features = doc.get("features", []) if doc.get("type") == "FeatureCollection" else [doc]
        for feature in features:
            if feature.get("type") == "Feature":
                docs.setdefault(feature["id"], feature)
    return list(docs.values())


def _rename(doc: dict[str, Any], new_id: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["id"] = new_id
    out["links"] = [link for link in out.get("links", []) if link.get("rel") not in ("self",)]
    return out


#: Synthetic items derived from real ones, with the reason each exists.
DUPLICATE_OLD_BASELINE_ID = "S2B_MSIL2A_20190629T212529_R043_T06VVN_20190630T101530"
REAL_T06VVN_ID = "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531"
DUPLICATE_NEW_BASELINE_ID = "S2A_MSIL2A_20190101T000001_R116_T58UGE_20230315T120000"
REAL_T58UGE_ID = "S2A_MSIL2A_20190101T000001_R116_T58UGE_20201007T214656"
PROJ_CODE_ID = "S2B_MSIL2A_20240419T095549_R122_T46XEQ_20240419T130000"
SOURCE_T46XER_ID = "S2B_MSIL2A_20240419T095549_R122_T46XER_20240419T124342"


def synthetic_items(real: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Edited copies of real items covering what the real sample lacks.

    - ``DUPLICATE_OLD_BASELINE_ID``: the 2019-06-29 T06VVN acquisition again, processed earlier
      with baseline 02.07 (PC holds such pairs); deduplication must keep the real 02.12 item.
    - ``DUPLICATE_NEW_BASELINE_ID``: the 2019-01-01 T58UGE acquisition reprocessed with baseline
      05.09; deduplication must keep it, and its DN carry the +1000 offset despite the 2019 date.
    - ``PROJ_CODE_ID``: a 2024 item moved to tile 46XEQ, with ``proj:code`` instead of
      ``proj:epsg`` (newer projection extension) and 5 % cloud cover (a numeric-comparison trap
      for servers that compare "5.0" < "30" as text).
    """
    by_id = {doc["id"]: doc for doc in real}
    out = []

    old = _rename(by_id[REAL_T06VVN_ID], DUPLICATE_OLD_BASELINE_ID)
    props = old["properties"]
    props["s2:processing_baseline"] = "02.07"
    props["s2:product_uri"] = "S2B_MSIL2A_20190629T212529_N0207_R043_T06VVN_20190630T101530.SAFE"
    props["s2:generation_time"] = "2019-06-30T10:15:30.000000Z"
    props["eo:cloud_cover"] = 0.5
    out.append(old)

    new = _rename(by_id[REAL_T58UGE_ID], DUPLICATE_NEW_BASELINE_ID)
    props = new["properties"]
    props["s2:processing_baseline"] = "05.09"
    props["s2:product_uri"] = "S2A_MSIL2A_20190101T000001_N0509_R116_T58UGE_20230315T120000.SAFE"
    props["s2:generation_time"] = "2023-03-15T12:00:00.000000Z"
    out.append(new)

    code = _rename(by_id[SOURCE_T46XER_ID], PROJ_CODE_ID)
    props = code["properties"]
    epsg = props.pop("proj:epsg")
    props["proj:code"] = f"EPSG:{epsg}"
    props["s2:mgrs_tile"] = "46XEQ"
    props["eo:cloud_cover"] = 5.0
    code["stac_extensions"] = [
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
        if "projection" in ext
        else ext
        for ext in code.get("stac_extensions", [])
    ]
    for asset in code["assets"].values():
        if "proj:epsg" in asset:
            asset["proj:code"] = f"EPSG:{asset.pop('proj:epsg')}"
    out.append(code)
    return out


def server_items(pc_items_dir: Path) -> list[dict[str, Any]]:
    """Everything the test server holds: real PC items (unique ids) plus the synthetic ones."""
    real = read_item_documents(pc_items_dir)
    return real + synthetic_items(real)


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def find_pg_bindir() -> Path:
    """Directory with initdb/postgres; raise StacServerUnavailable naming the fix."""
    candidates: list[Path] = []
    if os.environ.get("PHYVLM_PG_BINDIR"):
        candidates.append(Path(os.environ["PHYVLM_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    versioned.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates.extend(Path(p) for p in reversed(versioned))
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise StacServerUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found: run .ci/install-system-deps "
        "(Debian/Ubuntu: apt-get install postgresql postgresql-<version>-postgis-3) or set "
        "PHYVLM_PG_BINDIR to the directory holding initdb"
    )


def check_postgis(bindir: Path) -> None:
    sharedir = None
    if (bindir / "pg_config").is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(bindir / "pg_config"), "--sharedir"],
                capture_output=True,
                text=True,
                check=True,
            )
            sharedir = Path(out.stdout.strip())
    if sharedir is None:  # Debian layout: /usr/lib/postgresql/15/bin -> /usr/share/postgresql/15
        sharedir = Path("/usr/share/postgresql") / bindir.parent.name
    if not (sharedir / "extension" / "postgis.control").is_file():
        raise StacServerUnavailable(
            f"PostGIS is not installed for the PostgreSQL in {bindir} (no "
            f"{sharedir}/extension/postgis.control): run .ci/install-system-deps "
            f"(Debian/Ubuntu: apt-get install postgresql-{bindir.parent.name}-postgis-3)"
        )


def check_python_packages() -> None:
    missing = []
    for module in ("pypgstac", "psycopg", "stac_fastapi.pgstac", "uvicorn", "asyncpg"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise StacServerUnavailable(
            f"missing Python packages {missing}: pip install -e '.[stac-server]'"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """Popen kwargs that drop root to the ``postgres`` user (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise StacServerUnavailable("running as root and no 'postgres' user to run PostgreSQL as")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


@dataclass
class StacApi:
    """A running stac-fastapi-pgstac: ``url`` to open with pystac-client, ``dsn`` for pypgstac."""

    url: str
    dsn: str
    workdir: Path
    items: list[dict[str, Any]]
    collection: dict[str, Any]
    startup_s: float
    timings: dict[str, float] = field(default_factory=dict)

    def item_ids(self) -> set[str]:
        return {item["id"] for item in self.items}


@contextlib.contextmanager
def running_stac_api(
    collection: dict[str, Any], items: list[dict[str, Any]], *, queryables: bool = True
) -> Iterator[StacApi]:
    """Start PostgreSQL + pgstac + stac-fastapi-pgstac, load the items, yield, tear down."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    check_python_packages()
    bindir = find_pg_bindir()
    check_postgis(bindir)
    run_as = _run_as()

    workdir = Path(tempfile.mkdtemp(prefix="phyvlm-pgstac-"))
    datadir, sockdir, pglog = workdir / "data", workdir / "sock", workdir / "postgres.log"
    sockdir.mkdir()
    if run_as:
        for path in (workdir, sockdir):
            os.chown(path, run_as["user"], run_as["group"])
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    for var in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE", "PGOPTIONS"):
        env.pop(var, None)

    postgres: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    api_log = workdir / "uvicorn.log"
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(datadir), "-U", DB_USER, "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            cwd=workdir, env=env, check=True, capture_output=True, **run_as,
        )  # fmt: skip
        timings["initdb"] = time.perf_counter() - t0
        pg_port = free_port()
        with open(pglog, "wb") as logf:
            postgres = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(datadir), "-p", str(pg_port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockdir}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=40", "-c", "shared_buffers=64MB"],
                cwd=workdir, env=env, stdout=logf, stderr=subprocess.STDOUT, **run_as,
            )  # fmt: skip
        import psycopg

        admin_dsn = f"postgresql://{DB_USER}@127.0.0.1:{pg_port}/postgres"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=2) as conn:
                    conn.execute(f"CREATE DATABASE {DB_NAME}")
                break
            except psycopg.OperationalError as exc:
                if postgres.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {exc}\n{_tail(pglog)}") from exc
                time.sleep(0.1)
        timings["postgres"] = time.perf_counter() - t0
        dsn = f"postgresql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{pg_port}/{DB_NAME}"

        # Start the API now: its imports take seconds and overlap the migration. Its pool only
        # connects at start-up; pgstac tables are needed from the first request on.
        api_port = free_port()
        api_env = {
            **env,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(pg_port),
            "PGUSER": DB_USER,
            "PGPASSWORD": DB_PASSWORD,
            "PGDATABASE": DB_NAME,
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
        }
        with open(api_log, "wb") as logf:
            api = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(api_port), "--log-level", "warning"],
                cwd=workdir, env=api_env, stdout=logf, stderr=subprocess.STDOUT,
            )  # fmt: skip

        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods
        from pypgstac.migrate import Migrate

        with PgstacDB(dsn=dsn) as db:
            Migrate(db).run_migration()
            timings["migrate"] = time.perf_counter() - t0
            loader = Loader(db=db)
            loader.load_collections(iter([collection]), Methods.insert)
            if queryables:  # after the collection: queryables reference it
                with db.connect().cursor() as cur:
                    for name, definition, wrapper in QUERYABLES:
                        cur.execute(
                            "INSERT INTO pgstac.queryables (name, collection_ids, definition, property_wrapper) "
                            "VALUES (%s, %s, %s, %s)",
                            (name, [collection["id"]], json.dumps(definition), wrapper),
                        )
                db.connection.commit()
            loader.load_items(iter(copy.deepcopy(items)), Methods.insert_ignore)
        timings["load"] = time.perf_counter() - t0

        url = f"http://127.0.0.1:{api_port}"
        while True:
            try:
                with urllib.request.urlopen(
                    f"{url}/collections/{collection['id']}", timeout=2
                ) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"stac-fastapi-pgstac did not answer on {url} within {START_TIMEOUT_S:.0f} s:\n"
                    f"{_tail(api_log)}"
                )
            time.sleep(0.1)
        startup = time.perf_counter() - t0
        timings["api"] = startup
        log.info("stac-fastapi-pgstac on %s after %.1f s (%s)", url, startup, timings)
        yield StacApi(url, dsn, workdir, items, collection, startup, timings)
    finally:
        if api is not None:
            _stop(api, signal.SIGTERM)
        if postgres is not None:
            _stop(postgres, signal.SIGINT)  # SIGINT = "fast" shutdown
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# --------------------------------------------------------------------------------------------
# pytest fixture
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stac_api() -> Iterator[StacApi]:
    """Session-wide stac-fastapi-pgstac on 127.0.0.1 holding ``server_items()``.

    Skips when PostgreSQL/PostGIS or the server packages are missing, unless ``CI`` is set.
    """
    from tests.conftest import shared_data

    items = server_items(shared_data("pc-stac-items"))
    try:
        with running_stac_api(sentinel2_l2a_collection(), items) as api:
            yield api
    except StacServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the STAC API test server cannot start under CI: {exc}")
        pytest.skip(f"no local STAC API server: {exc}")
