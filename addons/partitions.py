"""SQL API result partitions: each one fetched, counted and hashed, on the statement's record.

An SQL API v2 answer with more than one partition (`resultSetMetaData.
partitionInfo`) carries partition 0 inline; the client fetches the others with
`GET /api/v2/statements/{handle}?partition=N`. Each SQL API call is its own
hoopgw session, so on its own a partition fetch would be recorded apart from
the statement it belongs to, and nothing could say "K of M fetched".

`SqlApiPartitions` ties them: when an answer hands out partitions it stores a
small tie, `sqlapi/partitions/<sha256 of the handle>.json` (the statement's
hoopgw session, the caller, each partition's declared rows), in the store every
replica reads, and keeps it in memory. A partition fetch (its handle already
mapped back to Snowflake's by addons/query_ids.py, so only the statement's
caller can name it) is then recorded in the statement's session, and
`PartitionRecords` writes a `chunk` record per partition (`partition: true`):
the SHA-256 and size of the bytes the client got, the declared rows, timing
and status. `hoopgw sessions show`,
`hoopgw verify` and the mitmweb view count them like result chunks: "N rows in
M partitions, K of M fetched". A fetch whose tie cannot be read is recorded in
its own session, as before. The tie costs one store write per answer with
more than one partition, and one read per partition fetch on a replica that
has not seen the statement.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import urllib.parse
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson
from mitmproxy import ctx, http

from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.protocol import Endpoint
from hoopgw.recorder.records import Client, milliseconds, new_record
from hoopgw.recorder.schema import RecordKind
from hoopgw.recorder.store import KeyNotFound, StoreError

logger = logging.getLogger(__name__)

TIE_PREFIX: Final = "sqlapi/partitions/"
_REMEMBERED: Final = 4096
_STATEMENTS: Final = "/api/v2/statements"


@dataclass(frozen=True, slots=True)
class PartitionTie:
    """Which hoopgw session an SQL API result belongs to, and what each partition holds."""

    handle: str
    session_id: str
    subject: str | None
    rows: tuple[int | None, ...]

    @property
    def count(self) -> int:
        return len(self.rows)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> PartitionTie:
        raw = orjson.loads(data)
        rows = tuple(row if isinstance(row, int) else None for row in raw.get("rows") or ())
        return cls(str(raw["handle"]), str(raw["session_id"]), raw.get("subject"), rows)


@dataclass(slots=True)
class PartitionFetch:
    tie: PartitionTie
    number: int
    started: float


def tie_key(handle: str) -> str:
    return f"{TIE_PREFIX}{hashlib.sha256(handle.encode()).hexdigest()}.json"


class SqlApiPartitions:
    """Ties SQL API partition fetches to their statement's session; `PartitionRecords` records them.

    Sits after `QueryIds` (handles are Snowflake's by then) and before
    `Recording` (which writes the fetch in the session set here).
    """

    def __init__(self) -> None:
        self.ties: OrderedDict[str, PartitionTie] = OrderedDict()
        self.fetches: weakref.WeakKeyDictionary[http.HTTPFlow, PartitionFetch] = (
            weakref.WeakKeyDictionary()
        )
        self.answers: weakref.WeakValueDictionary[str, http.HTTPFlow] = (
            weakref.WeakValueDictionary()
        )
        self._fetched: dict[str, set[int]] = {}

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.endpoint is not Endpoint.SQL_API or state.answered:
            return
        handle, number = partition_request(flow.request)
        if handle is None or number is None or number < 1 or state.caller is None:
            return
        tie = self.ties.get(handle) or await self._read_tie(handle)
        if tie is None or tie.subject != state.caller.subject or number >= tie.count:
            return
        state.session_id = tie.session_id
        self.fetches[flow] = PartitionFetch(tie, number, time.time())

    async def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is None or flow in self.fetches:
            return
        tie = self._tie_from_answer(flow, state)
        if tie is not None:
            self._remember(tie)
            self.answers[tie.handle] = flow
            self._fetched[tie.handle] = {0}
            _note_fetched(flow, 1)
            await self._write_tie(tie)

    @staticmethod
    def _tie_from_answer(flow: http.HTTPFlow, state: FlowState) -> PartitionTie | None:
        if state.endpoint is not Endpoint.SQL_API or state.answered or state.caller is None:
            return None
        if state.session_id is None or not 200 <= flow.response.status_code < 300:
            return None
        answer = state.response_json
        if not isinstance(answer, dict) or not isinstance(answer.get("statementHandle"), str):
            return None
        meta = answer.get("resultSetMetaData")
        info = meta.get("partitionInfo") if isinstance(meta, dict) else None
        if not isinstance(info, list) or len(info) < 2:
            return None
        rows = tuple(
            part.get("rowCount")
            if isinstance(part, dict) and isinstance(part.get("rowCount"), int)
            else None
            for part in info
        )
        return PartitionTie(answer["statementHandle"], state.session_id, state.caller.subject, rows)

    def _remember(self, tie: PartitionTie) -> None:
        self.ties[tie.handle] = tie
        self.ties.move_to_end(tie.handle)
        while len(self.ties) > _REMEMBERED:
            handle, _ = self.ties.popitem(last=False)
            self._fetched.pop(handle, None)

    async def _write_tie(self, tie: PartitionTie) -> None:
        store = _store()
        if store is None:
            return
        try:
            await asyncio.to_thread(store.put, tie_key(tie.handle), tie.to_json())
        except (StoreError, OSError) as exc:
            logger.warning(
                "hoopgw: partitions of %s are recorded apart from their statement on other "
                "replicas: the tie could not be stored (%s)",
                tie.handle,
                exc,
            )

    async def _read_tie(self, handle: str) -> PartitionTie | None:
        store = _store()
        if store is None:
            return None
        try:
            data = await asyncio.to_thread(store.get, tie_key(handle))
            tie = PartitionTie.from_json(data)
        except KeyNotFound:
            return None
        except (StoreError, OSError, ValueError, KeyError, orjson.JSONDecodeError) as exc:
            logger.warning("hoopgw: the partition tie of %s cannot be read: %s", handle, exc)
            return None
        if tie.handle != handle:
            return None
        self._remember(tie)
        return tie

    def record(
        self, flow: http.HTTPFlow, state: FlowState, fetch: PartitionFetch, error: str | None
    ) -> None:
        """Write the fetch's `chunk` record in the statement's session."""
        response = flow.response
        status = response.status_code if response is not None else None
        fields: dict[str, Any] = {
            "flow_id": flow.id,
            "query_id": fetch.tie.handle,
            "chunk_index": fetch.number,
            "chunk_count": fetch.tie.count,
            "partition": True,
            "result_format": "json",
            "rows": fetch.tie.rows[fetch.number],
            "status": status,
            "duration_ms": milliseconds(fetch.started, time.time()),
        }
        complete = error is None and status == 200
        if state.streamed is not None:
            facts = state.streamed.facts()
            complete = complete and "undecodable" not in facts
            fields["wire_size"] = facts.get("wire_size", facts.get("size"))
            fields["sha256"] = facts.get("wire_sha256", facts.get("sha256"))
            if "size" in facts:
                fields["size"] = facts["size"]
        elif response is not None and response.raw_content is not None:
            fields["wire_size"] = len(response.raw_content)
            fields["sha256"] = hashlib.sha256(response.raw_content).hexdigest()
        else:
            complete = False
        if status != 200 and error is None:
            error = f"Snowflake answered HTTP {status}"
        if error is not None:
            fields["error"] = error
        fields["complete"] = complete
        if complete:
            self._fetched_one(fetch)
        client = Client(
            address=_peer(flow), application=state.client_app, version=state.client_version
        )
        caller = state.caller.as_record() if state.caller is not None else None
        record = new_record(RecordKind.CHUNK, fetch.tie.session_id, client, caller, **fields)
        recording = ctx.master.addons.get("recording")
        if recording is None:
            logger.error("hoopgw: no recording; the partition record of %s is lost", flow.id)
            return
        recording.append_quietly([record])

    def _fetched_one(self, fetch: PartitionFetch) -> None:
        """Count the partition on the statement's answer, for the mitmweb view."""
        fetched = self._fetched.get(fetch.tie.handle)
        answer = self.answers.get(fetch.tie.handle)
        if fetched is None or answer is None:
            return
        fetched.add(fetch.number)
        _note_fetched(answer, len(fetched))


class PartitionRecords:
    """Records each partition fetch once its answer is what the client gets.

    Sits after `Recording` and masking, as `ChunkFetch` does: the `chunk`
    record follows the fetch's own response record and hashes the bytes sent.
    """

    def __init__(self, partitions: SqlApiPartitions) -> None:
        self.partitions = partitions

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        fetch = self.partitions.fetches.pop(flow, None)
        if state is not None and fetch is not None:
            self.partitions.record(flow, state, fetch, None)

    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        fetch = self.partitions.fetches.pop(flow, None)
        if state is not None and fetch is not None:
            reason = str(flow.error.msg) if flow.error else "unknown"
            error = f"the partition did not reach the client: {reason}"
            self.partitions.record(flow, state, fetch, error)


def partition_request(request: http.Request) -> tuple[str | None, int | None]:
    """The handle and partition number of `GET /api/v2/statements/{handle}?partition=N`."""
    if request.method != "GET":
        return None, None
    route, _, query = request.path.partition("?")
    parts = route.rstrip("/").split("/")
    if len(parts) != 5 or "/".join(parts[:4]) != _STATEMENTS:
        return None, None
    values = urllib.parse.parse_qs(query).get("partition")
    if not values or len(values) != 1 or not values[0].isdigit():
        return parts[4], None
    return parts[4], int(values[0])


def _note_fetched(flow: http.HTTPFlow, fetched: int) -> None:
    hoopgw = flow.metadata.get("hoopgw")
    if not isinstance(hoopgw, dict):
        hoopgw = flow.metadata["hoopgw"] = {}
    hoopgw["partitions_fetched"] = fetched


def _store() -> Any:
    return getattr(ctx.master.addons.get("recording"), "store", None)


def _peer(flow: http.HTTPFlow) -> str | None:
    address = flow.client_conn.peername
    return f"{address[0]}:{address[1]}" if address else None
