"""Node's snowflake-sdk through the gateway over TLS (NODE_EXTRA_CA_CERTS).

Node takes no Arrow, and fakesnow answers only Arrow: every Node statement
carries `/*chunks:0:json*/` (or `/*chunks:N:json:noinline*/`) so the strict
upstream answers it with JSON rowsets, as Snowflake answers Node (a chunked
result for Node has no inline rows: the driver ignores the chunks when some
rows come inline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import (
    DATABASE,
    HELD_ROWS,
    SCHEMA,
    ClientStack,
    answer_of,
    clean_env,
    environment,
    marker,
    run,
    which,
)
from tests.clients.holds import approve_when_held, held_query
from tests.strict_upstream import INLINE_ROWS

pytestmark = pytest.mark.clients

SCRIPT = Path(__file__).with_name("node_client.js")
JSON_ROWSET = " /*chunks:0:json*/"
CHUNKS = 3
PER_CHUNK = 50
ROWS = INLINE_ROWS + CHUNKS * PER_CHUNK


def node_env(installs, client_stack: ClientStack) -> dict[str, str]:
    folder = environment(installs, "node")
    return clean_env(
        NODE_PATH=str(folder / "node_modules"),
        NODE_EXTRA_CA_CERTS=str(client_stack.ca_bundle),
    )


def job(client_stack: ClientStack, sql: str) -> dict[str, Any]:
    """The connection options docs/clients.md gives for Node."""
    return {
        "accessUrl": client_stack.url,
        "account": "clients",
        "username": "agent",
        "token": client_stack.token(),
        "database": DATABASE,
        "schema": SCHEMA,
        "sql": sql,
    }


def node(installs, client_stack: ClientStack, sql: str) -> dict[str, Any]:
    env = node_env(installs, client_stack)
    # the SDK writes snowflake.log into its working directory
    completed = run(
        [which("node"), str(SCRIPT)],
        env=env,
        stdin=json.dumps(job(client_stack, sql)),
        cwd=client_stack.workdir,
    )
    return answer_of(completed)


def test_node_runs_a_recorded_statement_over_tls(installs, client_stack: ClientStack) -> None:
    tag = marker("node")
    answer = node(installs, client_stack, f"select 'ok' as answer /*{tag}*/{JSON_ROWSET}")
    assert answer["version"].startswith("3.")
    assert answer["rows"] == [["ok"]]
    assert client_stack.recorded(tag)


def test_node_reads_a_chunked_json_result_through_the_chunk_proxy(
    installs, client_stack: ClientStack
) -> None:
    tag = marker("node-chunks")
    before = client_stack.storage.mark()
    sql = (
        f"select seq4() as id, 'row-' || seq4() as label"
        f" from table(generator(rowcount => {ROWS})) /*{tag}*/ /*chunks:{CHUNKS}:json:noinline*/"
    )
    answer = node(installs, client_stack, sql)
    assert answer["rows"] == [[i, f"row-{i}"] for i in range(ROWS)]
    # the gateway fetched every chunk (one record each), and the storage saw nothing more
    assert len(client_stack.recorded_chunks(tag, CHUNKS)) == CHUNKS
    assert len(client_stack.storage.requests_since(before)) == CHUNKS


def test_node_waits_in_execute_until_a_held_statement_is_approved(
    installs, client_stack: ClientStack
) -> None:
    env = node_env(installs, client_stack)
    tag = marker("node-held")
    answer = approve_when_held(
        client_stack,
        tag,
        [which("node"), str(SCRIPT)],
        job(client_stack, held_query(tag, JSON_ROWSET)),
        env,
    )
    assert answer["rows"] == HELD_ROWS
