"""Masking: sensitive data in results detected, masked or withheld before the caller reads it.

A rule's `mask_columns`, `detect` and `on_detect` keys (docs/masking.md) say,
per group, which result columns are masked whole and which kinds of value
are looked for in the rest; the library in recorder/masking/ does the work.
This addon applies it to every answer that carries rows inline: query answers
(`data.rowset`, `data.rowsetBase64`), `GET /queries/{id}/result` and SQL API v2
statements and partitions, and every result chunk the gateway proxies
(addons/results.py). An answer whose chunks are not proxied (option
`hoopgw_result_chunks=direct`) is withheld from a caller with masking rules,
since its chunks would go from cloud storage to the caller unmasked.

A chunk request carries no session token: its sealed ticket names the caller
and the result's columns, so the plan is the caller's under the policy in force
when the chunk is fetched, on whichever replica serves it. For a caller with
rules the chunk is buffered instead of streamed, decoded (bounded by
`hoopgw_response_limit`), masked with `mask_chunk`, encoded back the way cloud
storage sent it (all on a worker thread), and its `chunk` record hashes what the caller received and
lists the detections. A withheld chunk is answered 451 with a reason phrase the
connector shows in its error. A caller without rules keeps the streamed path:
one look-up per chunk, nothing buffered or decoded.

It runs after `Guardrails` and before `Recording`: its response hook changes
the answer before mitmproxy writes it to the client, and the recorder, next in
the list, records the answer as the caller received it, with the detections.
A caller none of whose rules mask anything costs one dictionary look-up per
answer: nothing is parsed for it that was not parsed already. A gateway whose
policy masks nothing never loads the detectors' libraries (pyarrow.compute,
phonenumbers; about 50 MB of RSS): they load when a policy with masking rules
is configured, or when a reloaded policy first yields a plan that masks.

Masking a large answer takes tens of milliseconds (a 10k-row answer with
every kind: 18-42 ms), which on the event loop every other client would wait
out. An answer or chunk over `INLINE_MASK_BYTES` is masked on one of
`MASKING_WORKERS` worker threads instead: its flow waits, the others go on. The flow's
hooks are paused meanwhile, so the worker alone touches its answer; the
SQL API's remembered columns are read and updated on the loop before.

A large answer that addons/traffic.py would stream is buffered instead for a
caller with masking rules (streamed rows cannot be masked), up to mitmproxy's
`body_size_limit`, and masked like any other; a decoded body over
`hoopgw_response_limit`, which the gateway cannot read, is withheld.

`withhold` replaces the answer with error 399007 naming the column and the
kind, never the value. The statement has run in Snowflake by then; the
message says so and gives its query id.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from mitmproxy import ctx, http

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.guardrails import Guardrails
from hoopgw.addons.protocol import Endpoint, Shape
from hoopgw.addons.refusals import replace_answer
from hoopgw.addons.results import (
    PROXIED_URL_PREFIX,
    Admitted,
    ChunkTap,
    ChunkUnreadable,
    ResultChunks,
    read_chunk,
    write_chunk,
)
from hoopgw.recorder import masking as library
from hoopgw.recorder.masking import (
    NO_MASKING,
    Detection,
    MaskPlan,
    Outcome,
    UnmaskableAnswer,
    mask_answer,
    mask_chunk,
    mask_sql_api,
)

logger = logging.getLogger(__name__)

WITHHELD_CHUNK_STATUS = 451
"""Unavailable For Legal Reasons: the policy's refusal, and a status the connector quotes."""
_PLAN_CACHE = 1024
_ROW_TYPE_CACHE = 4096
"""SQL API statements whose columns are remembered for their later partitions."""
INLINE_MASK_BYTES = 32 * 1024
"""An answer body up to this size is masked on the event loop; a larger one on a worker."""
MASKING_WORKERS = 2
"""Worker threads masking answers: one per core of the machine the gateway is sized for."""


class Masking:
    """Masks or withholds sensitive values in result rows, per the caller's rules."""

    def __init__(self, guardrails: Guardrails, chunks: ResultChunks | None = None) -> None:
        self._guardrails = guardrails
        self._chunks = chunks
        self._plans: dict[tuple[str | None, frozenset[str]], MaskPlan] = {}
        self._row_types: OrderedDict[str, list[Any]] = OrderedDict()
        self.workers = ThreadPoolExecutor(MASKING_WORKERS, thread_name_prefix="hoopgw-mask")
        """Where large answers and chunks are masked; threads start on first use."""

    def done(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)

    def configure(self, updated: set[str]) -> None:
        """Load the detectors' libraries at start-up, and only for a policy that masks."""
        if "hoopgw_policy" in updated and any(
            rule.mask_columns or rule.detect for rule in self._guardrails.policy.rules
        ):
            library.load()

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
            if plan.active:  # a reloaded policy may be the first to mask anything
                library.load()
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is None:
            return
        if state.endpoint is Endpoint.CHUNK:
            self._chunk_headers(flow, state)
            return
        if state.streamed is None:
            return
        if self.plan_for(state).active:
            # streamed rows would reach the caller unmasked: buffer this answer instead
            flow.response.stream = False
            state.streamed = None

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Mask the answer; a large one on a worker thread (the returned awaitable)."""
        state = state_of(flow)
        response = flow.response
        if state is None or response is None or state.answered or not flow.live:
            return None
        if state.endpoint is Endpoint.CHUNK:
            return self._chunk_answer(flow, state)
        if not protocol.carries_results(state.endpoint, flow.request.method, flow.request.path):
            return None
        plan = self.plan_for(state)
        if not plan.active or not 200 <= response.status_code < 300:
            return None
        answer = state.response_json
        if answer is None:
            if state.response_body:
                self._withhold(
                    flow, state, "the answer could not be read, so it could not be masked", None
                )
            return None
        if _unproxied_chunks(answer):
            # the chunks would go from cloud storage to the client unmasked
            self._withhold(
                flow,
                state,
                "the result is larger than one inline part, and its further parts "
                "(result chunks) would reach you from cloud storage unmasked "
                "(hoopgw_result_chunks=direct); narrow the query or add a LIMIT",
                _query_id(answer),
            )
            return None
        known = self._known_row_type(flow, state, answer)
        size = len(state.response_body or b"")
        return self._in_place_or_on_worker(size, self._masked, flow, state, answer, plan, known)

    def _in_place_or_on_worker(
        self, size: int, work: Callable[..., None], *args: Any
    ) -> Awaitable[None] | None:
        """Mask a small answer in place; a larger one (megabytes, for a chunk) on a worker."""
        if size <= INLINE_MASK_BYTES:
            work(*args)
            return None
        return self._on_worker(work, *args)

    async def _on_worker(self, work: Callable[..., None], *args: Any) -> None:
        """The flow waits here; every other flow goes on while a worker masks its answer.

        The flow's hooks are paused until this returns, so the worker is the only
        one touching its answer and state.
        """
        await asyncio.get_running_loop().run_in_executor(self.workers, work, *args)

    def _masked(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        answer: dict[str, Any],
        plan: MaskPlan,
        known: list[Any] | None,
    ) -> None:
        response = flow.response
        assert response is not None
        try:
            outcome = self._mask(state, answer, plan, known)
        except UnmaskableAnswer as exc:
            self._withhold(flow, state, f"{exc}, so it could not be masked", _query_id(answer))
            return
        if outcome.detections:
            state.detections = outcome.as_record()
        withheld = outcome.withheld
        if withheld is not None:
            self._withhold(flow, state, _withheld_reason(withheld), _query_id(answer))
        elif outcome.changed:
            state.response_body = orjson.dumps(answer)
            client = state.client_json
            if client is None:
                protocol.write_json_body(response, answer)
            else:  # the client's copy differs from the record's (bound ids, sealed URLs)
                self._mask(state, client, plan, known)
                state.send_to_client(flow, client)

    def _known_row_type(
        self, flow: http.HTTPFlow, state: FlowState, answer: dict[str, Any]
    ) -> list[Any] | None:
        """A SQL API partition's columns, remembered from its statement's first answer."""
        if state.endpoint is not Endpoint.SQL_API:
            return None
        handle = answer.get("statementHandle")
        metadata = answer.get("resultSetMetaData")
        if isinstance(handle, str) and isinstance(metadata, dict):
            row_type = metadata.get("rowType")
            if isinstance(row_type, list):
                self._row_types[handle] = row_type
                self._row_types.move_to_end(handle)
                while len(self._row_types) > _ROW_TYPE_CACHE:
                    self._row_types.popitem(last=False)
        return self._row_types.get(_statement_handle(flow.request.path) or "")

    @staticmethod
    def _mask(
        state: FlowState, answer: dict[str, Any], plan: MaskPlan, known: list[Any] | None
    ) -> Outcome:
        if state.endpoint is not Endpoint.SQL_API:
            return mask_answer(answer, plan)
        return mask_sql_api(answer, plan, known)

    # result chunks (addons/results.py admits them; ChunkFetch fetches and records them)

    def _admitted(self, flow: http.HTTPFlow) -> Admitted | None:
        return self._chunks.admitted.get(flow) if self._chunks is not None else None

    def _chunk_headers(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """A masked caller's chunk is buffered: masking needs it whole."""
        admitted = self._admitted(flow)
        response = flow.response
        if admitted is None or response is None or response.status_code != 200:
            return
        if self.plan_for(state).active:
            admitted.buffered = True
            response.stream = False
            state.streamed = None

    def _chunk_answer(self, flow: http.HTTPFlow, state: FlowState) -> Awaitable[None] | None:
        admitted = self._admitted(flow)
        response = flow.response
        if admitted is None or response is None or response.status_code != 200:
            return None
        if not admitted.buffered:
            return None
        plan = self.plan_for(state)
        # the answer's own record never holds the rows; the chunk record holds them masked
        state.response_body = b""
        state.response_json = None
        limits = (_response_limit(), _body_limit())
        size = len(response.raw_content or b"")
        return self._in_place_or_on_worker(
            size, self._masked_chunk, flow, state, admitted, plan, limits
        )

    def _masked_chunk(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        admitted: Admitted,
        plan: MaskPlan,
        limits: tuple[int, int],
    ) -> None:
        response = flow.response
        assert response is not None
        response_limit, body_limit = limits
        ticket = admitted.ticket
        rowtype = ticket.rowtype()
        try:
            if rowtype is None:
                raise UnmaskableAnswer(
                    "the result has too many columns for its chunk URLs to describe them"
                )
            body, how = read_chunk(response, response_limit)
            masked, outcome = mask_chunk(body, ticket.result_format or "json", rowtype, plan)
        except (UnmaskableAnswer, ChunkUnreadable) as exc:
            self._withhold_chunk(flow, state, admitted, f"{exc}, so it could not be masked")
            return
        admitted.detections = outcome.as_record()
        if outcome.detections:
            state.detections = admitted.detections
        withheld = outcome.withheld
        if withheld is not None:
            self._withhold_chunk(flow, state, admitted, _withheld_reason(withheld))
            return
        if masked is not body:
            write_chunk(response, masked, how)
        encoding = response.headers.get("content-encoding", "").strip().lower()
        admitted.tap = ChunkTap(encoding, body_limit, ticket.size)
        admitted.tap(response.raw_content or b"")

    @staticmethod
    def _withhold_chunk(
        flow: http.HTTPFlow, state: FlowState, admitted: Admitted, reason: str
    ) -> None:
        """A 451 whose reason phrase says why: the connector's error shows that phrase.

        Connector 4.8 retries every failed chunk download ten times with backoff,
        whatever the status, and each retry is withheld and recorded again. For
        403 (and other statuses it deems retryable) its final error is a bare
        "HTTP 403: Forbidden"; for any other it quotes the status line, so the
        caller reads who withheld the chunk and why.
        """
        ticket = admitted.ticket
        message = (
            f"hoopgw withheld result chunk {ticket.index} of query {ticket.query_id}: {reason}. "
            "Your policy does not allow this data to be returned to you."
        )
        response = protocol.error_response(
            Shape.SESSION, protocol.CODE_GATEWAY_SENSITIVE, message, status=WITHHELD_CHUNK_STATUS
        )
        response.reason = _status_line_text(f"Withheld by hoopgw: {reason}")
        flow.response = response
        state.response_body = response.raw_content
        state.response_json = orjson.loads(response.raw_content or b"{}")
        admitted.withheld = reason
        logger.info("hoopgw: withheld chunk %s of %s: %s", ticket.index, flow.id, reason)

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


def _chunks(answer: dict[str, Any]) -> list[Any]:
    data = answer.get("data")
    chunks = data.get("chunks") if isinstance(data, dict) else None
    return chunks if isinstance(chunks, list) else []


def _unproxied_chunks(answer: dict[str, Any]) -> bool:
    """Whether some chunk of the answer goes to the client other than through the gateway.

    `answer` is the record's copy, in which ResultChunks replaced every chunk URL
    it rewrote with `hoopgw:chunk/...`; any other URL is one the client fetches itself.
    """
    return any(
        not (isinstance(chunk, dict) and str(chunk.get("url", "")).startswith(PROXIED_URL_PREFIX))
        for chunk in _chunks(answer)
    )


def _withheld_reason(withheld: Detection) -> str:
    plural = "s" if withheld.count != 1 else ""
    return f"column {withheld.column} holds {withheld.kind} ({withheld.count} value{plural})"


def _status_line_text(text: str) -> str:
    """`text` as an HTTP/1.1 reason phrase: printable ASCII, one line, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]


def _response_limit() -> int:
    return int(getattr(ctx.options, "hoopgw_response_limit", 512 * 1024 * 1024))


def _body_limit() -> int:
    return int(getattr(ctx.options, "hoopgw_body_limit", 1024 * 1024))


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
