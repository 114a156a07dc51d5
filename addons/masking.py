"""Masking: sensitive data in results detected, masked or withheld before the caller reads it.

A rule's `mask_columns`, `detect` and `on_detect` keys (docs/masking.md) say,
per group, which result columns are masked whole and which kinds of value
are looked for in the rest; the library in recorder/masking/ does the work.
This addon applies it to every answer that carries rows inline: query answers
(`data.rowset`, `data.rowsetBase64`), `GET /queries/{id}/result` and SQL API v2
statements and partitions. Result chunks are to be masked by the chunk path
with `hoopgw.recorder.masking.mask_chunk`; until that path exists, an answer
with chunks in cloud storage is withheld from a caller with masking rules,
since its chunks would reach the caller unmasked.

It runs after `Guardrails` and before `Recording`: its response hook changes
the answer before mitmproxy writes it to the client, and the recorder, next in
the list, records the answer as the caller received it, with the detections.
A caller none of whose rules mask anything costs one dictionary look-up per
answer: nothing is parsed for it that was not parsed already.

A large answer that addons/traffic.py would stream is buffered instead for a
caller with masking rules (streamed rows cannot be masked), up to mitmproxy's
`body_size_limit`, and masked like any other; a decoded body over
`hoopgw_response_limit`, which the gateway cannot read, is withheld.

`withhold` replaces the answer with error 399007 naming the column and the
kind, never the value. The statement has run in Snowflake by then; the
message says so and gives its query id.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import orjson
from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.guardrails import Guardrails
from hoopgw.addons.protocol import Endpoint, Shape
from hoopgw.addons.refusals import replace_answer
from hoopgw.recorder.masking import (
    NO_MASKING,
    MaskPlan,
    Outcome,
    UnmaskableAnswer,
    mask_answer,
    mask_sql_api,
)

logger = logging.getLogger(__name__)

_PLAN_CACHE = 1024
_ROW_TYPE_CACHE = 4096
"""SQL API statements whose columns are remembered for their later partitions."""


class Masking:
    """Masks or withholds sensitive values in result rows, per the caller's rules."""

    def __init__(self, guardrails: Guardrails) -> None:
        self._guardrails = guardrails
        self._plans: dict[tuple[str | None, frozenset[str]], MaskPlan] = {}
        self._row_types: OrderedDict[str, list[Any]] = OrderedDict()

    def plan_for(self, state: FlowState) -> MaskPlan:
        """The caller's merged masking rules; NO_MASKING when none applies."""
        caller = state.caller
        if caller is None:
            return NO_MASKING
        policy = self._guardrails.policy
        key = (policy.digest, frozenset(caller.groups))
        plan = self._plans.get(key)
        if plan is None:
            rules = policy.rules_for(caller.groups)
            plan = MaskPlan.merged(
                [
                    (rule.mask_columns, rule.detect, rule.on_detect)
                    for rule in rules
                    if rule.mask_columns or rule.detect
                ]
            )
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.streamed is None or flow.response is None:
            return
        if self.plan_for(state).active:
            # streamed rows would reach the caller unmasked: buffer this answer instead
            flow.response.stream = False
            state.streamed = None

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        response = flow.response
        if state is None or response is None or state.answered or not flow.live:
            return
        if not protocol.carries_results(state.endpoint, flow.request.method, flow.request.path):
            return
        plan = self.plan_for(state)
        if not plan.active or not 200 <= response.status_code < 300:
            return
        answer = state.response_json
        if answer is None:
            if state.response_body:
                self._withhold(
                    flow, state, "the answer could not be read, so it could not be masked", None
                )
            return
        if _has_chunks(answer):
            # the chunks would go from cloud storage to the client unmasked: until the
            # chunk path masks them (recorder.masking.mask_chunk), such a result is withheld
            self._withhold(
                flow,
                state,
                "the result is larger than one inline part, and its further parts "
                "(result chunks) cannot be masked yet; narrow the query or add a LIMIT",
                _query_id(answer),
            )
            return
        try:
            outcome = self._mask(flow, state, answer, plan)
        except UnmaskableAnswer as exc:
            self._withhold(flow, state, f"{exc}, so it could not be masked", _query_id(answer))
            return
        if outcome.detections:
            state.detections = outcome.as_record()
        withheld = outcome.withheld
        if withheld is not None:
            reason = (
                f"column {withheld.column} holds {withheld.kind} "
                f"({withheld.count} value{'s' if withheld.count != 1 else ''})"
            )
            self._withhold(flow, state, reason, _query_id(answer))
        elif outcome.changed:
            state.response_body = orjson.dumps(answer)
            client = state.client_json
            if client is None:
                protocol.write_json_body(response, answer)
            else:  # the client's copy differs from the record's (bound ids, sealed URLs)
                self._mask(flow, state, client, plan)
                state.send_to_client(flow, client)

    def _mask(
        self, flow: http.HTTPFlow, state: FlowState, answer: dict[str, Any], plan: MaskPlan
    ) -> Outcome:
        if state.endpoint is not Endpoint.SQL_API:
            return mask_answer(answer, plan)
        handle = answer.get("statementHandle")
        metadata = answer.get("resultSetMetaData")
        if isinstance(handle, str) and isinstance(metadata, dict):
            row_type = metadata.get("rowType")
            if isinstance(row_type, list):
                self._row_types[handle] = row_type
                self._row_types.move_to_end(handle)
                while len(self._row_types) > _ROW_TYPE_CACHE:
                    self._row_types.popitem(last=False)
        known = self._row_types.get(_statement_handle(flow.request.path) or "")
        return mask_sql_api(answer, plan, known)

    @staticmethod
    def _withhold(flow: http.HTTPFlow, state: FlowState, reason: str, query_id: str | None) -> None:
        ran = f" (query id {query_id})" if query_id else ""
        message = (
            f"hoopgw withheld the result: {reason}. The statement ran in Snowflake{ran}; "
            "your policy does not allow this data to be returned to you."
        )
        shape = Shape.SQL_API if state.endpoint is Endpoint.SQL_API else Shape.QUERY
        replace_answer(flow, state, shape, protocol.CODE_GATEWAY_SENSITIVE, message)
        logger.info("hoopgw: withheld the answer to %s: %s", flow.id, reason)


def _has_chunks(answer: dict[str, Any]) -> bool:
    data = answer.get("data")
    return isinstance(data, dict) and bool(data.get("chunks"))


def _query_id(answer: dict[str, Any]) -> str | None:
    data = answer.get("data")
    value = data.get("queryId") if isinstance(data, dict) else answer.get("statementHandle")
    return value if isinstance(value, str) else None


def _statement_handle(path: str) -> str | None:
    """The statement handle of `/api/v2/statements/{handle}?partition=N`."""
    parts = path.partition("?")[0].rstrip("/").split("/")
    if len(parts) >= 5 and parts[-2] == "statements":
        return parts[-1]
    return None
