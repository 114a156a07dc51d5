"""Async tests and the real components the in-process addon tests need."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bodies import write_service_key
from tests.jwt_issuer import LocalIssuer


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests on a fresh event loop, as the gateway's hooks run on mitmproxy's.

    The suite has no asyncio plugin; this is all such a plugin would do here.
    """
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    parameters = inspect.signature(pyfuncitem.obj).parameters
    arguments = {name: pyfuncitem.funcargs[name] for name in parameters}
    asyncio.run(pyfuncitem.obj(**arguments))
    return True


@pytest.fixture(scope="session")
def issuer() -> Iterator[LocalIssuer]:
    """A real OIDC issuer on loopback: discovery, a JWKS and tokens signed by its key."""
    local = LocalIssuer().start()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def service_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gateway's own RSA key for key-pair logins to Snowflake, as a PEM file."""
    path = tmp_path_factory.mktemp("keys") / "service.p8"
    write_service_key(path)
    return path
