"""The session's current database and schema: tracked here, read by every other hook.

A query's relative names resolve against the session's current database and
schema, which change with each `USE` and which Snowflake reports after every
statement. `SessionContextTracker` is the one owner of that knowledge: before
Guardrails classifies a query it puts the session's tracked context on the
flow's state (`state.context`, which the recorder records too), and from each
successful answer it learns the context in force afterwards.
"""

from __future__ import annotations

from collections import OrderedDict

from mitmproxy import http

from hoopgw.addons.flowstate import state_of
from hoopgw.addons.protocol import Endpoint
from hoopgw.recorder.statements import context_after
from hoopgw.recorder.statements.objects import parse_dotted


class SessionContexts:
    """Each session's current database and schema, as far as this gateway replica has seen.

    Snowflake reports the context after every statement (finalDatabaseName,
    finalSchemaName); when it does not, the statements' own USE effects apply.
    Bounded: the least recently used sessions are forgotten first, and fall
    back to the context they logged in with.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._contexts: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()

    def get(self, session_id: str) -> tuple[str | None, str | None] | None:
        context = self._contexts.get(session_id)
        if context is not None:
            self._contexts.move_to_end(session_id)
        return context

    def set(self, session_id: str, context: tuple[str | None, str | None]) -> None:
        self._contexts[session_id] = context
        self._contexts.move_to_end(session_id)
        while len(self._contexts) > self.limit:
            self._contexts.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._contexts.pop(session_id, None)


class SessionContextTracker:
    """Puts each session's current database and schema on its queries, and follows them.

    Runs after Authentication, which sets the context the session logged in
    with (from its token), and before Guardrails, which classifies statements
    against the context set here.
    """

    def __init__(self) -> None:
        self.contexts = SessionContexts()

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered or state.session_id is None:
            return
        if state.endpoint is Endpoint.SQL_API:
            state.context.database = _sql_api_name(state.context.database)
            state.context.schema = _sql_api_name(state.context.schema)
        if state.endpoint is Endpoint.QUERY:
            tracked = self.contexts.get(state.session_id)
            if tracked is not None:
                state.context.database, state.context.schema = tracked

    def response(self, flow: http.HTTPFlow) -> None:
        """Learn the session's database and schema from Snowflake's answer."""
        state = state_of(flow)
        if state is None or state.session_id is None:
            return
        if state.session_ended:
            self.contexts.forget(state.session_id)
            return
        statements = state.classified
        if statements is None or state.endpoint is not Endpoint.QUERY or state.answered:
            return
        payload = state.response_json
        if not isinstance(payload, dict) or not payload.get("success"):
            return
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        database, schema = data.get("finalDatabaseName"), data.get("finalSchemaName")
        if isinstance(database, str) or isinstance(schema, str):
            self.contexts.set(state.session_id, (database or None, schema or None))
        elif any(statement.new_context is not None for statement in statements):
            before = (state.context.database, state.context.schema)
            self.contexts.set(state.session_id, context_after(statements, *before))


def _sql_api_name(value: str | None) -> str | None:
    """A SQL API `database` or `schema` value as Snowflake resolves it: an identifier,
    unquoted upper-cased, `"quoted"` as written. A value that is not one identifier
    (dots, spaces, stray quotes) is unknown to the policy, which then treats it as any."""
    if not value:
        return None
    parts = parse_dotted(value)
    if parts is None or len(parts) != 1 or not parts[0]:
        return None
    return parts[0]
