"""Module fixtures for tests that fetch result chunks or stage files: loopback cloud storage and
a strict upstream that answers large results and stage transfers through it.

Registered for every test by the root conftest (`pytest_plugins`); each module that asks
for them gets its own storage and upstream.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cloud_storage import CloudStorage
from tests.conftest import UPSTREAM_TEST_PASSWORD
from tests.strict_upstream import StrictUpstream


@pytest.fixture(scope="module")
def storage() -> Iterator[CloudStorage]:
    server = CloudStorage().start()
    yield server
    server.stop()


def chunking_upstream(fakesnow_url: str, storage: CloudStorage) -> StrictUpstream:
    """A started strict upstream whose large results and stage files live in `storage`."""
    return StrictUpstream(
        fakesnow_url, "fakesnow", "HOOPGW_SVC", password=UPSTREAM_TEST_PASSWORD, storage=storage
    ).start()


@pytest.fixture(scope="module")
def chunking_strict(fakesnow_server, storage) -> Iterator[StrictUpstream]:
    upstream = chunking_upstream(fakesnow_server.url, storage)
    yield upstream
    upstream.stop()
