"""Reading rasters for odc-stac: URL signing at read time, retries, and read-failure accounting.

odc-stac hands every band read to a *reader driver*. Ours wraps odc-loader's rasterio
driver to do three things the default does not:

1. **Sign at read time.** Planetary Computer SAS tokens last about 45 minutes; signing
   hrefs when the dask graph is built breaks long jobs. The graph carries unsigned
   hrefs and each read signs its own (``planetary_computer.sign`` caches tokens per
   process and renews them before they expire). A read refused with HTTP 403 (a token
   that died early: clock skew, revocation, a long queue) makes the signer forget its
   cached tokens and the read is signed again.
2. **Retry what can succeed later.** GDAL retries a request itself (``GDAL_HTTP_MAX_RETRY``
   on the statuses of ``GDAL_HTTP_RETRY_CODES`` and on timeouts). When a read still fails,
   the reader waits (capped exponential backoff with jitter: GDAL does not hand the HTTP
   response headers to rasterio, so ``Retry-After`` cannot be honoured here) and reads
   again with GDAL's cache bypassed for that asset: GDAL remembers a failed URL and would
   otherwise answer the retry from its cache without asking the server. Missing assets
   (404, no such file) are not retried.
3. **Account for failures.** odc-stac's ``fail_on_error=False`` silently turns a failed
   read into nodata. Here every failure that survives its retries is recorded
   (``collect_read_failures``) with the asset (href without its token), the reason, the
   output-grid bounds of the chunk and a caller's ``context`` label (a tile id), and, by
   default, raised with the asset named. With ``on_error="count"`` the pixels become
   nodata (NaN) but the failure is counted and reported by the run, never silent.

Failures recorded on a ``distributed`` worker stay in that worker's list until
``collect_read_failures(client)`` takes them (and are published as worker events under
``READ_FAILURE_TOPIC`` for the dashboard).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.errors
from odc.loader._rio import RioDriver, rio_read
from odc.stac._mdtools import StacAuxReader, StacMDParser

log = logging.getLogger(__name__)

READ_FAILURE_TOPIC = "phyvlm-cr-read-failure"
ReadErrorPolicy = Literal["raise", "count"]
#: What a failed read attempt calls for: wait and retry, sign again and retry, or give up.
Remedy = Literal["retry", "resign", "give_up"]

_RASTERIO_ERRORS = (
    rasterio.errors.RasterioError,
    rasterio.errors.RasterioIOError,
    rasterio.errors.RasterBlockError,
    rasterio.errors.WarpOperationError,
    rasterio.errors.WindowEvaluationError,
)

#: GDAL error texts: "HTTP response code: 503", "CURL error: Operation timed out after ...".
_HTTP_STATUS = re.compile(r"HTTP response code:\s*(\d{3})", re.IGNORECASE)
_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_MISSING = re.compile(r"no such file|does not exist", re.IGNORECASE)
#: GDAL's network filesystems for the URL schemes an asset href may use.
_VSI_PREFIX = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
}


class _DropOdcAttemptErrors(logging.Filter):
    """odc-loader logs every failed attempt at ERROR, including those a retry then fixes; this
    module reports them itself (retries at INFO, failures at WARNING or raised)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load")


logging.getLogger("odc.loader._rio").addFilter(_DropOdcAttemptErrors())


class ReadFailedError(RuntimeError):
    """A band could not be read after all retries."""


@dataclass(frozen=True)
class ReadFailure:
    """One band read that failed for good.

    href: the asset, without its query string (no token in logs or reports).
    band: band index in the asset. error: GDAL's last message. attempts: reads tried.
    reason: a short cause ("HTTP 503", "timeout", "HTTP 403 (token refused)", "not found").
    context: the caller's label for the work (a tile id), "" when none was given.
    bounds: (left, bottom, right, top) of the chunk being read, in ``crs`` (the output grid).
    """

    href: str
    band: int
    error: str
    attempts: int
    reason: str = ""
    context: str = ""
    bounds: tuple[float, float, float, float] | None = None
    crs: str = ""

    def __post_init__(self) -> None:
        if self.bounds is not None and not isinstance(self.bounds, tuple):
            # worker events arrive as JSON-like lists; keep the failure hashable
            object.__setattr__(self, "bounds", tuple(float(v) for v in self.bounds))

    def describe(self) -> str:
        where = f" [{self.context}]" if self.context else ""
        if self.bounds is not None:
            box = ", ".join(f"{v:.0f}" for v in self.bounds)
            where += f" chunk ({box}) {self.crs}".rstrip()
        why = f"{self.reason}: " if self.reason else ""
        return f"{self.href} (band {self.band}){where} after {self.attempts} attempt(s): {why}{self.error}"


@dataclass(frozen=True)
class ReadRetry:
    """How often and how patiently a failed band read is tried again (after GDAL's own retries).

    The wait before attempt n+1 is ``min(backoff_max_s, backoff_s * 2**(n-1))``, of which a
    random half is dropped (jitter: workers hit by one throttling wave do not come back in
    step). Re-signing after a refused token does not wait.
    """

    max_attempts: int = 4
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (1: no retry), got {self.max_attempts}")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff_s and backoff_max_s must be >= 0 seconds")

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        full = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return full / 2 + (rng or random).uniform(0, full / 2)


_local_failures: list[ReadFailure] = []
_local_lock = threading.Lock()


def record_read_failure(failure: ReadFailure) -> None:
    """Record a failure in this process (a worker keeps its own list until it is collected).

    On a ``distributed`` worker it is also published as a worker event (topic
    ``READ_FAILURE_TOPIC``) for the dashboard and for anyone watching the cluster; the count
    comes from the workers' lists, since an event sent from a task thread can reach the
    scheduler after the computation that raised it has returned.
    """
    with _local_lock:
        _local_failures.append(failure)
    try:
        from distributed import get_worker

        get_worker().log_event(READ_FAILURE_TOPIC, asdict(failure))
    except (ImportError, ValueError):
        pass  # not running on a distributed worker


def _take_local_failures(clear: bool = True) -> list[dict[str, Any]]:
    with _local_lock:
        found = [asdict(f) for f in _local_failures]
        if clear:
            _local_failures.clear()
    return found


def collect_read_failures(client: Any | None = None, *, clear: bool = True) -> list[ReadFailure]:
    """All read failures recorded so far, in this process and (given a client) on its workers.

    ``clear`` empties the lists, so calling it once before a run on a reused cluster (as
    ``flows.tiled`` does) drops older failures, and once after each tile gives that tile's.
    Failures recorded by a worker that died before the collection are lost with it (the
    tasks it ran are run again elsewhere and record their failures there).
    """
    records = _take_local_failures(clear)
    if client is not None:
        for found_on_worker in client.run(_take_local_failures, clear).values():
            records.extend(found_on_worker)
    known = {f.name for f in fields(ReadFailure)}
    failures = [ReadFailure(**{k: v for k, v in r.items() if k in known}) for r in records]
    return list(dict.fromkeys(failures))


def _strip_query(href: str) -> str:
    """Drop a SAS token from an href before it goes into a log or an error message."""
    return href.split("?", 1)[0]


def diagnose(err: Exception, *, signed: bool) -> tuple[str, Remedy]:
    """(short reason, remedy) for a failed read, from GDAL's error text."""
    text = str(err)
    status = _HTTP_STATUS.search(text)
    if status is not None:
        code = int(status[1])
        if code == 403:
            return "HTTP 403 (token refused)", "resign" if signed else "give_up"
        if code in (404, 410):
            return "not found", "give_up"
        if code in (400, 401):
            return f"HTTP {code}", "give_up"
        return f"HTTP {code}", "retry"  # 429, 5xx and anything unusual
    if _TIMEOUT.search(text):
        return "timeout", "retry"
    if _MISSING.search(text):
        return "not found", "give_up"
    return "read error", "retry"  # truncated blocks, dropped connections, ...


def _vsi_prefix(href: str) -> str | None:
    """GDAL's network filesystem of an href ("/vsicurl/" for https), None for local files."""
    scheme, sep, _ = href.partition("://")
    return _VSI_PREFIX.get(scheme.lower()) if sep else None


class _Signing:
    """The signer of one driver, and what to do when its token is refused."""

    def __init__(self, signer: Callable[[str], str] | None) -> None:
        self.signer = signer

    def sign(self, href: str) -> str:
        return self.signer(href) if self.signer is not None else href

    def forget_tokens(self) -> None:
        forget = getattr(self.signer, "forget_tokens", None)
        if callable(forget):
            forget()


class AccountingReader:
    def __init__(self, src: Any, ctx: Any, driver: AccountingRioDriver) -> None:
        self._src = src
        self._ctx = ctx
        self._driver = driver

    def read(
        self, cfg: Any, dst_geobox: Any, *, dst: np.ndarray | None = None, selection: Any = None
    ):
        drv = self._driver
        signing = _Signing(drv.signer)
        href = self._src.uri
        strict = replace(cfg, fail_on_error=True)
        last_error: Exception | None = None
        reason = ""
        attempt = 0
        for attempt in range(1, drv.retry.max_attempts + 1):
            source = self._src.patch(uri=signing.sign(href))
            try:
                if attempt == 1:
                    return rio_read(source, strict, dst_geobox, dst=dst, selection=selection)
                with _uncached(href):
                    return rio_read(source, strict, dst_geobox, dst=dst, selection=selection)
            except _RASTERIO_ERRORS as err:
                last_error = err
                reason, remedy = diagnose(err, signed=drv.signer is not None)
                if remedy == "give_up" or attempt == drv.retry.max_attempts:
                    break
                if remedy == "resign":
                    signing.forget_tokens()
                    log.info("re-signing %s: %s", _strip_query(href), reason)
                    continue
                delay = drv.retry.delay_s(attempt)
                log.info("retrying %s in %.1fs (%s)", _strip_query(href), delay, reason)
                time.sleep(delay)
        failure = ReadFailure(
            href=_strip_query(href),
            band=int(self._src.band),
            error=str(last_error),
            attempts=attempt,
            reason=reason,
            context=drv.context,
            **_chunk_extent(dst_geobox),
        )
        record_read_failure(failure)
        if drv.on_error == "raise":
            raise ReadFailedError(
                f"could not read {failure.describe()}. Check that the asset exists and is "
                "readable (for Planetary Computer: network access and signing), or pass "
                "on_error='count' (CLI: --on-read-error count) to write nodata there and "
                "have the failure counted in the run summary."
            ) from last_error
        log.warning("read failed, writing nodata: %s", failure.describe())
        empty = dst[0:0, 0:0] if dst is not None else np.ndarray((0, 0), dtype=cfg.dtype)
        return np.s_[0:0, 0:0], empty


class _uncached:
    """Read without GDAL's cache of network files during a retry.

    GDAL caches a failed URL and answers the next open from that cache without a request.
    ``CPL_VSIL_CURL_NON_CACHED`` lists path prefixes whose cache is not used; GDAL splits
    the list at ':', so a full URL cannot be given and the prefix is the filesystem
    ("/vsicurl/"). Outside the main thread rasterio sets it for this thread only, so just
    the retried read goes uncached; a success refills the cache for later chunks.
    """

    def __init__(self, href: str) -> None:
        prefix = _vsi_prefix(href)
        self._env = rasterio.Env(CPL_VSIL_CURL_NON_CACHED=prefix) if prefix else None

    def __enter__(self) -> None:
        if self._env is not None:
            self._env.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._env is not None:
            self._env.__exit__(*exc)


def _chunk_extent(geobox: Any) -> dict[str, Any]:
    """{bounds, crs} of the chunk being read (empty when the geobox does not say)."""
    try:
        box, crs = geobox.boundingbox, geobox.crs
    except AttributeError:
        return {}
    name = f"EPSG:{crs.epsg}" if getattr(crs, "epsg", None) else str(crs)
    return {"bounds": (box.left, box.bottom, box.right, box.top), "crs": name}


class AccountingRioDriver(RioDriver):
    """odc-loader's rasterio driver plus read-time signing, retries and failure accounting.

    signer: ``href -> signed href``, called for every read attempt on the worker; when it
        has a ``forget_tokens()`` method, a read refused with 403 calls it and signs again.
    on_error: "raise" (a ReadFailedError naming the asset) or "count" (nodata, recorded).
    retry: attempts and backoff (``max_attempts``/``backoff_s`` are shortcuts for it).
    context: a label recorded with every failure of this load (a tile id).
    """

    def __init__(
        self,
        *,
        signer: Callable[[str], str] | None = None,
        on_error: ReadErrorPolicy = "raise",
        max_attempts: int | None = None,
        backoff_s: float | None = None,
        retry: ReadRetry | None = None,
        context: str = "",
    ) -> None:
        if on_error not in ("raise", "count"):
            raise ValueError(f"on_error must be 'raise' or 'count', not {on_error!r}")
        super().__init__(md_parser=StacMDParser({}), aux_reader=StacAuxReader())
        retry = retry or ReadRetry()
        if max_attempts is not None:
            retry = replace(retry, max_attempts=max(1, int(max_attempts)))
        if backoff_s is not None:
            retry = replace(retry, backoff_s=float(backoff_s))
        self.signer = signer
        self.on_error = on_error
        self.retry = retry
        self.context = str(context)

    def open(self, src: Any, ctx: Any) -> AccountingReader:  # type: ignore[override]
        return AccountingReader(src, ctx, self)


class PlanetaryComputerSigner:
    """Sign hrefs with Planetary Computer SAS tokens (cached per process, renewed near expiry).

    ``forget_tokens`` drops the package's token cache, so a read refused with 403 gets a
    fresh token. Stateless itself: it pickles into the graph and signs on each worker.
    """

    def __call__(self, href: str) -> str:
        import planetary_computer

        return planetary_computer.sign(href)

    def forget_tokens(self) -> None:
        try:
            from planetary_computer import sas

            sas.TOKEN_CACHE.clear()
        except (ImportError, AttributeError):
            pass

    def __repr__(self) -> str:
        return "PlanetaryComputerSigner()"


#: The signer for Planetary Computer assets (``flows.steps`` passes it for PC catalogs).
planetary_computer_signer = PlanetaryComputerSigner()


#: Every GDAL / network setting of the project, in one place. odc-loader captures the active
#: settings when the dask graph is built and restores them around each read on the workers,
#: so ``configure_gdal()`` on the client, before ``load_cube``, reaches every worker.
GDAL_SETTINGS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # COG reads never list the container
    # GDAL's own retries inside one read (GDAL >= 3.10 takes the codes; older: 429/502/503/504):
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",  # seconds, doubled (with jitter) at each retry by GDAL
    "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",  # a whole request; a stalled one counts as a timeout, retried
    "GDAL_HTTP_MULTIRANGE": "YES",  # parallel range requests for the blocks of one read
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "VSI_CACHE": "TRUE",
}


def configure_gdal(client: Any | None = None, **overrides: str) -> dict[str, Any]:
    """Make ``GDAL_SETTINGS`` (with ``overrides``) the settings of odc-stac reads; return them.

    Call it before ``load_cube``: the settings travel with the graph to the workers.
    ``overrides`` replace single keys (tests use short timeouts). ``client`` is passed on to
    odc-stac, whose older versions installed the settings on the workers through it.
    """
    from odc.stac import configure_rio

    unknown = [key for key in overrides if not key.isupper()]
    if unknown:
        raise ValueError(f"GDAL options are upper-case names such as GDAL_HTTP_TIMEOUT: {unknown}")
    settings: dict[str, Any] = {**GDAL_SETTINGS, **{k: str(v) for k, v in overrides.items()}}
    configure_rio(cloud_defaults=True, client=client, **settings)
    return settings
