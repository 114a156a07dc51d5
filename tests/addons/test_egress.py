"""Storage egress: which storage fetches go through the operator's proxy, and bad values refused."""

from __future__ import annotations

import re

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from hoopgw.addons.egress import StorageEgress

STORAGE = "sfc-customer-stage.s3.us-west-2.amazonaws.com"


def configured(**options: str) -> StorageEgress:
    egress = StorageEgress()
    with taddons.context(egress) as tctx:
        tctx.configure(egress, **options)
    return egress


def test_no_proxy_by_default() -> None:
    assert configured().via("https", STORAGE) is None


def test_a_named_proxy_takes_every_storage_fetch() -> None:
    egress = configured(hoopgw_storage_proxy="http://egress.internal:3128")
    assert egress.via("https", STORAGE) == ("http", ("egress.internal", 3128))


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("ftp://user:secret@egress:21", "not an http(s)://host:port proxy URL"),
        ("egress:3128", "not an http(s)://host:port proxy URL"),
        ("http://user:secret@egress:3128", "no credentials"),
    ],
)
def test_a_malformed_proxy_is_refused_without_echoing_credentials(value: str, says: str) -> None:
    egress = StorageEgress()
    with (
        taddons.context(egress) as tctx,
        pytest.raises(exceptions.OptionsError, match=re.escape(says)) as raised,
    ):
        tctx.configure(egress, hoopgw_storage_proxy=value)
    assert "secret" not in str(raised.value)


def test_env_reads_https_proxy_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://egress.internal:8080")
    monkeypatch.setenv("NO_PROXY", ".blob.core.windows.net")
    egress = configured(hoopgw_storage_proxy="env")
    assert egress.via("https", STORAGE) == ("http", ("egress.internal", 8080))
    assert egress.via("https", "account.blob.core.windows.net") is None


def test_route_gives_the_flow_its_own_connection_through_the_proxy() -> None:
    egress = configured(hoopgw_storage_proxy="http://egress.internal:3128")
    flow = tflow.tflow()
    flow.request.url = f"https://{STORAGE}/results/chunk_0"
    shared = flow.server_conn
    egress.route(flow)
    assert flow.server_conn is not shared
    assert flow.server_conn.via == ("http", ("egress.internal", 3128))
    assert flow.server_conn.address == (STORAGE, 443)
