"""The Python connector through the gateway over TLS: 4.x (the main venv) and 5.x (its own).

Each runs a statement with a unique marker comment, which the test then finds
in the gateway's recording. 5.x also fetches a chunked result through the
gateway's chunk proxy and waits in `execute` for a held statement's approval.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.clients.conftest import (
    HELD_ROWS,
    ClientStack,
    clean_env,
    drive,
    environment,
    marker,
)
from tests.clients.holds import approve_when_held, held_query
from tests.strict_upstream import INLINE_ROWS

pytestmark = pytest.mark.clients

CHUNKS = 3
PER_CHUNK = 50
ROWS = INLINE_ROWS + CHUNKS * PER_CHUNK


def chunked_sql(tag: str, result_format: str) -> str:
    return (
        f"select seq4() as id, 'row-' || seq4() as label"
        f" from table(generator(rowcount => {ROWS})) /*{tag}*/ /*chunks:{CHUNKS}:{result_format}*/"
    )


def expected_chunk_rows(as_text: bool) -> list[list[object]]:
    return [[str(i) if as_text else i, f"row-{i}"] for i in range(ROWS)]


def connector5_python(installs) -> Path:
    return environment(installs, "connector5") / "bin" / "python"


def test_connector_4_runs_a_recorded_statement_over_tls(client_stack: ClientStack) -> None:
    tag = marker("connector4")
    answer = drive(
        Path(sys.executable),
        {
            "client": "connector",
            "params": client_stack.connector_params(client_stack.token()),
            "sql": f"select 'ok' as answer /*{tag}*/",
        },
        clean_env(REQUESTS_CA_BUNDLE=str(client_stack.ca_bundle)),
    )
    assert answer["version"].startswith("4.")
    assert answer["rows"] == [["ok"]]
    assert client_stack.recorded(tag)


def test_connector_5_runs_a_recorded_statement_over_tls(
    installs, client_stack: ClientStack
) -> None:
    python = connector5_python(installs)
    tag = marker("connector5")
    answer = drive(
        python,
        {
            "client": "connector",
            "params": client_stack.connector_params(client_stack.token()),
            "sql": f"select 'ok' as answer /*{tag}*/",
        },
        clean_env(SSL_CERT_FILE=str(client_stack.ca_bundle)),
    )
    assert answer["version"].startswith("5.")
    assert answer["rows"] == [["ok"]]
    assert client_stack.recorded(tag)


@pytest.mark.parametrize("result_format", ["json", "arrow"])
def test_connector_5_reads_a_chunked_result_through_the_chunk_proxy(
    installs, client_stack: ClientStack, result_format: str
) -> None:
    python = connector5_python(installs)
    tag = marker(f"connector5-chunks-{result_format}")
    before = client_stack.storage.mark()
    answer = drive(
        python,
        {
            "client": "connector",
            "params": client_stack.connector_params(client_stack.token()),
            "sql": chunked_sql(tag, result_format),
        },
        clean_env(SSL_CERT_FILE=str(client_stack.ca_bundle)),
    )
    assert answer["rows"] == expected_chunk_rows(as_text=False)
    # the gateway fetched every chunk (one record each), and the storage saw nothing more
    assert len(client_stack.recorded_chunks(tag, CHUNKS)) == CHUNKS
    assert len(client_stack.storage.requests_since(before)) == CHUNKS


def test_connector_5_waits_in_execute_until_a_held_statement_is_approved(
    installs, client_stack: ClientStack
) -> None:
    python = connector5_python(installs)
    tag = marker("connector5-held")
    job = {
        "client": "connector",
        "params": client_stack.connector_params(client_stack.token()),
        "sql": held_query(tag),
    }
    answer = approve_when_held(
        client_stack,
        tag,
        [str(python), str(Path(__file__).with_name("drive.py"))],
        job,
        clean_env(SSL_CERT_FILE=str(client_stack.ca_bundle)),
    )
    assert answer["rows"] == HELD_ROWS
