"""Recording: every flow on record, durable before it goes upstream, or refused.

The addon runs in-process with a real spool on a temporary directory and a
file store; what it wrote is read back from the store after `done()`.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import brotli
import orjson
import pytest
import zstandard
from mitmproxy import exceptions, http
from mitmproxy import flow as mitmflow
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import Caller, FlowState, UpstreamLogin, state_of
from hoopgw.addons.recording import Recording
from hoopgw.addons.refusals import refuse
from hoopgw.addons.traffic import SnowflakeTraffic
from hoopgw.recorder.checkpoints import (
    SPOOL_KEY_FILE,
    SPOOL_PUBLIC_KEY_FILE,
    key_id,
    load_public_key,
    load_signing_key,
    new_checkpoint_key,
)
from hoopgw.recorder.ids import new_session_id
from hoopgw.recorder.redaction import REDACTED
from tests.addons import (
    LOGIN_PATH,
    LOGOUT_PATH,
    QUERY_PATH,
    RENEWAL_PATH,
    STATEMENTS_PATH,
    answered,
    classified,
    error_of,
    snowflake_flow,
)
from tests.bodies import login_body, query_body
from tests.raw_http import stored_records

RECORDING_CODE = str(protocol.CODE_GATEWAY_RECORDING)
CALLER = Caller("ada", "ada@example.com", ("agents",), "AGENT", "https://idp.example.com")


def options(home: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "hoopgw_store": f"file:{home / 'store'}",
        "hoopgw_spool_dir": str(home / "spool"),
        "hoopgw_rollup_interval": 0,
        **overrides,
    }


@contextmanager
def recording(home: Path, *, start: bool = True, **overrides: Any) -> Iterator[Recording]:
    """A Recording addon with its spool running on `home`; closed (flushed) on exit."""
    addon = Recording()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **options(home, **overrides))
        if start:
            addon.running()
        try:
            yield addon
        finally:
            addon.done()


def records(home: Path) -> list[dict[str, Any]]:
    return sorted(stored_records(home / "store"), key=lambda r: (r["session_id"], r["seq"]))


def kinds(home: Path) -> list[str]:
    return [record["kind"] for record in records(home)]


def authenticated(
    path: str = QUERY_PATH, body: Any = None, *, session_id: str | None = None
) -> tuple[http.HTTPFlow, FlowState]:
    """A request as Authentication and Guardrails leave it for the recorder."""
    flow = snowflake_flow("POST", path, query_body("select 1") if body is None else body)
    state = classified(flow)
    state.caller = CALLER
    state.session_id = session_id
    state.context.database, state.context.role = "SALES", "AGENT"
    return flow, state


async def answer(addon: Recording, flow: http.HTTPFlow, payload: dict[str, Any]) -> None:
    answered(flow, payload)
    addon.response(flow)
    await asyncio.sleep(0)  # the records are built on the loop's next turn


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"hoopgw_store": "ftp://nowhere"}, "hoopgw_store"),
        ({"hoopgw_body_limit": -1}, "hoopgw_body_limit must not be negative"),
        ({"hoopgw_rollup_interval": -1}, "hoopgw_rollup_interval must not be negative"),
        ({"hoopgw_spool_max_bytes": 0}, "hoopgw_spool_max_bytes must be positive"),
        ({"hoopgw_checkpoint_interval": 0}, "hoopgw_checkpoint_interval must be positive"),
        ({"hoopgw_checkpoint_key": "env:HOOPGW_TEST_NO_SUCH_KEY"}, "hoopgw_checkpoint_key"),
    ],
)
def test_configure_refuses_unusable_options(tmp_path: Path, option: dict, message: str) -> None:
    addon = Recording()
    with (
        taddons.context(addon) as tctx,
        pytest.raises(exceptions.OptionsError, match=message),
    ):
        tctx.configure(addon, **options(tmp_path, **option))


async def test_spool_and_store_options_take_effect_only_at_start_up(tmp_path: Path) -> None:
    addon = Recording()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **options(tmp_path), hoopgw_fail_open=True)
        assert addon.fail_open
        addon.running()
        try:
            with pytest.raises(exceptions.OptionsError, match="takes effect only at start-up"):
                tctx.configure(addon, hoopgw_spool_dir=str(tmp_path / "elsewhere"))
            tctx.configure(addon, hoopgw_body_limit=10)
            assert addon.body_limit == 10
            spool = addon.spool
            addon.running()
            assert addon.spool is spool, "the spool starts once"
        finally:
            addon.done()


def test_a_checkpoint_key_that_does_not_load_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_key = "c2VjcmV0LWJ1dC1ub3QtYS1rZXk"
    monkeypatch.setenv("HOOPGW_TEST_CHECKPOINT_KEY", not_a_key)
    addon = Recording()
    with (
        taddons.context(addon) as tctx,
        pytest.raises(exceptions.OptionsError, match="hoopgw_checkpoint_key") as caught,
    ):
        tctx.configure(
            addon, **options(tmp_path), hoopgw_checkpoint_key="env:HOOPGW_TEST_CHECKPOINT_KEY"
        )
    assert not_a_key not in str(caught.value)


async def test_checkpoints_are_signed_with_the_configured_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = new_checkpoint_key()
    monkeypatch.setenv("HOOPGW_TEST_CHECKPOINT_KEY", seed)
    with recording(tmp_path, hoopgw_checkpoint_key="env:HOOPGW_TEST_CHECKPOINT_KEY"):
        pass
    expected = key_id(load_signing_key(seed.encode()))
    stored = [
        orjson.loads(path.read_bytes())
        for path in sorted((tmp_path / "store" / "checkpoints").rglob("*.json"))
    ]
    assert [checkpoint["final"] for checkpoint in stored] == [False, True]
    assert {checkpoint["key_id"] for checkpoint in stored} == {expected}
    assert not (tmp_path / "spool" / SPOOL_KEY_FILE).exists()


async def test_without_a_key_the_spool_makes_one_and_says_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with recording(tmp_path):
        pass
    with recording(tmp_path):
        pass
    public = tmp_path / "spool" / SPOOL_PUBLIC_KEY_FILE
    made = key_id(load_public_key(public.read_bytes()))
    warnings = [
        r.getMessage() for r in caplog.records if "hoopgw_checkpoint_key is unset" in r.getMessage()
    ]
    assert len(warnings) == 2 and "made now" in warnings[0] and "kept" in warnings[1]
    assert str(public) in warnings[0]
    stored = [
        orjson.loads(path.read_bytes())
        for path in sorted((tmp_path / "store" / "checkpoints").rglob("*.json"))
    ]
    assert len(stored) == 4 and {checkpoint["key_id"] for checkpoint in stored} == {made}


async def test_a_damaged_spool_key_fails_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / SPOOL_KEY_FILE).write_text("not a key\n")
    with recording(tmp_path) as addon:
        assert addon.spool is None
        flow, _ = authenticated()
        await addon.request(flow)
        assert RECORDING_CODE in flow.response.text
    assert any("cannot be used" in record.getMessage() for record in caplog.records)


# --- requests --------------------------------------------------------------------------


async def test_a_statement_and_its_answer_are_on_record(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        flow, state = authenticated(session_id=None)
        flow.request.query["requestId"] = "req-1"
        await addon.request(flow)
        assert "recording" in state.passed and flow.response is None
        assert state.session_id is not None, "a request outside a session gets its own id"
        await answer(
            addon,
            flow,
            {
                "success": True,
                "data": {"queryId": "01b2-q", "total": 1, "rowtype": [{"name": "ONE"}]},
            },
        )
    request, response = records(tmp_path)
    assert request["kind"] == "request" and request["endpoint"] == "query"
    assert request["sql"] == "select 1" and request["request_id"] == "req-1"
    assert request["caller"]["subject"] == "ada"
    assert (request["database"], request["role"]) == ("SALES", "AGENT")
    assert request["client"]["application"].startswith("PythonConnector")
    assert response["kind"] == "response" and response["status"] == 200
    assert (response["query_id"], response["columns"]) == ("01b2-q", ["ONE"])
    assert response["session_id"] == request["session_id"]


@pytest.mark.parametrize(
    ("before", "quiet", "fsync_on_the_loop"),
    [
        ("nothing", 3600.0, True),
        ("two earlier requests on its connection, answered", 3600.0, True),
        ("another connection's request, answered just now", 3600.0, False),
        ("another connection's request, answered long ago", 0.0, True),
        ("two other requests in flight", 0.0, False),
    ],
)
async def test_a_lone_statement_s_record_is_fsynced_on_the_loop(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: str,
    quiet: float,
    fsync_on_the_loop: bool,
) -> None:
    """Alone, the statement's loop would idle through the fsync, so it does the fsync (no
    hand-offs). With other requests in flight, or another connection sending lately (its
    next request may wait unread in a socket buffer), the writer thread does, and the loop
    goes on."""
    real_fsync = os.fsync
    fsync_threads: list[int] = []

    def recording_fsync(fd: int) -> None:
        fsync_threads.append(threading.get_ident())
        real_fsync(fd)

    with recording(tmp_path) as addon:
        addon.lone.quiet = quiet
        flow, state = authenticated()
        count = 0 if before == "nothing" else 2 if "two" in before else 1
        earlier = [authenticated()[0] for _ in range(count)]
        if "its connection" in before:
            for other in earlier:
                other.client_conn = flow.client_conn
        for other in earlier:
            addon.requestheaders(other)
            if "answered" in before:
                addon.error(other)
        addon.requestheaders(flow)
        monkeypatch.setattr(os, "fsync", recording_fsync)
        await addon.request(flow)
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert "recording" in state.passed
        assert fsync_threads, "the request record was not fsynced"
        assert (threading.get_ident() in fsync_threads) is fsync_on_the_loop
        await answer(addon, flow, {"success": True, "data": {"queryId": "01b2-q"}})
    assert [record["kind"] for record in records(tmp_path)][-2:] == ["request", "response"]


async def test_a_login_opens_and_a_logout_ends_the_session(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        login, state = authenticated(LOGIN_PATH, login_body("t"))
        await addon.request(login)
        await answer(addon, login, {"success": True, "data": {"sessionId": 4711}})
        logout, logout_state = authenticated(LOGOUT_PATH, {}, session_id=state.session_id)
        logout_state.session_ended = True
        await addon.request(logout)
        await answer(addon, logout, {"success": True})
    assert kinds(tmp_path) == [
        "request",
        "session_start",
        "response",
        "request",
        "response",
        "session_end",
    ]
    start = records(tmp_path)[1]
    assert start["caller"]["subject"] == "ada" and start["upstream_session_id"] == 4711


async def test_a_refused_request_is_recorded_as_a_refusal(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        flow, state = authenticated(body=query_body("drop table t"))
        refuse(flow, state, 399003, "rule 'x' denies DROP", "guardrails")
        state.guardrail = {"decision": "block", "rule": "x"}
        await addon.request(flow)
        assert "recording" not in state.passed
        await answer(addon, flow, {"success": False, "code": "399003"})
    refusal, response = records(tmp_path)
    assert refusal["kind"] == "refusal"
    assert refusal["refusal"] == {
        "code": 399003,
        "reason": "rule 'x' denies DROP",
        "by": "guardrails",
    }
    assert refusal["guardrail"]["decision"] == "block"
    assert response["refusal"]["by"] == "guardrails"


async def test_credentials_in_statements_are_masked_and_not_echoed(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        literal = "alter user bob set password = 'hunter2-secret'"
        flow, _ = authenticated(body=query_body(literal))
        await addon.request(flow)
        await answer(
            addon,
            flow,
            {
                "success": False,
                "code": "001003",
                "message": "SQL compilation error:\nsyntax error near 'hunter2-secret'",
                "data": {"errorCode": "001003", "sqlState": "42000"},
            },
        )
        bound = "alter user bob set password = ?"
        flow, _ = authenticated(
            body=query_body(bound, bindings={"1": {"type": "TEXT", "value": "bound-secret"}})
        )
        await addon.request(flow)
    text = str(records(tmp_path))
    assert "hunter2-secret" not in text and "bound-secret" not in text
    masked, response, binding = records(tmp_path)
    assert REDACTED in masked["sql"]
    assert response["message"] == f"SQL compilation error: {REDACTED}"
    assert binding["bindings"] == {"1": {"type": "TEXT", "value": REDACTED}}


async def test_a_long_statement_is_cut_in_its_record(tmp_path: Path) -> None:
    with recording(tmp_path, hoopgw_body_limit=64) as addon:
        sql = "select '" + "x" * 200 + "'"
        flow, _ = authenticated(body=query_body(sql))
        await addon.request(flow)
    (request,) = records(tmp_path)
    assert len(request["sql"]) == 64 and request["sql_truncated"] == len(sql)
    assert request["body"]["truncated"] is True


# --- fail closed -----------------------------------------------------------------------


async def test_without_a_running_spool_statements_are_refused(tmp_path: Path) -> None:
    with recording(tmp_path, start=False) as addon:
        flow, state = authenticated()
        await addon.request(flow)
        assert "recording" not in state.passed
        answer_json = error_of(flow)
        assert answer_json["code"] == RECORDING_CODE
        assert answer_json["data"]["sqlState"] == "57014"
        assert answer_json["message"] == (
            "hoopgw cannot record this request, so it was not run: "
            "the recording spool is not running"
        )
        assert state.refusal is not None and state.refusal.source == "recording"
        addon.response(flow)  # a refusal of its own is not recorded twice


async def fill(addon: Recording) -> tuple[http.HTTPFlow, FlowState]:
    """Send statements until the spool is over its limit; the first refused one."""
    for _ in range(100):
        flow, state = authenticated()
        await addon.request(flow)
        if state.answered:
            return flow, state
        await asyncio.sleep(0.05)
    raise AssertionError("the spool never went over its limit")


async def test_a_full_spool_refuses_new_work_and_lets_sessions_end(tmp_path: Path) -> None:
    with recording(tmp_path, hoopgw_spool_max_bytes=1) as addon:
        flow, state = await fill(addon)
        assert "the recording spool is full" in error_of(flow)["message"]
        assert error_of(flow)["code"] == RECORDING_CODE
        login, login_state = authenticated(LOGIN_PATH, login_body("t"))
        await addon.request(login)
        assert login_state.answered
        assert "the recording spool is full" in error_of(login)["message"]
        for surface in (
            "/api/v2/cortex/analyst/message",
            "/api/v2/databases/D/schemas/S/mcp-servers/M",
        ):
            call, call_state = authenticated(surface, {"messages": []})
            await addon.request(call)
            assert call_state.answered, surface  # an agent call is new work too
        for path, body in (("/session/heartbeat", {}), (LOGOUT_PATH, {})):
            going, going_state = authenticated(path, body, session_id=state.session_id)
            await addon.request(going)
            assert going.response is None and "recording" in going_state.passed
    refusals = [r for r in records(tmp_path) if r["kind"] == "refusal"]
    assert refusals[0]["refusal"]["reason"] == "the recording spool is full"


async def test_failing_open_forwards_what_cannot_be_recorded(tmp_path: Path) -> None:
    with recording(tmp_path, hoopgw_spool_max_bytes=1, hoopgw_fail_open=True) as addon:
        for _ in range(20):
            flow, state = authenticated()
            await addon.request(flow)
            assert flow.response is None and "recording" in state.passed
            await asyncio.sleep(0.02)


async def test_a_spool_that_cannot_write_refuses_the_statement(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        assert addon.spool is not None
        addon.spool.close()
        flow, state = authenticated()
        await addon.request(flow)
        assert state.refusal is not None and state.refusal.source == "recording"
        assert "the spool could not write" in error_of(flow)["message"]


# --- errors and flows the gateway did not see ------------------------------------------


async def test_a_failed_exchange_is_on_record(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        flow, _ = authenticated()
        await addon.request(flow)
        flow.error = mitmflow.Error("Connection killed.")
        addon.error(flow)
    request, error = records(tmp_path)
    assert error["kind"] == "error" and error["error"] == "Connection killed."
    assert error["flow_id"] == request["flow_id"] == flow.id


async def test_a_request_mitmproxy_refused_before_the_hooks_is_on_record(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
        flow.error = mitmflow.Error("HTTP/1 protocol error: body too large")
        addon.error(flow)
        state = state_of(flow)
        assert state is not None and state.refusal is not None
        assert state.refusal.source == "mitmproxy"
    summary, end = records(tmp_path)
    assert summary["kind"] == "refusal_summary" and end["reason"] == "refusal_window"
    (sample,) = summary["samples"]
    assert sample["flow_id"] == flow.id
    assert sample["refusal"]["by"] == "mitmproxy"
    assert sample["refusal"]["reason"] == "HTTP/1 protocol error: body too large"


async def test_flows_loaded_from_a_file_are_not_recorded(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"), live=False)
        await addon.request(flow)
        flow.response = http.Response.make(200, b"{}")
        addon.response(flow)
        flow.error = mitmflow.Error("gone")
        addon.error(flow)
        assert state_of(flow) is None
    assert records(tmp_path) == []


async def test_a_streamed_answer_is_recorded_from_what_passed_through(tmp_path: Path) -> None:
    traffic = SnowflakeTraffic()
    addon = Recording()
    with taddons.context(traffic, addon) as tctx:
        tctx.configure(addon, **options(tmp_path, hoopgw_body_limit=256))
        addon.running()
        try:
            content = (
                b'{"success": true, "data": {"queryId": "01b2-big", "rowset": ['
                + (b'["' + b"x" * 50 + b'"],') * 40
                + b'["end"]]}}'
            )
            for cut in (False, True):
                flow, state = authenticated()
                await addon.request(flow)
                flow.response = http.Response.make(200, b"", {"Content-Type": "application/json"})
                flow.response.headers["content-length"] = str(len(content))
                traffic.responseheaders(flow)
                assert state.streamed is not None
                state.streamed(content[: len(content) // 2] if cut else content)
                if cut:
                    flow.error = mitmflow.Error("Connection reset")
                    addon.error(flow)
                else:
                    traffic.response(flow)
                    addon.response(flow)
        finally:
            addon.done()
    by_kind = {
        record["kind"]: record for record in records(tmp_path) if record["kind"] != "request"
    }
    assert by_kind["response"]["query_id"] == "01b2-big"
    assert by_kind["response"]["body"]["size"] == len(content)
    assert by_kind["error"]["status"] == 200
    assert by_kind["error"]["body"]["size"] == len(content) // 2


async def test_follow_up_calls_name_the_query_they_are_about(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        submitted, _ = authenticated(body=query_body("select 1", asyncExec=True))
        await addon.request(submitted)
        for method, path, body in (
            ("POST", "/queries/01b2-abort/abort-request", {"requestId": "01b2-abort"}),
            ("GET", "/monitoring/queries/01b2-poll", None),
            ("GET", "/queries/01b2-result/result", None),
        ):
            flow = snowflake_flow(method, path, body)
            state = classified(flow)
            state.caller, state.session_id = CALLER, None
            await addon.request(flow)
            assert "recording" in state.passed
    submitted_record, *follow_ups = records(tmp_path)
    assert submitted_record["async"] is True and submitted_record["sequence_id"] == 1
    assert sorted(record["query_id"] for record in follow_ups) == [
        "01b2-abort",
        "01b2-poll",
        "01b2-result",
    ]


# --- redaction follows the bytes, not the label ------------------------------------------

_JWT = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJlLXNlY3JldA"
_PASSWORD = "Pw-never-on-record"


def _encoded(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "br":
        return brotli.compress(body)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    return body


async def test_every_endpoint_redacts_what_its_bodies_are_whatever_their_labels(
    tmp_path: Path,
) -> None:
    """Requests and answers labelled text/plain, octet-stream or nothing, plain or
    compressed, JSON or not: the record keeps no token or password from any of them."""
    requests = {
        LOGIN_PATH: login_body(_JWT),
        QUERY_PATH: query_body(f"create user m password='{_PASSWORD}'"),
        RENEWAL_PATH: {"oldSessionToken": _JWT, "requestType": "RENEW"},
        LOGOUT_PATH: {"token": _JWT},
        "/session/heartbeat": {"note": f"Bearer {_JWT}"},
        "/telemetry/send": {"logs": [{"message": f"password='{_PASSWORD}' {_JWT}"}]},
    }
    answers = [
        orjson.dumps({"success": True, "data": {"token": _JWT, "masterToken": _JWT}}),
        f"upstream says: token {_JWT} and password='{_PASSWORD}'".encode(),
    ]
    with recording(tmp_path) as addon:
        for path, request_body in requests.items():
            for label in ("text/plain", None, "application/octet-stream"):
                for encoding in ("", "gzip", "br", "zstd"):
                    for answer_body in answers:
                        flow = snowflake_flow("POST", path, request_body)
                        if label is None:
                            del flow.request.headers["content-type"]
                        else:
                            flow.request.headers["content-type"] = label
                        state = classified(flow)
                        state.caller = CALLER
                        await addon.request(flow)
                        headers = {"Content-Type": label or "", "Content-Encoding": encoding}
                        flow.response = http.Response.make(
                            200, _encoded(answer_body, encoding), headers
                        )
                        SnowflakeTraffic().response(flow)
                        addon.response(flow)
                        await asyncio.sleep(0)
    stored = records(tmp_path)
    assert len([r for r in stored if r["kind"] == "response"]) == len(requests) * 3 * 4 * 2
    text = orjson.dumps(stored)
    assert _JWT.encode() not in text and _PASSWORD.encode() not in text
    logins = [r for r in stored if r["kind"] == "request" and r["endpoint"] == "login"]
    assert {r["body"]["json"]["data"]["TOKEN"] for r in logins} == {REDACTED}


# --- refusals of no verified caller: counted, sampled, within their own budget -----------


async def test_an_anonymous_refusal_is_counted_not_recorded_and_its_body_never_kept(
    tmp_path: Path,
) -> None:
    secret = "anonymous-Pa55word-" + "z" * 12
    with recording(tmp_path) as addon:
        flow = snowflake_flow(
            "POST", QUERY_PATH, query_body(f"alter user u set password='{secret}'")
        )
        state = classified(flow)
        refuse(flow, state, 390104, "no session token", "authentication")
        await addon.request(flow)
        addon.response(flow)
        await asyncio.sleep(0)
        assert state.session_id is None  # no session of its own
    summary, end = records(tmp_path)
    assert summary["kind"] == "refusal_summary" and end["kind"] == "session_end"
    assert summary["session_id"] == end["session_id"]
    assert summary["refused"] == 1
    assert summary["reasons"] == [
        {"endpoint": "query", "code": 390104, "reason": "no session token", "count": 1}
    ]
    (sample,) = summary["samples"]
    assert sample["body_size"] == len(flow.request.raw_content)
    assert sample["refusal"]["by"] == "authentication"
    assert secret not in orjson.dumps(records(tmp_path)).decode()


async def test_a_refusal_of_a_verified_caller_stays_a_record_of_its_own(tmp_path: Path) -> None:
    with recording(tmp_path) as addon:
        flow, state = authenticated()
        refuse(flow, state, 399003, "blocked", "guardrails")
        await addon.request(flow)
    assert kinds(tmp_path) == ["refusal"]


async def test_a_spent_refusal_budget_counts_on_and_never_blocks_statements(
    tmp_path: Path,
) -> None:
    with recording(tmp_path, hoopgw_refusal_budget_bytes=1, hoopgw_refusal_window=1) as addon:
        for _ in range(5):
            flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
            refuse(flow, classified(flow), 390104, "no session token", "authentication")
            await addon.request(flow)
        assert addon.refusals is not None
        assert addon.refusals.due(time.time() + 2) is None  # over budget: carried on
        assert addon.refusals.pending() == 5
        flow, state = authenticated()
        await addon.request(flow)
        assert "recording" in state.passed
    by_kind = {record["kind"]: record for record in records(tmp_path)}
    # at shutdown the carried count is written once, without samples
    summary = by_kind["refusal_summary"]
    assert summary["refused"] == 5 and summary["samples"] == []
    assert summary["samples_omitted"] == 5 and summary["windows_carried"] >= 1
    assert "request" in by_kind


async def test_an_sql_api_call_opens_its_own_session_naming_who_it_signed_in_as(
    tmp_path: Path,
) -> None:
    """Each SQL API call is a session of its own: its session_start names the upstream user."""
    with recording(tmp_path) as addon:
        flow, state = authenticated(
            STATEMENTS_PATH, {"statement": "select 1"}, session_id=new_session_id()
        )
        state.upstream_login = UpstreamLogin("XY12345", "SVC_DATA_ENG", "SNOWFLAKE_JWT")
        await addon.request(flow)
        await answer(addon, flow, {"statementHandle": "01b2c3d4-0000-0000-0000-000000000001"})
    assert kinds(tmp_path) == ["request", "session_start", "response"]
    start = records(tmp_path)[1]
    assert (start["account"], start["login_name"], start["authenticator"]) == (
        "XY12345",
        "SVC_DATA_ENG",
        "SNOWFLAKE_JWT",
    )
    assert start["caller"]["subject"] == "ada"
