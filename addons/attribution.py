"""Attribution in Snowflake: every session's QUERY_TAG names its hoopgw session and caller.

Snowflake shows `QUERY_TAG` in `QUERY_HISTORY`; with the gateway's tag there,
each statement Snowflake ran joins to the archive on the hoopgw session id
(docs/record-format.md). The tag is a JSON object
`{"hoopgw_session": ..., "caller": ..., "client": ...}`: a tag the client sets
itself is kept under `client`, never dropped, and never replaces the gateway's.

The gateway sets it where a client can:

- at login, in `SESSION_PARAMETERS.QUERY_TAG`;
- per query, where the client sends `parameters.QUERY_TAG` (query-request, SQL
  API), and on every SQL API call (each is a session of its own);
- `ALTER SESSION SET QUERY_TAG = '...'` (or `UNSET QUERY_TAG`) sent alone is
  rewritten, with sqlglot, to set the merged tag. Any other statement text that
  both alters the session and names QUERY_TAG (one request with several
  statements, EXECUTE IMMEDIATE, a scripting block, other parameters in the same
  SET) is refused: the gateway cannot rewrite it safely, and passing it would
  let a client drop the gateway's tag.

The body is rewritten before the policy and the recorder read it, so both see
what goes upstream. The tag is attribution, not a boundary: code Snowflake runs
on the client's behalf (a procedure) could still change it; the archive keeps
every statement regardless.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import sqlglot
from mitmproxy import http
from sqlglot import exp

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.names import ATTRIBUTION
from hoopgw.addons.protocol import Endpoint
from hoopgw.addons.refusals import refuse

QUERY_TAG = "QUERY_TAG"
MAX_QUERY_TAG_CHARS = 2000
"""Snowflake's limit on a QUERY_TAG value."""

_ALTERS_SESSION = re.compile(r"alter\s+session", re.IGNORECASE)
_NAMES_QUERY_TAG = re.compile(r"query_tag", re.IGNORECASE)
_UNSAFE = (
    "hoopgw sets QUERY_TAG itself: set yours in a request of its own, "
    "`ALTER SESSION SET QUERY_TAG = '...'` alone, or as the query's parameters.QUERY_TAG"
)


class TagError(ValueError):
    """A client's QUERY_TAG the gateway cannot merge; the message is the refusal reason."""


def session_tag(session_id: str, caller: str, client_tag: object = None) -> str:
    """The tag the gateway sets: its session and caller, and the client's own tag if any."""
    tag: dict[str, Any] = {"hoopgw_session": session_id, "caller": caller}
    if client_tag is not None:
        tag["client"] = client_tag if isinstance(client_tag, str) else str(client_tag)
    value = orjson.dumps(tag).decode()
    if len(value) > MAX_QUERY_TAG_CHARS:
        raise TagError(
            f"your QUERY_TAG is too long: with the gateway's attribution it passes "
            f"Snowflake's {MAX_QUERY_TAG_CHARS} characters"
        )
    return value


def merge_parameters(parameters: object, tag_of: Any, always: bool) -> dict[str, Any] | None:
    """`parameters` with QUERY_TAG merged; None when there is nothing to change.

    Parameter names are case-insensitive in Snowflake: two spellings of
    QUERY_TAG are ambiguous and refused.
    """
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise TagError("the request's parameters are not a JSON object")
    spellings = [key for key in parameters if str(key).upper() == QUERY_TAG]
    if len(spellings) > 1:
        raise TagError("the request names QUERY_TAG more than once")
    if not spellings and not always:
        return None
    merged = {k: v for k, v in parameters.items() if k not in spellings}
    merged[QUERY_TAG] = tag_of(parameters[spellings[0]] if spellings else None)
    return merged


def rewrite_alter_session(sql: str, tag_of: Any) -> str | None:
    """The statement with the merged tag, None if the SQL does not touch QUERY_TAG.

    Raises TagError for SQL that alters the session's QUERY_TAG in a form the
    gateway cannot rewrite safely.
    """
    if not (_ALTERS_SESSION.search(sql) and _NAMES_QUERY_TAG.search(sql)):
        return None
    try:
        parsed = [e for e in sqlglot.parse(sql, read="snowflake") if e is not None]
    except sqlglot.errors.SqlglotError:
        raise TagError(_UNSAFE) from None
    if len(parsed) != 1:
        raise TagError(_UNSAFE)
    statement = parsed[0]
    if not (
        isinstance(statement, exp.Alter) and str(statement.args.get("kind")).upper() == "SESSION"
    ):
        raise TagError(_UNSAFE)
    actions = statement.args.get("actions") or []
    if len(actions) != 1 or not isinstance(actions[0], exp.AlterSession):
        raise TagError(_UNSAFE)
    items = actions[0].expressions
    if len(items) != 1 or not isinstance(items[0], exp.SetItem):
        raise TagError(_UNSAFE)
    target = items[0].this
    if actions[0].args.get("unset"):
        if not (isinstance(target, exp.Identifier) and target.name.upper() == QUERY_TAG):
            raise TagError(_UNSAFE)
        client_tag = None
    elif (
        isinstance(target, exp.EQ)
        and isinstance(target.this, exp.Column)
        and target.this.name.upper() == QUERY_TAG
        and isinstance(target.expression, exp.Literal)
        and target.expression.is_string
    ):
        client_tag = target.expression.this
    else:
        raise TagError(_UNSAFE)
    rewritten = exp.Alter(
        this=None,
        kind="SESSION",
        actions=[
            exp.AlterSession(
                expressions=[
                    exp.SetItem(
                        this=exp.EQ(
                            this=exp.column(QUERY_TAG),
                            expression=exp.Literal.string(tag_of(client_tag)),
                        )
                    )
                ],
                unset=False,
            )
        ],
    )
    return rewritten.sql("snowflake")


class Attribution:
    """Sets the merged QUERY_TAG on logins, queries, SQL API calls and ALTER SESSION."""

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered:
            return
        if state.session_id is not None and state.caller is not None:
            try:
                self._attribute(flow, state, state.session_id, state.caller.subject)
            except TagError as exc:
                refuse(flow, state, protocol.CODE_GATEWAY_POLICY, str(exc), ATTRIBUTION)
                return
        state.passed.add(ATTRIBUTION)

    def _attribute(self, flow: http.HTTPFlow, state: FlowState, session: str, caller: str) -> None:
        def tag_of(client_tag: object) -> str:
            return session_tag(session, caller, client_tag)

        body = state.request_json
        if not isinstance(body, dict):
            return
        if state.endpoint is Endpoint.LOGIN:
            data = body.get("data")
            if not isinstance(data, dict):
                return
            merged = merge_parameters(data.get("SESSION_PARAMETERS"), tag_of, always=True)
            assert merged is not None
            upstream = orjson.loads(flow.request.content or b"{}")
            upstream["data"]["SESSION_PARAMETERS"] = merged
            protocol.write_json_body(flow.request, upstream)
            _keep_client_body(state, {**body, "data": {**data, "SESSION_PARAMETERS": merged}})
        elif state.endpoint is Endpoint.QUERY:
            self._rewrite(flow, state, body, "sqlText", tag_of, always=False)
        elif state.endpoint is Endpoint.SQL_API and _submits_statement(flow.request):
            self._rewrite(flow, state, body, "statement", tag_of, always=True)

    @staticmethod
    def _rewrite(
        flow: http.HTTPFlow,
        state: FlowState,
        body: dict[str, Any],
        sql_field: str,
        tag_of: Any,
        always: bool,
    ) -> None:
        parameters = merge_parameters(body.get("parameters"), tag_of, always)
        sql = body.get(sql_field)
        statement = rewrite_alter_session(sql, tag_of) if isinstance(sql, str) else None
        if parameters is None and statement is None:
            return
        # the body as it goes upstream: authentication may have rewritten it (the SQL API role)
        rewritten = orjson.loads(flow.request.content or b"{}")
        if parameters is not None:
            rewritten["parameters"] = parameters
        if statement is not None:
            rewritten[sql_field] = statement
        protocol.write_json_body(flow.request, rewritten)
        _keep_client_body(state, rewritten)


def _submits_statement(request: http.Request) -> bool:
    return request.method == "POST" and request.path.partition("?")[0].rstrip("/") == (
        "/api/v2/statements"
    )


def _keep_client_body(state: FlowState, body: dict[str, Any]) -> None:
    """What later hooks read as the request: the body as it goes upstream."""
    state.request_json = body
    state.request_body = orjson.dumps(body)
