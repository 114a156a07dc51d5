"""The durable hand-off's cost on the event loop: append a record and wait until it is fsync'd.

Appenders are coroutines on one event loop, as statements are in mitmproxy: each
appends a request record of its own session with `Spool.append_on_loop` (what
`Recording.request` does) and awaits it before appending the next. The spool
lives in a temporary directory next to the repository (the same disk as a real
spool, not a tmpfs) and fsyncs every batch.

Printed per appender count: CPU time of the loop's thread per record
(`time.thread_time`, so the writer thread's WAL write and fsync are not in it),
split into the queuing call itself and the rest (the wake-up after the fsync,
settling the future, resuming the coroutine); the whole process's CPU per
record; durable appends per second; records per fsync batch.

    .venv/bin/python -m scripts.bench_spool_wait                     # 1 and 8 appenders
    .venv/bin/python -m scripts.bench_spool_wait --appenders 1,8,32 --seconds 5

Not a test and not part of CI; the figures are for before/after comparisons on
one machine, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.schema import REQUEST
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.store import LocalStore
from scripts.bench_recorder import realistic_session

REPOSITORY = Path(__file__).resolve().parent.parent


def request_records() -> list[dict[str, Any]]:
    """Request records shaped like the gateway's (headers, body, SQL, statements)."""
    return [record for record in realistic_session(200) if record["kind"] == REQUEST]


def run_once(
    records: list[dict[str, Any]], appenders: int, seconds: float, commit_here: bool
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=".bench-spool-", dir=REPOSITORY) as tmp:
        spool = Spool(
            SpoolConfig(Path(tmp) / "spool", writer_id=new_writer_id(), max_bytes=1 << 34),
            LocalStore(Path(tmp) / "store"),
        )
        spool.start()
        queuing = [0.0]
        latencies: list[float] = []

        async def append(index: int, deadline: float) -> None:
            session_id = new_session_id()
            position = index
            clock = time.thread_time
            while time.perf_counter() < deadline:
                record = dict(records[position % len(records)], session_id=session_id)
                started = time.perf_counter()
                before = clock()
                waiting = spool.append_on_loop(record, commit_here=commit_here)
                queuing[0] += clock() - before
                await waiting
                latencies.append(time.perf_counter() - started)
                position += appenders

        async def run() -> tuple[float, float, float]:
            cpu, process = time.thread_time(), time.process_time()
            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(*(append(index, deadline) for index in range(appenders)))
            return (
                time.perf_counter() - started,
                time.thread_time() - cpu,
                time.process_time() - process,
            )

        elapsed, loop_cpu, process_cpu = asyncio.run(run())
        batches = spool.stats().batches
        spool.close()
    count = len(latencies)
    latencies.sort()
    return {
        "records": count,
        "rate": count / elapsed,
        "loop_us": loop_cpu / count * 1e6,
        "queue_us": queuing[0] / count * 1e6,
        "process_us": process_cpu / count * 1e6,
        "per_batch": count / max(batches, 1),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[len(latencies) * 99 // 100] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appenders", default="1,8", help="concurrent appender counts")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per count; the median is shown")
    args = parser.parse_args()
    records = request_records()
    size = sum(len(str(record)) for record in records) / len(records)
    print(f"{len(records)} distinct request records, ~{size:,.0f} characters each\n")
    print(
        "| appenders | commit by | loop CPU us/record | of which queuing | rest (write, wake, "
        "settle) | process CPU us/record | durable appends/s | records/fsync | p50 ms | p99 ms |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for appenders in (int(count) for count in args.appenders.split(",")):
        runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for number in range(args.rounds):  # the two in turns, so drift hits both
            for commit_here in (True, False) if number % 2 == 0 else (False, True):
                runs[commit_here].append(run_once(records, appenders, args.seconds, commit_here))
        for commit_here, done in runs.items():
            median = {key: statistics.median(run[key] for run in done) for key in done[0]}
            print(
                f"| {appenders} | {'the loop' if commit_here else 'writer thread'} "
                f"| {median['loop_us']:.1f} | {median['queue_us']:.1f} "
                f"| {median['loop_us'] - median['queue_us']:.1f} | {median['process_us']:.1f} "
                f"| {median['rate']:,.0f} | {median['per_batch']:.1f} | {median['p50_ms']:.2f} "
                f"| {median['p99_ms']:.2f} |"
            )


if __name__ == "__main__":
    main()
