"""The readers read what the writer writes.

Reader tests build records by hand, and a hand-built record can name a field
the writer does not write (the reader once looked for `client.app` while the
writer wrote `client.application`, and the fixtures agreed with the reader).
Here the `Recording` addon itself records a login and a statement, in process,
through its real spool into a local store; the session is then read back the
way `hoopgw sessions list`, `sessions show`, `replay` and `export` read it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from hoopgw.addons.flowstate import Caller, FlowState, SessionContext, attach, state_of
from hoopgw.addons.protocol import Endpoint
from hoopgw.addons.recording import Recording
from hoopgw.recorder import listing
from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.schema import RecordKind, validate_record
from hoopgw.recorder.session import load_session
from hoopgw.recorder.store import LocalStore
from hoopgw.replay.export import records_to_flows

CALLER = Caller("agent-7", "agent-7@example.com", ("agents",), "AGENT", "https://idp.example")
APP, VERSION = "PythonConnector", "3.12.1"
SQL = "select id, name from orders"


def _flow(path: str, request: dict[str, Any], endpoint: Endpoint) -> http.HTTPFlow:
    """A flow as the earlier addons leave it for `Recording`: classified, caller known."""
    flow = tflow.tflow()
    flow.request.path = path
    flow.request.content = orjson.dumps(request)
    flow.request.headers["content-type"] = "application/json"
    flow.response = None
    state = FlowState(
        endpoint=endpoint,
        request_body=flow.request.content,
        request_json=request,
        caller=CALLER,
        context=SessionContext("SALES", "PUBLIC", "WH", "AGENT"),
        client_app=APP,
        client_version=VERSION,
    )
    attach(flow, state)
    return flow


async def _record_one_session(recording: Recording) -> None:
    login = _flow(
        "/session/v1/login-request?databaseName=SALES",
        {"data": {"LOGIN_NAME": "agent-7", "CLIENT_APP_ID": APP}},
        Endpoint.LOGIN,
    )
    welcome = {"success": True, "data": {"sessionId": 4711, "token": "[REDACTED]"}}
    rows = {
        "success": True,
        "data": {
            "queryId": "01b2-q1",
            "statementTypeId": 4096,
            "rowtype": [{"name": "ID"}, {"name": "NAME"}],
            "rowset": [["1", "ana"], ["2", "bo"]],
            "total": 2,
            "returned": 2,
            "queryResultFormat": "json",
        },
    }
    query = _flow("/queries/v1/query-request?requestId=r1", {"sqlText": SQL}, Endpoint.QUERY)
    session_id = None
    for flow, answer in ((login, welcome), (query, rows)):
        state = state_of(flow)
        assert state is not None
        state.session_id = session_id  # the login opens the session, the query is in it
        await recording.request(flow)
        session_id = state.session_id
        flow.response = http.Response.make(
            200, orjson.dumps(answer), {"content-type": "application/json"}
        )
        state.response_body = flow.response.content
        state.response_json = answer
        recording.response(flow)
        await asyncio.sleep(0)  # the answer's records are built on the next turn of the loop


def test_readers_read_what_the_recording_addon_wrote(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    recording = Recording()

    async def run() -> None:
        with taddons.context(recording) as tctx:
            tctx.configure(
                recording,
                hoopgw_store=f"file:{tmp_path / 'store'}",
                hoopgw_spool_dir=str(tmp_path / "spool"),
                hoopgw_rollup_interval=0,
            )
            recording.running()
            await _record_one_session(recording)
            recording.done()

    asyncio.run(run())

    [summary] = ArchiveIndex(Archive(store), store_url="").list_sessions()
    records = Archive(store).read_session(summary.session_id)
    assert [record["kind"] for record in records] == [
        RecordKind.REQUEST,
        RecordKind.SESSION_START,
        RecordKind.RESPONSE,
        RecordKind.REQUEST,
        RecordKind.RESPONSE,
    ]
    assert all(validate_record(record) == [] for record in records)

    # `sessions list`: the summary and its row
    assert summary.client_application == APP
    listed = listing.summary_dict(summary)
    assert listed["client_app"] == APP and listed["user"] == "agent-7@example.com"
    assert listing.summary_row(summary)[-1] == APP

    # `sessions show` and `replay`: the session rebuilt from its records
    session = load_session(summary.session_id, records)
    assert session.client_app == APP
    assert session.user == "agent-7@example.com"
    assert session.caller == CALLER.as_record()
    assert session.client == {"address": session.client["address"], "application": APP,
                              "version": VERSION}  # fmt: skip
    [statement] = session.statements
    assert statement.sql == SQL
    assert statement.context.as_dict() == {
        "database": "SALES",
        "schema": "PUBLIC",
        "warehouse": "WH",
        "role": "AGENT",
    }
    outcome = statement.outcome
    assert outcome.success is True and outcome.query_id == "01b2-q1"
    assert outcome.columns == ("ID", "NAME") and outcome.row_count == 2
    assert outcome.result is not None and outcome.result["rowset"] == [["1", "ana"], ["2", "bo"]]
    assert dict(listing.session_header(session))["client"] == APP

    # `export`: one flow per recorded flow, the statement's annotated
    flows = records_to_flows(records)
    assert [f.request.path for f in flows] == [
        "/session/v1/login-request?databaseName=SALES",
        "/queries/v1/query-request?requestId=r1",
    ]
    assert flows[1].comment == SQL and flows[1].response.status_code == 200
