"""Masking of proxied result chunks end to end: the real connector, a real gateway, real chunks.

The strict upstream (tests/strict_upstream.py) answers a query marked
`/*chunks:N:FORMAT*/` with its first rows inline and the rest as chunks on the
loopback cloud storage (tests/cloud_storage.py); the gateway proxies every
chunk. fakesnow reports no origin table for a column, so the column rule is
written `*.*.*.EMAIL`. Only rows past the inline ones hold e-mails in NOTE, so
what the chunks carry is what gets masked or withheld.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector
from snowflake.connector.errors import Error

from tests import stack
from tests.conftest import UPSTREAM_TEST_PASSWORD
from tests.raw_http import stored_records
from tests.strict_upstream import INLINE_ROWS

pd = pytest.importorskip("pandas")

POLICY = """
[[rule]]
name = "agents-see-no-email"
groups = ["agents"]
mask_columns = ["*.*.*.EMAIL"]
detect = ["email"]
on_detect = "mask"

[[rule]]
name = "guarded-withhold-email"
groups = ["guarded"]
detect = ["email"]
on_detect = "withhold"
"""
GROUPS = ["agents", "readers", "guarded"]
CHUNKS = 3
ROWS = INLINE_ROWS + CHUNKS * 10


def note(i: int) -> str:
    return f"ticket {i}: reply to user{i}@example.com" if i >= INLINE_ROWS and i % 3 else f"ok {i}"


@pytest.fixture(scope="module")
def table(fakesnow_server) -> str:
    name = f"MC_{uuid.uuid4().hex[:8]}".upper()
    host, port = fakesnow_server.url.removeprefix("http://").rsplit(":", 1)
    with snowflake.connector.connect(
        account="fake", user="admin", password="x", host=host, port=int(port), protocol="http"
    ) as admin:
        cursor = admin.cursor()
        cursor.execute(f"create database {name}")
        cursor.execute(f"create schema {name}.CRM")
        cursor.execute(
            f"create table {name}.CRM.TICKETS "
            "(id int, email varchar, note varchar, amount number(10,2))"
        )
        cursor.executemany(
            f"insert into {name}.CRM.TICKETS values (%s, %s, %s, %s)",
            [(i, f"person{i}@example.org", note(i), i + 0.25) for i in range(ROWS)],
        )
    return f"{name}.CRM.TICKETS"


@pytest.fixture(scope="module")
def gw(gateway_factory, chunking_strict, workdir: Path) -> stack.Gateway:
    policy = workdir / f"masking-chunks-{uuid.uuid4().hex[:6]}.toml"
    policy.write_text(POLICY)
    options = {
        "hoopgw_allowed_groups": GROUPS,
        "hoopgw_role_map": ["agents=AGENT", "readers=READER", "guarded=AGENT"],
        "hoopgw_policy": str(policy),
        # the records and the storage name queries by Snowflake's own id, and these
        # tests look chunks up by the id the driver reports; binding ids to the
        # session is tested with chunks in test_result_chunks.py
        "hoopgw_bind_query_ids": False,
    }
    return gateway_factory(chunking_strict.url, options, name="masking-chunks-gw")


def connection(url: str, **params: Any) -> snowflake.connector.SnowflakeConnection:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    return snowflake.connector.connect(
        account="fakesnow",
        host=host,
        port=int(port),
        protocol="http",
        login_timeout=30,
        network_timeout=60,
        # the connector retries a withheld chunk (any failed download) ten times
        backoff_policy=lambda: itertools.repeat(0),
        **params,
    )


@contextlib.contextmanager
def as_caller(gw: stack.Gateway, oidc, group: str) -> Iterator[Any]:
    token = oidc.mint(f"{group}-{uuid.uuid4().hex[:6]}", [group])
    with contextlib.closing(connection(gw.url, authenticator="oauth", token=token)) as c:
        yield c.cursor()


def sql(table: str, fmt: str, columns: str = "id, email, note, amount") -> str:
    return f"select {columns} from {table} order by id /*chunks:{CHUNKS}:{fmt}*/"


def chunk_records(gw: stack.Gateway, query_id: str) -> list[dict[str, Any]]:
    records = stored_records(gw.workdir / "store")
    return [r for r in records if r["kind"] == "chunk" and r["query_id"] == query_id]


def wait_for_chunk_records(gw: stack.Gateway, query_id: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = chunk_records(gw, query_id)
        return len(found) >= count

    stack.wait_until(enough, 20, f"{count} chunk records of {query_id}")
    return found


def test_a_caller_without_rules_gets_the_rows_a_direct_fetch_gets(
    gw, chunking_strict, oidc, table
) -> None:
    with as_caller(gw, oidc, "readers") as cursor:
        through = cursor.execute(sql(table, "json")).fetchall()
        query_id = cursor.sfqid
    with contextlib.closing(
        connection(chunking_strict.url, user="HOOPGW_SVC", password=UPSTREAM_TEST_PASSWORD)
    ) as c:
        direct = c.cursor().execute(sql(table, "json")).fetchall()
    assert len(through) == ROWS and through == direct
    records = wait_for_chunk_records(gw, query_id, CHUNKS)
    # the streamed path: nothing buffered or masked, so no detections on record
    assert all("detections" not in r and r["complete"] for r in records)


def test_every_json_chunk_is_masked_for_a_caller_with_rules(gw, oidc, storage, table) -> None:
    with as_caller(gw, oidc, "agents") as cursor:
        rows = cursor.execute(sql(table, "json")).fetchall()
        query_id = cursor.sfqid
    assert len(rows) == ROWS
    assert {row[1] for row in rows} == {"[MASKED:column]"}
    for row in rows:
        expected = "[MASKED:email]" if "@" in note(row[0]) else note(row[0])
        assert row[2] == expected
        assert float(row[3]) == row[0] + 0.25
    records = wait_for_chunk_records(gw, query_id, CHUNKS)
    assert sorted(r["chunk_index"] for r in records) == list(range(CHUNKS))
    for record in records:
        assert record["complete"] is True
        kinds = {(d["column"], d["kind"], d["action"]) for d in record["detections"]}
        assert ("EMAIL", "column", "mask") in kinds and ("NOTE", "email", "mask") in kinds
        assert "@" not in json.dumps(record["body"])  # the rows as the caller received them
        stored = storage.hashes()[f"{query_id}/json_{record['chunk_index']}"]
        assert record["sha256"] != stored  # the masked bytes sent, not storage's


def test_every_arrow_chunk_is_masked_and_pandas_keeps_the_types(gw, oidc, table) -> None:
    with as_caller(gw, oidc, "readers") as cursor:
        plain = cursor.execute(sql(table, "arrow")).fetch_pandas_all()
    with as_caller(gw, oidc, "agents") as cursor:
        masked = cursor.execute(sql(table, "arrow")).fetch_pandas_all()
        query_id = cursor.sfqid
    assert len(masked) == len(plain) == ROWS
    assert list(masked.dtypes) == list(plain.dtypes)
    assert set(masked["EMAIL"]) == {"[MASKED:column]"}
    leaked = [value for value in masked["NOTE"] if "@" in value]
    assert leaked == []
    assert (masked["NOTE"] == "[MASKED:email]").sum() == sum("@" in note(i) for i in range(ROWS))
    assert list(masked["ID"]) == list(plain["ID"])
    assert list(masked["AMOUNT"]) == list(plain["AMOUNT"])
    records = wait_for_chunk_records(gw, query_id, CHUNKS)
    assert all(r["detections"] and r["complete"] for r in records)


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_a_chunk_with_a_withheld_kind_is_refused_and_on_record(gw, oidc, table, fmt) -> None:
    with as_caller(gw, oidc, "guarded") as cursor:
        cursor.execute(sql(table, fmt, "id, note"))
        query_id = cursor.sfqid
        with pytest.raises(Error) as failure:
            cursor.fetchall()
    message = str(failure.value)
    assert "451" in message and "Withheld by hoopgw: column NOTE holds email" in message
    assert "example.com" not in message
    records = wait_for_chunk_records(gw, query_id, 1)
    withheld = [r for r in records if not r["complete"]]
    assert withheld and all(r["error"].startswith("withheld by hoopgw:") for r in withheld)
    assert all(r["detections"][0]["action"] == "withhold" for r in withheld)
    assert all("body" not in r for r in withheld)
