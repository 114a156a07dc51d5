"""Recorder microbenchmark: encode+compress throughput, compression ratio, spool appends.

    .venv/bin/python -m scripts.bench_recorder [--records 20000] [--seconds 2]

The session is synthetic but shaped like real traffic through the gateway: a
login (redacted), then statements with SQL, bindings and JSON result rows in
the response bodies, some failing, a token renewal and a logout, each record
built with recorder.redaction as the recording addon builds it. Targets
(issue 4): >= 50,000 records/s for encode+compress on one core, >= 8x
compression.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.redaction import body_for_record, redact_headers, redact_sql
from hoopgw.recorder.schema import GENESIS_HASH, chain_record
from hoopgw.recorder.segment import COMPRESSION_LEVEL, compress_lines, encode_segment
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.store import LocalStore

BODY_LIMIT = 1024 * 1024
SEGMENT_BYTES = 4 * 1024 * 1024
CALLER = {
    "subject": "00u1abcd2EFGH3ijk4l5",
    "email": "agent-runner@example.com",
    "groups": ["data-analysts", "ai-agents"],
    "role": "ANALYST_RO",
    "issuer": "https://idp.example.com/oauth2/default",
}
CLIENT = {"address": "10.1.2.3", "application": "PythonConnector", "version": "3.12.1"}
TABLES = ["ORDERS", "ORDER_LINES", "CUSTOMERS", "PRODUCTS", "SHIPMENTS", "INVOICES", "EVENTS"]
COLUMNS = [
    ("ID", "fixed", 38, 0),
    ("CUSTOMER_ID", "fixed", 38, 0),
    ("STATUS", "text", None, None),
    ("AMOUNT", "fixed", 12, 2),
    ("CURRENCY", "text", None, None),
    ("CREATED_AT", "timestamp_ntz", 0, 9),
    ("REGION", "text", None, None),
    ("SKU", "text", None, None),
]
STATUSES = ["NEW", "PAID", "SHIPPED", "CANCELLED", "RETURNED"]
SESSION_PARAMETERS = [
    {"name": name, "value": value}
    for name, value in [
        ("TIMEZONE", "America/Los_Angeles"),
        ("TIMESTAMP_OUTPUT_FORMAT", "YYYY-MM-DD HH24:MI:SS.FF3 TZHTZM"),
        ("CLIENT_PREFETCH_THREADS", 4),
        ("JS_TREAT_INTEGER_AS_BIGINT", False),
        ("TIME_OUTPUT_FORMAT", "HH24:MI:SS"),
        ("CLIENT_RESULT_CHUNK_SIZE", 160),
        ("TIMESTAMP_TZ_OUTPUT_FORMAT", ""),
        ("CLIENT_SESSION_KEEP_ALIVE", False),
        ("QUERY_CONTEXT_CACHE_SIZE", 5),
        ("CLIENT_METADATA_USE_SESSION_DATABASE", False),
        ("CLIENT_RESULT_PREFETCH_THREADS", 1),
        ("DATE_OUTPUT_FORMAT", "YYYY-MM-DD"),
        ("CLIENT_HONOR_CLIENT_TZ_FOR_TIMESTAMP_NTZ", True),
        ("CLIENT_MEMORY_LIMIT", 1536),
        ("CLIENT_TIMESTAMP_TYPE_MAPPING", "TIMESTAMP_LTZ"),
        ("TIMESTAMP_NTZ_OUTPUT_FORMAT", "YYYY-MM-DD HH24:MI:SS.FF3"),
        ("CLIENT_RESULT_COLUMN_CASE_INSENSITIVE", False),
        ("CLIENT_USE_V1_QUERY_API", True),
        ("CLIENT_DISABLE_INCIDENTS", True),
        ("QUERY_RESULT_FORMAT", "JSON"),
    ]
]


def _request_headers(rng: random.Random, length: int, session_token: bool = True) -> list:
    headers = [
        ("Host", "acme-prod.snowflakecomputing.com"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Accept", "application/snowflake"),
        ("Connection", "keep-alive"),
        ("Content-Type", "application/json"),
        ("User-Agent", "PythonConnector/3.12.1 (Linux-6.1.0-x86_64-with-glibc2.36) CPython/3.12.1"),
        ("Content-Encoding", "gzip"),
        ("Content-Length", str(length)),
    ]
    if session_token:
        headers.append(("Authorization", f'Snowflake Token="ver:3-hint:{rng.getrandbits(128):x}"'))
    return headers


def _response_headers(length: int) -> list:
    return [
        ("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())),
        ("Content-Type", "application/json"),
        ("Content-Length", str(length)),
        ("Connection", "keep-alive"),
        ("Vary", "Accept-Encoding, User-Agent"),
        ("Strict-Transport-Security", "max-age=31536000"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "deny"),
    ]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _query_id(rng: random.Random, number: int) -> str:
    return f"01b5f2c6-0000-{rng.getrandbits(16):04x}-0000-0004a1f3{number:06x}"[:36]


def _rows(rng: random.Random, count: int, table_offset: int) -> list[list[str | None]]:
    """Rows as Snowflake's JSON result format sends them: every value a string."""
    rows: list[list[str | None]] = []
    base_id = 8_000_000 + table_offset * 10_000 + rng.randint(0, 5_000)
    stamp = 1_717_000_000 - rng.randint(0, 10_000_000)
    for index in range(count):
        stamp -= rng.randint(1, 900)
        rows.append(
            [
                str(base_id - index),
                str(rng.choice(range(10_000, 10_400))),
                rng.choice(STATUSES),
                f"{rng.randint(100, 500_000) / 100:.2f}",
                "EUR",
                f"{stamp}.000000000",
                rng.choice(["EMEA", "AMER", "APAC"]),
                None if rng.random() < 0.1 else f"SKU-{rng.randint(1000, 1200)}",
            ]
        )
    return rows


def _query(rng: random.Random, number: int) -> tuple[str, dict[str, Any] | None, str]:
    table = rng.choice(TABLES)
    shape = number % 4
    if shape == 0:
        return (
            f"SELECT id, customer_id, status, amount, currency, created_at, region, sku\n"
            f"FROM analytics.public.{table}\nWHERE created_at >= ? AND status = ?\n"
            f"ORDER BY created_at DESC\nLIMIT 100",
            {
                "1": {"type": "TEXT", "value": f"2024-0{rng.randint(1, 9)}-01"},
                "2": {"type": "TEXT", "value": rng.choice(STATUSES)},
            },
            table,
        )
    if shape == 1:
        return (
            f"select * from analytics.public.{table} where customer_id = "
            f"{rng.randint(10_000, 10_400)} order by created_at desc limit 50",
            None,
            table,
        )
    if shape == 2:
        return f"SELECT * FROM analytics.public.{table} SAMPLE (20 ROWS)", None, table
    return (
        f"INSERT INTO scratch.agent_{table.lower()} (id, status) VALUES (?, ?)",
        {"1": {"type": "FIXED", "value": str(number)}, "2": {"type": "TEXT", "value": "NEW"}},
        table,
    )


def _base(session_id: str, kind: str, ts: float, flow_id: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": kind,
        "session_id": session_id,
        "ts": ts,
        "caller": CALLER,
        "client": CLIENT,
    }
    if flow_id is not None:
        record["flow_id"] = flow_id
    return record


def realistic_session(statements: int, seed: int = 7) -> list[dict[str, Any]]:
    """A session's records as the recording addon would hand them to the spool."""
    rng = random.Random(seed)
    session_id = new_session_id()
    ts = time.time()
    records: list[dict[str, Any]] = []
    start = _base(session_id, "session_start", ts)
    start.update(account="ACME", login_name="SVC_AGENT", authenticator="SNOWFLAKE_JWT")
    start.update(database="ANALYTICS", schema="PUBLIC", warehouse="WH_XS", role="ANALYST_RO")
    records.append(start)

    login = orjson.dumps(
        {
            "data": {
                "ACCOUNT_NAME": "ACME",
                "LOGIN_NAME": "agent",
                "AUTHENTICATOR": "OAUTH",
                "TOKEN": "eyJ" + os.urandom(300).hex(),
                "CLIENT_APP_ID": "PythonConnector",
                "CLIENT_APP_VERSION": "3.12.1",
                "CLIENT_ENVIRONMENT": {"APPLICATION": "cursor", "OS": "Linux", "PYTHON": "3.12"},
                "SESSION_PARAMETERS": {"CLIENT_PREFETCH_THREADS": 4, "QUERY_TAG": "agent"},
            }
        }
    )
    request = _base(session_id, "request", ts, "f-login")
    request.update(
        method="POST",
        path=f"/session/v1/login-request?request_id={_uuid(rng)}&warehouse=WH_XS",
        endpoint="login",
        headers=redact_headers(_request_headers(rng, len(login), session_token=False)),
        body=body_for_record(login, BODY_LIMIT),
    )
    records.append(request)
    login_answer = orjson.dumps(
        {
            "data": {
                "token": os.urandom(40).hex(),
                "masterToken": os.urandom(40).hex(),
                "validityInSeconds": 3600,
                "masterValidityInSeconds": 14400,
                "sessionId": 1234567890,
                "sessionInfo": {"databaseName": "ANALYTICS", "roleName": "ANALYST_RO"},
                "parameters": SESSION_PARAMETERS,
            },
            "success": True,
        }
    )
    response = _base(session_id, "response", ts + 0.2, "f-login")
    response.update(
        status=200,
        headers=redact_headers(_response_headers(len(login_answer))),
        body=body_for_record(login_answer, BODY_LIMIT),
        duration_ms=200.0,
        success=True,
    )
    records.append(response)

    for number in range(statements):
        ts += rng.uniform(0.05, 2.0)
        flow = _uuid(rng)
        request_id = _uuid(rng)
        sql, bindings, table = _query(rng, number)
        query_body: dict[str, Any] = {
            "sqlText": sql,
            "asyncExec": False,
            "sequenceId": number + 1,
            "querySubmissionTime": int(ts * 1000),
            "isInternal": False,
            "queryContextDTO": {
                "entries": [{"id": 0, "timestamp": int(ts * 1e6), "priority": 0, "context": {}}]
            },
        }
        if bindings:
            query_body["bindings"] = bindings
        query_raw = orjson.dumps(query_body)
        request = _base(session_id, "request", ts, flow)
        request.update(
            method="POST",
            path=f"/queries/v1/query-request?requestId={request_id}",
            endpoint="query",
            headers=redact_headers(_request_headers(rng, len(query_raw))),
            body=body_for_record(query_raw, BODY_LIMIT),
            sql=redact_sql(sql),
            bindings=bindings,
            sequence_id=number + 1,
            request_id=request_id,
        )
        records.append(request)
        duration = rng.uniform(40, 900)
        response = _base(session_id, "response", ts + duration / 1000, flow)
        query_id = _query_id(rng, number)
        if number % 25 == 24:
            answer: dict[str, Any] = {
                "data": {
                    "internalError": False,
                    "errorCode": "002003",
                    "age": 0,
                    "sqlState": "42S02",
                    "queryId": query_id,
                    "line": -1,
                    "pos": -1,
                    "type": "COMPILATION",
                },
                "code": "002003",
                "message": f"SQL compilation error:\nObject '{table}' does not exist or "
                "not authorized.",
                "success": False,
                "headers": None,
            }
            response.update(
                status=200,
                success=False,
                error_code="002003",
                sql_state="42S02",
                message=answer["message"],
                query_id=query_id,
            )
        else:
            rows = _rows(rng, rng.randint(1, 40), TABLES.index(table))
            answer = {
                "data": {
                    "parameters": SESSION_PARAMETERS,
                    "rowtype": [
                        {
                            "name": name,
                            "database": "ANALYTICS",
                            "schema": "PUBLIC",
                            "table": table,
                            "byteLength": 16777216 if kind == "text" else None,
                            "length": 16777216 if kind == "text" else None,
                            "type": kind,
                            "scale": scale,
                            "precision": precision,
                            "nullable": True,
                            "collation": None,
                        }
                        for name, kind, precision, scale in COLUMNS
                    ],
                    "rowset": rows,
                    "total": len(rows),
                    "returned": len(rows),
                    "queryId": query_id,
                    "databaseProvider": None,
                    "finalDatabaseName": "ANALYTICS",
                    "finalSchemaName": "PUBLIC",
                    "finalWarehouseName": "WH_XS",
                    "finalRoleName": "ANALYST_RO",
                    "numberOfBinds": len(bindings or {}),
                    "arrayBindSupported": False,
                    "statementTypeId": 4096,
                    "version": 1,
                    "sendResultTime": int(ts * 1000) + 120,
                    "queryResultFormat": "json",
                    "queryContext": {
                        "entries": [
                            {"id": 0, "timestamp": int(ts * 1e6), "priority": 0, "context": "CPi"}
                        ]
                    },
                },
                "code": None,
                "message": None,
                "success": True,
            }
            response.update(
                status=200,
                success=True,
                query_id=query_id,
                statement_type_id=4096,
                result_format="json",
                total=len(rows),
                returned=len(rows),
                chunk_count=0,
            )
        answer_raw = orjson.dumps(answer)
        response.update(
            headers=redact_headers(_response_headers(len(answer_raw))),
            body=body_for_record(answer_raw, BODY_LIMIT),
            duration_ms=duration,
        )
        records.append(response)
    end = _base(session_id, "session_end", ts + 1, None)
    end["reason"] = "logout"
    records.append(end)
    return records


def _chain_all(records: list[dict[str, Any]]) -> bytes:
    writer = new_writer_id()
    prev = GENESIS_HASH
    lines = []
    for seq, record in enumerate(records):
        stored = dict(record, v=1, writer=writer, seq=seq)
        lines.append(chain_record(stored, prev))
        prev = stored["hash"]
    return b"".join(lines)


def _segments(lines: bytes, size: int = SEGMENT_BYTES) -> list[bytes]:
    """Cut JSON lines into spool-sized segments, at line boundaries."""
    parts = []
    start = 0
    while start < len(lines):
        end = lines.find(b"\n", min(start + size, len(lines)) - 1)
        end = len(lines) if end < 0 else end + 1
        parts.append(lines[start:end])
        start = end
    return parts


def _best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_encoding(records: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """Per 4 MiB segment, as the spool cuts them; best of three runs."""
    count = len(records)
    batches = []
    batch: list[dict[str, Any]] = []
    size = 0
    for record in records:
        batch.append(record)
        size += len(orjson.dumps(record)) + 1
        if size >= SEGMENT_BYTES:
            batches.append(batch)
            batch, size = [], 0
    if batch:
        batches.append(batch)
    raw = sum(len(orjson.dumps(record)) + 1 for record in records)
    encode = _best_of(3, lambda: [encode_segment(part) for part in batches])
    encoded = sum(len(encode_segment(part)) for part in batches)
    chained = _chain_all(records)
    segments = _segments(chained)
    chain = _best_of(3, lambda: _chain_all(records))
    compress = _best_of(3, lambda: [compress_lines(part) for part in segments])
    stored = sum(len(compress_lines(part)) for part in segments)
    ratio = f"{len(chained) / stored:.1f}x"
    return [
        (
            "encode_segment (orjson lines + zstd frame)",
            f"{count / encode:,.0f}",
            f"{raw / encode / 1e6:,.0f}",
            f"{raw / encoded:.1f}x",
        ),
        (
            "spool append encoding (sorted orjson + sha256)",
            f"{count / chain:,.0f}",
            f"{len(chained) / chain / 1e6:,.0f}",
            "-",
        ),
        (
            f"uploader compress (zstd {COMPRESSION_LEVEL}, checksum)",
            f"{count / compress:,.0f}",
            f"{len(chained) / compress / 1e6:,.0f}",
            ratio,
        ),
        (
            "spool path total (encode + hash + compress)",
            f"{count / (chain + compress):,.0f}",
            f"{len(chained) / (chain + compress) / 1e6:,.0f}",
            ratio,
        ),
    ]


def bench_spool(
    records: list[dict[str, Any]], producers: int, seconds: float
) -> tuple[str, str, str, str]:
    """Producers are coroutines on one event loop, as flows are in mitmproxy: each appends
    a record of its own session and awaits durability before appending the next."""
    with tempfile.TemporaryDirectory(prefix="hoopgw-bench-") as tmp:
        spool = Spool(
            SpoolConfig(Path(tmp) / "spool", writer_id=new_writer_id(), max_bytes=1 << 34),
            LocalStore(Path(tmp) / "store"),
        )
        spool.start()
        latencies: list[float] = []

        async def produce(index: int, deadline: float) -> None:
            session_id = new_session_id()
            position = index
            while time.perf_counter() < deadline:
                record = dict(records[position % len(records)], session_id=session_id)
                started = time.perf_counter()
                await asyncio.wrap_future(spool.append(record))
                latencies.append(time.perf_counter() - started)
                position += producers

        async def run() -> float:
            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(*(produce(index, deadline) for index in range(producers)))
            return time.perf_counter() - started

        elapsed = asyncio.run(run())
        batches = spool.stats().batches
        spool.flush(60)
        spool.close()
    latencies.sort()
    total = len(latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[max(0, int(total * 0.99) - 1)] * 1000
    return (
        f"{producers}",
        f"{total / elapsed:,.0f}",
        f"{total / max(batches, 1):.1f}",
        f"{p50:.2f} / {p99:.2f}",
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(header)) + " |",
        "|" + "|".join("-" * (width + 2) for width in widths) + "|",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=10_000, help="statements in the session")
    parser.add_argument("--seconds", type=float, default=2.0, help="per spool configuration")
    parser.add_argument("--producers", default="1,8,32", help="spool producer counts")
    args = parser.parse_args()

    records = realistic_session(args.statements)
    raw = b"".join(orjson.dumps(record) + b"\n" for record in records)
    digest = hashlib.sha256(raw).hexdigest()[:12]
    print(
        f"session: {len(records):,} records, {len(raw) / 1e6:.1f} MB of JSON lines, "
        f"{len(raw) / len(records):,.0f} bytes/record on average (sha256 {digest}...)"
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, one core used for encoding\n")
    print(
        _table(
            ("encode + compress, one core", "records/s", "MB/s", "ratio"),
            bench_encoding(records),
        )
    )
    print()
    spool_rows = [
        bench_spool(records, int(count), args.seconds) for count in args.producers.split(",")
    ]
    print(
        _table(
            ("spool producers", "durable appends/s", "records per fsync batch", "p50 / p99 ms"),
            spool_rows,
        )
    )


if __name__ == "__main__":
    main()
