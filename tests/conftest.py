"""Shared fixtures and the loopback-only network guard."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "PHYVLM_SHARED_DATA" in os.environ:
    SHARED_DATA = Path(os.environ["PHYVLM_SHARED_DATA"])


def _is_loopback(host: str) -> bool:
    # "0.0.0.0" / "::" are what servers bind to (no traffic leaves the machine).
    if host in ("localhost", "", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Fail any test that tries to connect outside 127.0.0.0/8 (and [::1])."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address):
        if isinstance(address, tuple) and address and isinstance(address[0], str):
            if not _is_loopback(address[0]):
                raise RuntimeError(f"test tried to reach {address!r}: only loopback is allowed")

    def guarded_connect(self, address):
        check(address)
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    real_getaddrinfo = socket.getaddrinfo

    def guarded_getaddrinfo(host, *args, **kwargs):
        # Name lookups count too: a lookup of a public host leaks the test's intent.
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _is_loopback(name) and not name.endswith(".localhost"):
            raise RuntimeError(f"test tried to resolve {name!r}: only loopback is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield


def shared_data(*parts: str) -> Path:
    """Path into ../shared/data; skip (or fail under CI) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI always has ../shared/data beside the checkout")
        pytest.skip(f"{path} not found: real data lives in ../shared/data beside the checkout")
    return path


@pytest.fixture
def pc_items_dir() -> Path:
    return shared_data("pc-stac-items")


@pytest.fixture
def austria_tif() -> Path:
    return shared_data("pc-l2a-austria-2dates", "inference-img.tif")


# Session fixture ``stac_api``: a real stac-fastapi-pgstac on 127.0.0.1 (tests/stac_server.py);
# ``asset_server_factory``: a COG server on 127.0.0.1 that injects faults (tests/asset_server.py).
pytest_plugins = ["tests.stac_server", "tests.asset_server"]
