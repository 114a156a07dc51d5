"""The chunk proxy measured: MB/s per core through the gateway and bare mitmdump, and peak RSS.

Starts fakesnow, oidc-provider-mock, the loopback cloud storage and the strict
upstream of the tests (tests/cloud_storage.py, tests/strict_upstream.py), the
gateway (recording on, into a local store) and a bare `mitmdump --mode
reverse` in front of the storage. Then:

- throughput: one session's result of CHUNKS chunks of SIZE MB, fetched
  chunk after chunk by PARALLEL readers through the gateway (sealed URLs,
  hashing, decoding and recording on), and the same chunks through bare
  mitmdump with the SSE-C headers; MB/s of chunk bytes as sent, per second of
  the proxy's CPU time (per core) and per second of wall time;
- memory: SESSIONS sessions at once, each fetching its own result of CHUNKS
  chunks of SIZE MB one after the other; the gateway's peak RSS (VmHWM,
  reset before the run) against the 300 MB target.

    .venv/bin/python -m scripts.bench_chunks      # or: python -m scripts.bench --chunks
    .venv/bin/python -m scripts.bench_chunks --sessions 32 --chunks 20 --size-mb 16
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from scripts import bench
from tests import stack
from tests.cloud_storage import SSE_C_ALGORITHM, SSE_C_KEY, CloudStorage
from tests.raw_http import login, query
from tests.strict_upstream import StrictUpstream

PASSWORD_ENV = "HOOPGW_BENCH_UPSTREAM_PASSWORD"
PASSWORD = "bench-upstream-password"
RSS_TARGET_MB = 300.0
READ_PIECE = 1 << 20


def fetch(url: str, headers: dict[str, str]) -> int:
    """GET `url` on a fresh connection, read in pieces and dropped: the bytes as sent."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    try:
        target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        connection.request("GET", target, headers={"Accept-Encoding": "gzip", **headers})
        answer = connection.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"chunk GET answered {answer.status}: {answer.read(300)!r}")
        total = 0
        while piece := answer.read(READ_PIECE):
            total += len(piece)
        return total
    finally:
        connection.close()


@dataclass(frozen=True)
class Rate:
    megabytes: float
    wall: float
    cpu: float

    @property
    def per_core(self) -> float:
        return self.megabytes / self.cpu if self.cpu else float("inf")

    @property
    def per_second(self) -> float:
        return self.megabytes / self.wall


def measure(
    probe: bench.ProcessProbe, jobs: list[tuple[str, dict[str, str]]], parallel: int
) -> Rate:
    cpu, start = probe.cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        sent = sum(pool.map(lambda job: fetch(*job), jobs))
    return Rate(sent / 1e6, time.perf_counter() - start, probe.cpu_seconds() - cpu)


def chunk_urls(port: int, token: str, chunks: int, size: int, request_id: str) -> list[str]:
    answer = query(port, token, f"select 1 /*chunks:{chunks}:json:{size}*/", request_id)
    if answer.status != 200 or not answer.json.get("success"):
        raise RuntimeError(f"the chunked query failed: {answer.json.get('message')}")
    return [chunk["url"] for chunk in answer.json["data"]["chunks"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=16.0)
    parser.add_argument("--parallel", type=int, default=4, help="readers in the throughput run")
    args = parser.parse_args(argv)
    size = int(args.size_mb * 1024 * 1024)
    workdir = Path(tempfile.mkdtemp(prefix="hoopgw-bench-chunks-"))
    stopping: list[object] = []
    try:
        fakesnow, fakesnow_url = stack.start_fakesnow(workdir)
        stopping.append(fakesnow)
        oidc_proc, oidc = stack.start_oidc(workdir)
        stopping.append(oidc_proc)
        storage = CloudStorage().start()
        stopping.append(storage)
        strict = StrictUpstream(
            fakesnow_url, "fakesnow", "HOOPGW_SVC", password=PASSWORD, storage=storage
        ).start()
        stopping.append(strict)
        options = {
            **stack.embedded_gateway_options(oidc.issuer, PASSWORD_ENV),
            "hoopgw_store": f"file:{workdir / 'store'}",
            "hoopgw_spool_dir": str(workdir / "spool"),
        }
        gateway = stack.start_gateway(
            workdir / "gateway", strict.url, options, env={PASSWORD_ENV: PASSWORD}, timeout=60
        )
        stopping.append(gateway)
        bare_port = stack.free_port()
        bare = stack.Proc(
            "bare mitmdump",
            [
                str(stack.BIN / "mitmdump"),
                "--mode",
                f"reverse:{storage.url}@{bare_port}",
                "--listen-host",
                stack.LOOPBACK,
                "--set",
                f"confdir={workdir / 'bare'}",
                "--set",
                "flow_detail=0",
                "--set",
                "stream_large_bodies=1m",
            ],
            workdir / "bare.log",
        ).start()
        stopping.append(bare)
        bare.wait_ready(lambda: stack.port_open(bare_port))
        assert gateway.proc.process is not None and bare.process is not None
        gateway_probe = bench.ProcessProbe(gateway.proc.process.pid)
        bare_probe = bench.ProcessProbe(bare.process.pid)

        print(f"building one {args.size_mb:g} MB synthetic chunk ...", flush=True)
        session = login(gateway.port, oidc.mint("bench-0", ["agents"]))
        urls = chunk_urls(gateway.port, session.token, args.chunks, size, "throughput")
        through = measure(gateway_probe, [(url, {}) for url in urls], args.parallel)
        key = storage.last_key()
        direct = [
            storage.put(f"bare/{i}", storage_body(storage), key, content_encoding="gzip")
            for i in range(args.chunks)
        ]
        bare_jobs = [
            (
                url.replace(storage.url, f"http://{stack.LOOPBACK}:{bare_port}"),
                {SSE_C_ALGORITHM: "AES256", SSE_C_KEY: key},
            )
            for url in direct
        ]
        bare_rate = measure(bare_probe, bare_jobs, args.parallel)
        print(
            f"throughput ({args.chunks} x {args.size_mb:g} MB, {args.parallel} readers):\n"
            f"  gateway: {through.per_core:7.1f} MB/s per core, {through.per_second:7.1f} MB/s"
            f" wall ({through.cpu:.1f} s CPU)\n"
            f"  bare:    {bare_rate.per_core:7.1f} MB/s per core, {bare_rate.per_second:7.1f} MB/s"
            f" wall ({bare_rate.cpu:.1f} s CPU)\n"
            f"  ratio (per core): {through.per_core / bare_rate.per_core:.2f}x bare"
            f" (target: 200 MB/s per core or 0.8x bare)",
            flush=True,
        )

        tokens = [oidc.mint(f"bench-{i}", ["agents"]) for i in range(args.sessions)]
        results = []
        for index, token in enumerate(tokens):
            own = login(gateway.port, token)
            results.append(chunk_urls(gateway.port, own.token, args.chunks, size, f"m{index}"))
        gateway_probe.reset_peak()
        failures: list[BaseException] = []

        def one_session(urls: list[str]) -> int:
            try:
                return sum(fetch(url, {}) for url in urls)
            except BaseException as exc:  # reported below
                failures.append(exc)
                return 0

        start = time.perf_counter()
        threads = [threading.Thread(target=one_session, args=(urls,)) for urls in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak = gateway_probe.peak_rss_mb()
        print(
            f"memory ({args.sessions} sessions x {args.chunks} chunks x {args.size_mb:g} MB"
            f" at once, {time.perf_counter() - start:.0f} s): gateway peak RSS {peak:.0f} MB"
            f" (target: under {RSS_TARGET_MB:.0f} MB){'' if not failures else ', FAILED'}",
            flush=True,
        )
        for failure in failures[:3]:
            print(f"  failure: {failure}", file=sys.stderr)
        return 0 if not failures and peak < RSS_TARGET_MB else 1
    finally:
        for item in reversed(stopping):
            item.stop()  # type: ignore[attr-defined]


def storage_body(storage: CloudStorage) -> bytes:
    """The synthetic chunk the strict upstream stored last, to serve through bare mitmdump."""
    return storage.last_body()


if __name__ == "__main__":
    bench.unwind_on_sigterm()
    sys.exit(main())
