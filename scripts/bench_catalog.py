"""Benchmark: `hoopgw sessions list` and `hoopgw search` over 1,000 recorded sessions in S3.

Starts moto's S3 server, writes 1,000 sessions (login, ten statements with
results and the guardrail's decision, a blocked statement in some, logout)
through the recorder's own Spool, so the objects are exactly what a gateway
uploads (segments, summaries and roll-ups), then runs the CLI commands
in-process against moto and prints how long each took:

- cold: `--no-cache`, nothing local: the LISTs, the roll-ups, and whatever
  they do not describe object by object;
- first: the first run with an empty catalog cache (the same reads, plus
  filling the cache);
- warm: best of `--repeat` runs with the catalog cache, revalidated by LISTs.

The target is under 2 seconds for every query, cold and warm; the script exits
with status 1 when a row misses it.

    .venv/bin/python -m scripts.bench_catalog [--sessions 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from click.testing import CliRunner

from hoopgw.cli.main import main
from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.statements import classify, clear_cache
from hoopgw.recorder.store import open_store
from tests import stack

REPO_ROOT = Path(__file__).resolve().parent.parent

TARGET_SECONDS = 2.0
USERS = 50
TABLES = ("ORDERS", "CUSTOMERS", "INVOICES", "PAYROLL.SALARIES", "EVENTS")


def session_records(number: int) -> list[dict[str, Any]]:
    """One realistic session: what the gateway records for an agent's short task."""
    session_id = new_session_id()
    user = number % USERS
    caller = {
        "subject": f"agent-{user}",
        "email": f"agent-{user}@example.com",
        "groups": ["agents"] if user % 5 else ["agents", "readers"],
        "role": "AGENT",
        "issuer": "https://idp.example.com",
    }
    client = {"address": "10.0.0.7:51000", "app": "PythonConnector 4.8.1"}
    now = time.time()
    records: list[dict[str, Any]] = [
        {
            "kind": "session_start",
            "session_id": session_id,
            "ts": now,
            "caller": caller,
            "client": client,
            "upstream": {"host": "xy12345.snowflakecomputing.com", "account": "xy12345"},
            "context": {"database": "SALES", "schema": "APP", "warehouse": "WH", "role": "AGENT"},
        }
    ]
    for index in range(10):
        table = TABLES[(number + index) % len(TABLES)]
        sql = f"select id, amount from {table} where id = ? and batch = {number}"
        flow = str(uuid.uuid4())
        request = {
            "kind": "request",
            "session_id": session_id,
            "ts": now + index,
            "caller": caller,
            "client": client,
            "flow_id": flow,
            "endpoint": "query",
            "method": "POST",
            "path": f"/queries/v1/query-request?requestId={uuid.uuid4()}",
            "sql": sql,
            "bindings": {"1": {"type": "FIXED", "value": str(index)}},
            "context": {"database": "SALES", "schema": "APP", "warehouse": "WH", "role": "AGENT"},
            "body": {"size": 200, "json": {"sqlText": sql, "sequenceId": index}},
        }
        statements = classify(sql, database="SALES", schema="APP")
        request["statements"] = [statement.as_record() for statement in statements]
        request["guardrail"] = {
            "decision": "allow",
            "kinds": [statement.kind for statement in statements],
            "objects": [name for statement in statements for name in statement.objects],
        }
        if table == "PAYROLL.SALARIES" and number % 3 == 0:
            request["kind"] = "refusal"
            request["guardrail"].update(decision="block", rule="agents-guard", reason="denied")
            request["refusal"] = {"code": 399003, "reason": "denied", "by": "guardrails"}
        records.append(request)
        rows = [[str(row), f"{row * 1.5}"] for row in range(20)]
        records.append(
            {
                "kind": "response",
                "session_id": session_id,
                "ts": now + index + 0.01,
                "caller": caller,
                "flow_id": flow,
                "endpoint": "query",
                "status": 200,
                "duration_ms": 12.5,
                "outcome": {"success": True, "total": 20, "columns": ["ID", "AMOUNT"]},
                "body": {
                    "size": 900,
                    "json": {
                        "success": True,
                        "data": {
                            "rowtype": [{"name": "ID", "type": "fixed"}, {"name": "AMOUNT"}],
                            "rowset": rows,
                            "total": 20,
                            "queryResultFormat": "json",
                        },
                    },
                },
            }
        )
    records.append(
        {"kind": "session_end", "session_id": session_id, "ts": now + 11, "reason": "logout"}
    )
    return records


def record_sessions(store_url: str, endpoint: str, count: int, spool_dir: Path) -> float:
    started = time.perf_counter()
    store = open_store(store_url, s3_endpoint_url=endpoint)
    spool = Spool(SpoolConfig(spool_dir, writer_id=new_writer_id(), max_bytes=1 << 30), store)
    spool.start()
    try:
        for number in range(count):
            records = session_records(number)
            futures = [spool.append(record) for record in records]
            futures[-1].result(timeout=30)
            spool.end_session(records[0]["session_id"])
        if not spool.flush(timeout=600):
            raise SystemExit("the spool did not empty into moto in time")
    finally:
        spool.close()
    return time.perf_counter() - started


def timed(args: list[str], repeat: int) -> tuple[float, int]:
    """Best wall time of `hoopgw ARGS` in-process, and the number of output lines."""
    best = float("inf")
    lines = 0
    for _ in range(repeat):
        clear_cache()  # every hoopgw run is a fresh process: no SQL classified yet
        started = time.perf_counter()
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        elapsed = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"hoopgw {' '.join(args)} failed: {result.output}")
        best = min(best, elapsed)
        lines = len(result.stdout.splitlines())
    return best, lines


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ.pop("AWS_SESSION_TOKEN", None)
    with tempfile.TemporaryDirectory(prefix="hoopgw-bench-catalog-") as temp:
        workdir = Path(temp)
        moto, endpoint = stack.start_moto(workdir)
        try:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            store = f"s3://{bucket}/hoopgw"
            seconds = record_sessions(store, endpoint, options.sessions, workdir / "spool")
            print(f"recorded {options.sessions} sessions into moto in {seconds:.1f}s")
            common = ["--store", store, "--s3-endpoint-url", endpoint]
            limit = str(options.sessions)
            cases = [
                ("sessions list (newest 100)", ["sessions", "list"]),
                ("sessions list (all)", ["sessions", "list", "--limit", limit]),
                ("sessions list --user", ["sessions", "list", "--user", "agent-7@example.com"]),
                ("sessions list --since 1h --group readers",
                 ["sessions", "list", "--since", "1h", "--group", "readers", "--limit", limit]),
                ("search --sql", ["search", "--sql", "batch = 421", "--limit", "1000"]),
                ("search --object", ["search", "--object", "PAYROLL.SALARIES", "--limit", "10000"]),
                ("search --outcome blocked --user",
                 ["search", "--outcome", "blocked", "--user", "agent-3@example.com"]),
            ]  # fmt: skip
            rows = []
            for number, (name, args) in enumerate(cases):
                command = [*args, *common, "--format", "jsonl"]
                cold, lines = timed([*command, "--no-cache"], 1)
                os.environ["HOOPGW_CACHE_DIR"] = str(workdir / f"cache-{number}")
                first, first_lines = timed(command, 1)
                warm, warm_lines = timed(command, options.repeat)
                if not lines == first_lines == warm_lines:
                    raise SystemExit(f"{name}: {lines}, {first_lines} and {warm_lines} results")
                slow = [
                    label
                    for label, seconds in (("cold", cold), ("first", first), ("warm", warm))
                    if seconds >= TARGET_SECONDS
                ]
                verdict = f"SLOW ({', '.join(slow)})" if slow else "ok"
                target = f"< {TARGET_SECONDS:.0f} s"
                times = (f"{cold:.2f}", f"{first:.2f}", f"{warm:.2f}")
                rows.append((name, *times, target, str(lines), verdict))
        finally:
            moto.stop()
    print(
        f"\n{options.sessions} sessions in moto S3, in-process CLI; cold: one run with "
        f"--no-cache; first: one run with an empty cache; warm: best of {options.repeat} "
        "with the catalog cache"
    )
    headers = ("command", "cold s", "first s", "warm s", "target", "results", "verdict")
    widths = [max(len(str(row[i])) for row in (*rows, headers)) for i in range(len(headers))]
    print("  ".join(header.ljust(widths[i]) for i, header in enumerate(headers)))
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    if any(row[-1] != "ok" for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main_bench()
