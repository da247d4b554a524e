"""Reading rasters for odc-stac: URL signing at read time, retries, and read-failure accounting.

odc-stac hands every band read to a *reader driver*. Ours wraps odc-loader's rasterio
driver to do three things the default does not:

1. **Sign at read time.** Planetary Computer SAS tokens last about 45 minutes; signing
   hrefs when the dask graph is built breaks long jobs. The graph carries unsigned
   hrefs and each read signs its own (``planetary_computer.sign`` caches tokens per
   process and renews them when they expire). A failed read clears the token cache
   and re-signs before retrying, which covers a token that expired mid-flight.
2. **Retry transient failures** (HTTP 429/5xx, timeouts) with exponential backoff.
3. **Account for failures.** odc-stac's ``fail_on_error=False`` silently turns a failed
   read into nodata. Here every failure that survives its retries is recorded
   (``collect_read_failures``) and, by default, raised with the asset named.
   With ``on_error="count"`` the pixels become nodata but the failure is counted and
   reported by the run, never silent.

Failures recorded on a ``distributed`` worker are published as worker events under
``READ_FAILURE_TOPIC`` so the client can collect them after compute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import rasterio.errors
from odc.loader._rio import RioDriver, rio_read
from odc.stac._mdtools import StacAuxReader, StacMDParser

log = logging.getLogger(__name__)

READ_FAILURE_TOPIC = "phyvlm-cr-read-failure"
ReadErrorPolicy = Literal["raise", "count"]

_RASTERIO_ERRORS = (
    rasterio.errors.RasterioError,
    rasterio.errors.RasterioIOError,
    rasterio.errors.RasterBlockError,
    rasterio.errors.WarpOperationError,
    rasterio.errors.WindowEvaluationError,
)


class ReadFailedError(RuntimeError):
    """A band could not be read after all retries."""


@dataclass(frozen=True)
class ReadFailure:
    href: str
    band: int
    error: str
    attempts: int

    def describe(self) -> str:
        return f"{self.href} (band {self.band}) after {self.attempts} attempt(s): {self.error}"


_local_failures: list[ReadFailure] = []
_local_lock = threading.Lock()


def record_read_failure(failure: ReadFailure) -> None:
    """Record a failure in this process and, on a distributed worker, as a worker event."""
    with _local_lock:
        _local_failures.append(failure)
    try:
        from distributed import get_worker

        get_worker().log_event(READ_FAILURE_TOPIC, asdict(failure))
    except (ImportError, ValueError):
        pass  # not running on a distributed worker


def collect_read_failures(client: Any | None = None, *, clear: bool = True) -> list[ReadFailure]:
    """All read failures recorded so far, in this process and (given a client) on its workers."""
    with _local_lock:
        found = list(_local_failures)
        if clear:
            _local_failures.clear()
    if client is not None:
        for _stamp, msg in client.get_events(READ_FAILURE_TOPIC):
            found.append(ReadFailure(**msg))
    unique = list(dict.fromkeys(found))
    return unique


def _strip_query(href: str) -> str:
    """Drop a SAS token from an href before it goes into a log or an error message."""
    return href.split("?", 1)[0]


def _is_transient(err: Exception) -> bool:
    text = str(err).lower()
    markers = ("429", "500", "502", "503", "504", "timed out", "timeout", "connection", "curl")
    return any(m in text for m in markers)


def _forget_cached_tokens() -> None:
    try:
        from planetary_computer import sas

        sas.TOKEN_CACHE.clear()
    except (ImportError, AttributeError):
        pass


class AccountingReader:
    def __init__(self, src: Any, ctx: Any, driver: AccountingRioDriver) -> None:
        self._src = src
        self._ctx = ctx
        self._driver = driver

    def read(self, cfg: Any, dst_geobox: Any, *, dst: np.ndarray | None = None, selection: Any = None):
        drv = self._driver
        strict = replace(cfg, fail_on_error=True)
        last_error: Exception | None = None
        for attempt in range(1, drv.max_attempts + 1):
            uri = drv.signer(self._src.uri) if drv.signer else self._src.uri
            try:
                return rio_read(self._src.patch(uri=uri), strict, dst_geobox, dst=dst, selection=selection)
            except _RASTERIO_ERRORS as err:
                last_error = err
                # A 403 from an expired token does not look transient: re-sign once anyway.
                retryable = _is_transient(err) or (drv.signer is not None and attempt == 1)
                if attempt == drv.max_attempts or not retryable:
                    break
                if drv.signer is not None:
                    _forget_cached_tokens()
                delay = drv.backoff_s * (2 ** (attempt - 1))
                log.info("retrying %s in %.1fs: %s", _strip_query(self._src.uri), delay, err)
                time.sleep(delay)
        failure = ReadFailure(
            href=_strip_query(self._src.uri),
            band=int(self._src.band),
            error=str(last_error),
            attempts=attempt,
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


class AccountingRioDriver(RioDriver):
    """odc-loader's rasterio driver plus read-time signing, retries and failure accounting."""

    def __init__(
        self,
        *,
        signer: Callable[[str], str] | None = None,
        on_error: ReadErrorPolicy = "raise",
        max_attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        if on_error not in ("raise", "count"):
            raise ValueError(f"on_error must be 'raise' or 'count', not {on_error!r}")
        super().__init__(md_parser=StacMDParser({}), aux_reader=StacAuxReader())
        self.signer = signer
        self.on_error = on_error
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_s = float(backoff_s)

    def open(self, src: Any, ctx: Any) -> AccountingReader:  # type: ignore[override]
        return AccountingReader(src, ctx, self)


def planetary_computer_signer(href: str) -> str:
    """Sign one href with a (cached, auto-renewed) Planetary Computer SAS token."""
    import planetary_computer

    return planetary_computer.sign(href)


#: Every GDAL / network setting of the project, in one place (applied on the client and,
#: through ``configure_gdal(client)``, on every Dask worker).
GDAL_SETTINGS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # COG reads never list the container
    "GDAL_HTTP_MAX_RETRY": "5",  # GDAL's own retries on 429/502/503/504
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "VSI_CACHE": "TRUE",
}


def configure_gdal(client: Any | None = None) -> None:
    """Apply ``GDAL_SETTINGS`` to odc-stac reads here and, given a client, on its workers."""
    from odc.stac import configure_rio

    settings: dict[str, Any] = dict(GDAL_SETTINGS)
    configure_rio(cloud_defaults=True, client=client, **settings)
