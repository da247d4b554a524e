"""A real HTTP asset server on 127.0.0.1 that misbehaves on demand, like blob storage under load.

It serves the files of one folder with HTTP Range support (what GDAL's ``/vsicurl/`` needs to
read a COG without downloading it) and injects faults chosen per test:

- a status (500, 429 with ``Retry-After``, 503, 504, ...) for the first N matching requests,
  for chosen request numbers, for a seeded fraction of requests, or for every request of one
  asset (a permanent failure);
- a stall longer than the client's timeout (the answer comes, too late).

**Token mode** mimics Azure SAS tokens on Planetary Computer: asset URLs must carry
``?token=...``; tokens come from the server's ``/token`` endpoint with a short lifetime and an
expired or unknown token is answered 403 ``AuthenticationFailed``, as Azure does.
``TokenSigner`` is a signer of the same shape as ``planetary_computer.sign`` (an href in, a
signed href out, tokens cached per process and renewed when they expire) that gets its tokens
from this server, so a token that expires mid-run must be re-signed at read time.

Fixtures (registered through ``pytest_plugins`` in tests/conftest.py): ``asset_server_factory``
starts a server for a folder; every server it started stops at the end of the test.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

#: Azure's answer to an expired or unknown SAS token (403, error code AuthenticationFailed).
AUTH_FAILED_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
    b"<Message>Server failed to authenticate the request. Signature not valid in the "
    b"specified time frame</Message></Error>"
)


@dataclass
class Fault:
    """One injected fault; ``AssetServer.inject`` builds it. Counts only the requests it matches.

    Exactly one trigger applies: ``first`` (the first N matching requests), ``nth`` (those
    request numbers, 1-based, among the matching ones), ``fraction`` (a seeded share of them),
    or none of the three (every matching request: a permanent failure). Faults are tried in
    the order they were injected; a request an earlier fault takes is not counted by later ones.
    """

    status: int | None = None
    stall_s: float = 0.0
    match: str = ""
    first: int | None = None
    nth: tuple[int, ...] = ()
    fraction: float | None = None
    retry_after_s: int | None = None
    seed: int = 0
    seen: int = 0
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if (self.status is None) == (self.stall_s <= 0):
            raise ValueError("a fault is either a status or a stall (stall_s > 0), not both")
        triggers = [self.first is not None, bool(self.nth), self.fraction is not None]
        if sum(triggers) > 1:
            raise ValueError("choose one trigger: first, nth or fraction (none: every request)")
        self._rng.seed(self.seed)

    def fires(self, path: str) -> bool:
        """Count this request if it matches; say whether the fault applies to it."""
        if self.match not in path:
            return False
        self.seen += 1
        if self.first is not None:
            hit = self.seen <= self.first
        elif self.nth:
            hit = self.seen in self.nth
        elif self.fraction is not None:
            hit = self._rng.random() < self.fraction
        else:
            hit = True
        self.fired += hit
        return hit


@dataclass(frozen=True)
class Request:
    """One request the server answered (for assertions on what the client did)."""

    method: str
    path: str
    token: str | None
    range: str | None
    status: int


class AssetServer(ThreadingHTTPServer):
    """Serves ``root`` at ``http://127.0.0.1:<port>/files/<name>``; see the module docstring."""

    daemon_threads = True
    block_on_close = False  # a stalled handler must not hold up shutdown

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root).resolve()
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.token_lifetime_s: float | None = None  # None: no tokens needed
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> AssetServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # -- what a test configures --------------------------------------------------------------

    def href(self, path: Path | str) -> str:
        """The URL of a file under ``root`` (no token)."""
        relative = Path(path).resolve().relative_to(self.root)
        return f"{self.url}/files/{urllib.parse.quote(relative.as_posix())}"

    def inject(self, **kwargs) -> Fault:
        """Add a fault (see ``Fault``), e.g. ``inject(status=503, first=2, match="B04")``."""
        fault = Fault(**kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def require_tokens(self, lifetime_s: float) -> None:
        """From now on, file URLs need a valid ``?token=`` that lives ``lifetime_s`` seconds."""
        self.token_lifetime_s = float(lifetime_s)

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def issue_token(self) -> tuple[str, float]:
        if self.token_lifetime_s is None:
            raise RuntimeError("call require_tokens(lifetime_s) before asking for tokens")
        token = secrets.token_urlsafe(16)
        expiry = time.time() + self.token_lifetime_s
        with self.lock:
            self.tokens[token] = expiry
        return token, expiry

    def expire_tokens(self) -> None:
        """Make every token issued so far expire now, while its holders still believe in it."""
        with self.lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def file_requests(self, status: int | None = None) -> list[Request]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r.path.startswith("/files/") and (status is None or r.status == status)
            ]

    # -- what the handler asks -----------------------------------------------------------------

    def fault_for(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.fires(path):
                    return fault
        return None

    def token_valid(self, token: str | None) -> bool:
        if self.token_lifetime_s is None:
            return True
        with self.lock:
            expiry = self.tokens.get(token or "")
        return expiry is not None and time.time() < expiry

    def record(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as curl expects from blob storage
    server: AssetServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        token = query.get("token", [None])[0]
        if url.path == "/token":
            return self._answer_token()
        status = self._answer_file(url.path, token, body=body)
        self.server.record(
            Request(self.command, url.path, token, self.headers.get("Range"), status)
        )

    def _answer_token(self) -> None:
        token, expiry = self.server.issue_token()
        stamp = datetime.fromtimestamp(expiry, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        payload = json.dumps({"token": token, "msft:expiry": stamp}).encode()
        self._send(200, payload, {"Content-Type": "application/json"})
        self.server.record(Request(self.command, "/token", None, None, 200))

    def _answer_file(self, path: str, token: str | None, *, body: bool) -> int:
        fault = self.server.fault_for(path)
        if fault is not None and fault.stall_s > 0:
            time.sleep(fault.stall_s)  # the client has given up by now; answer anyway
        elif fault is not None:
            assert fault.status is not None
            headers = {}
            if fault.retry_after_s is not None:
                headers["Retry-After"] = str(fault.retry_after_s)
            return self._send(fault.status, b"injected fault", headers, body=body)
        if not self.server.token_valid(token):
            headers = {"Content-Type": "application/xml", "x-ms-error-code": "AuthenticationFailed"}
            return self._send(403, AUTH_FAILED_BODY, headers, body=body)
        if not path.startswith("/files/"):
            return self._send(404, b"not found", body=body)
        file = (self.server.root / urllib.parse.unquote(path[len("/files/") :])).resolve()
        if self.server.root not in file.parents or not file.is_file():
            return self._send(404, b"BlobNotFound", {"x-ms-error-code": "BlobNotFound"}, body=body)
        data = file.read_bytes()
        wanted = self._byte_range(len(data))
        if wanted is None:
            return self._send(200, data, {"Accept-Ranges": "bytes"}, body=body)
        start, end = wanted
        if start >= len(data):
            return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, body=body)
        headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        return self._send(206, data[start : end + 1], headers, body=body)

    def _byte_range(self, size: int) -> tuple[int, int] | None:
        """(start, end) inclusive for a single ``Range: bytes=a-b``; None: send it all.

        A multi-range request gets the whole file (HTTP allows ignoring Range); GDAL sends
        them only with GDAL_HTTP_MULTIRANGE=SINGLE_GET, which the project does not set.
        """
        match = _RANGE.match(self.headers.get("Range") or "")
        if match is None or (not match[1] and not match[2]):
            return None
        if not match[1]:  # suffix range: the last N bytes
            return max(0, size - int(match[2])), size - 1
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
        return start, end

    def _send(
        self, status: int, payload: bytes, headers: dict[str, str] | None = None, *, body=True
    ) -> int:
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left (a stall fault)
        return status


# ------------------------------------------------------------------------------------------------
# A signer of the same shape as planetary_computer.sign, with tokens from the server above
# ------------------------------------------------------------------------------------------------

#: Per-process token cache, keyed by token endpoint (as planetary_computer caches per container).
_TOKEN_CACHE: dict[str, tuple[str, float]] = {}
_TOKEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class TokenSigner:
    """Sign an href with a token from ``token_url``: ``signer(href) -> href?token=...``.

    Like ``planetary_computer.sign`` it caches the token in the process and asks for a new one
    once the cached one is within ``renew_margin_s`` of its advertised expiry; a token that
    dies earlier (``AssetServer.expire_tokens``) stays cached until ``forget_tokens()``, which
    the reader calls when a read fails. Frozen and small: it travels in the dask graph and
    works the same on every worker process.
    """

    token_url: str
    renew_margin_s: float = 0.0

    def __call__(self, href: str) -> str:
        token = self._token()
        parts = urllib.parse.urlsplit(href)
        query = urllib.parse.urlencode({"token": token})
        return urllib.parse.urlunsplit(parts._replace(query=query))

    def forget_tokens(self) -> None:
        with _TOKEN_LOCK:
            _TOKEN_CACHE.pop(self.token_url, None)

    def _token(self) -> str:
        with _TOKEN_LOCK:
            cached = _TOKEN_CACHE.get(self.token_url)
            if cached is not None and cached[1] - self.renew_margin_s > time.time():
                return cached[0]
            with urllib.request.urlopen(self.token_url, timeout=10) as response:
                answer = json.load(response)
            expiry = datetime.fromisoformat(answer["msft:expiry"].replace("Z", "+00:00"))
            _TOKEN_CACHE[self.token_url] = (answer["token"], expiry.timestamp())
            return answer["token"]


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def asset_server_factory() -> Iterator[Callable[[Path], AssetServer]]:
    """``start(root) -> AssetServer`` on 127.0.0.1; all servers stop after the test."""
    started: list[AssetServer] = []

    def start(root: Path) -> AssetServer:
        server = AssetServer(root).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
