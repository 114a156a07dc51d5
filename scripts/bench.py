"""End-to-end benchmark: what the gateway costs an agent, measured on the real stack.

Starts fakesnow, moto's S3 server, oidc-provider-mock, a bare `mitmdump --mode
reverse` (no addons) and the full gateway (identity, credential swap,
guardrails, recording with fsync into moto S3), then runs the same workload
directly, through bare mitmdump and through the gateway, with 1, 8 and 32
concurrent clients (each client its own connector session). The three targets
take turns within each round, so drift in the machine's load hits all alike.

Also measured: login time, CPU per query and peak RSS of both proxies, the
gateway's peak RSS while 32 sessions each fetch a 100k-row result, the
recorder's records per second and compression ratio (from the summaries the
gateway stored in S3), and, with --soak SECONDS, the gateway's RSS over a long
steady run with session churn. With --write the report replaces the generated
part of docs/performance.md.

    .venv/bin/python -m scripts.bench --write
    .venv/bin/python -m scripts.bench --soak 600 --write
    .venv/bin/python -m scripts.bench --clients 8 --rounds 1 --profile var/gateway.pyspy
    .venv/bin/python -m scripts.bench --large-only --large wide
    .venv/bin/python -m scripts.bench --large-only --gateway-set hoopgw_body_limit=33554432
    .venv/bin/python -m scripts.bench --clients 1 --large '' --hook-timing var/hooks.json
    .venv/bin/python -m scripts.bench --saturate --rounds 3   # scripts/bench_saturation.py
    .venv/bin/python -m scripts.bench --chunks                # scripts/bench_chunks.py
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import orjson
import snowflake.connector

from hoopgw.recorder.secrets import new_token_key
from tests import stack

REPO_ROOT = Path(__file__).resolve().parent.parent

# The statements each client cycles through: small answers, as most agent
# statements get, parsed by the guardrails and recorded in full.
WORKLOAD = (
    "select 1",
    "select column1 as id, column2 as name from values (1, 'a'), (2, 'b'), (3, 'c') "
    "where column1 > 1",
    "select n, n * 2 as doubled from (select seq4() as n from table(generator(rowcount => 50))) "
    "where n % 7 = 0 order by n",
)
LARGE_ROWS = 100_000
# fakesnow sends a whole result inline (Arrow, base64, in the JSON answer), where
# Snowflake sends the first part inline and the rest as chunk URLs the client
# fetches from cloud storage. "narrow" is one number column (about 1.1 MB of
# JSON per answer), "wide" four columns, two of them text (about 7.3 MB).
LARGE_QUERIES = {
    "narrow": f"select seq4() as n from table(generator(rowcount => {LARGE_ROWS}))",
    "wide": (
        "select seq4() as id, 'order-' || seq4() as label, seq4() * 1.5 as amount, "
        "'customer-' || (seq4() % 1000) as customer "
        f"from table(generator(rowcount => {LARGE_ROWS}))"
    ),
}
SOAK_MIDSIZE_QUERY = (
    "select seq4() as id, 'row-' || seq4() as label from table(generator(rowcount => 2000))"
)
POLICY = """
[[rule]]
name = "agents-guard"
groups = ["agents"]
deny_kinds = ["DROP", "TRUNCATE", "GRANT", "REVOKE"]
deny_objects = ["*.PAYROLL.*"]
require_where = true
"""
BUCKET = "bench"
PREFIX = "hoopgw"
TOKEN_KEY_ENV = "HOOPGW_BENCH_TOKEN_KEY"
PASSWORD_ENV = "HOOPGW_BENCH_UPSTREAM_PASSWORD"
DIRECT, BARE, GATEWAY = "direct (fakesnow)", "bare mitmdump", "hoopgw gateway"

# Targets the issue sets (docs/performance.md states them).
TARGET_THROUGHPUT_RATIO = 0.85
TARGET_ADDED_P50_MS = 1.0
TARGET_LARGE_RSS_MB = 300.0
SOAK_MAX_GROWTH = 0.05
SOAK_MAX_SLOPE_MB_PER_MIN = 0.5


# --- processes --------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessProbe:
    """CPU time and memory of a process and its children (the gateway's helpers), from /proc.

    A child's CPU counts while it runs and, once reaped, through the parent's
    cutime/cstime, so a helper that restarts does not take its time with it.
    """

    pid: int

    def cpu_seconds(self) -> float:
        ticks = sum(_cpu_ticks(pid) for pid in (self.pid, *_children(self.pid)))
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        return sum(_status_mb(pid, "VmRSS:") for pid in (self.pid, *_children(self.pid)))

    def peak_rss_mb(self) -> float:
        """The sum of each process's own peak: an upper bound when their peaks differ in time."""
        return sum(_status_mb(pid, "VmHWM:") for pid in (self.pid, *_children(self.pid)))

    def reset_peak(self) -> None:
        """Start a new peak from the current RSS (Linux: `5` into clear_refs)."""
        for pid in (self.pid, *_children(self.pid)):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_ticks(pid: int) -> int:
    """utime + stime, and cutime + cstime of its reaped children; 0 once it has gone."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return sum(int(field) for field in fields[11:15])


def _children(pid: int) -> list[int]:
    """Live child processes (this kernel has no /proc/PID/task/TID/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
                if int(_stat_fields(int(entry))[1]) == pid:
                    found.append(int(entry))
    return found


def _status_mb(pid: int, key: str) -> float:
    """A memory line of /proc/PID/status; 0 for a process that has gone, or a helper that
    has exited and not yet been reaped (a zombie's status has no memory lines)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for line in lines:
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Target:
    name: str
    port: int
    probe: ProcessProbe | None
    token: str | None

    def connect(self) -> tuple[snowflake.connector.SnowflakeConnection, float]:
        params: dict[str, Any] = {
            "account": "bench",
            "user": "bench",
            "host": stack.LOOPBACK,
            "port": self.port,
            "protocol": "http",
            "login_timeout": 60,
            "network_timeout": 300,
        }
        if self.token:
            params.update(authenticator="oauth", token=self.token)
        else:
            params["password"] = "fakesnow-ignores-it"
        started = time.perf_counter()
        connection = snowflake.connector.connect(**params)
        return connection, time.perf_counter() - started


@dataclass
class Stack:
    home: Path
    targets: list[Target]
    gateway: stack.Gateway
    s3: Any
    spool_dir: Path
    sessions_closed: int = 0

    def target(self, name: str) -> Target:
        return next(target for target in self.targets if target.name == name)


def start_store_and_idp(home: Path, procs: list[stack.Proc]) -> tuple[Any, str, stack.OidcProvider]:
    """moto's S3 server with the bench's bucket, and oidc-provider-mock; both join `procs`."""
    moto_proc, moto = stack.start_moto(home)
    procs.append(moto_proc)
    oidc_proc, provider = stack.start_oidc(home)
    procs.append(oidc_proc)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ.pop("AWS_SESSION_TOKEN", None)
    s3 = boto3.client("s3", endpoint_url=moto)
    s3.create_bucket(Bucket=BUCKET)
    return s3, moto, provider


def start_bare_mitmdump(
    home: Path,
    upstream: str,
    extra_scripts: Sequence[Path] = (),
    extra_env: Mapping[str, str] | None = None,
    run_under: Sequence[str] = (),
    timeout: float = 30.0,
) -> tuple[stack.Proc, int]:
    """`mitmdump --mode reverse` with no addons in front of `upstream`, ready; a probe
    (`extra_scripts`, e.g. scripts/loop_cpu.py) is the only addon it may be given, and
    `run_under` a command it runs under (valgrind's, for scripts/bench_instructions.py)."""
    port = stack.free_port()
    bare = stack.Proc(
        "bare mitmdump",
        [
            *run_under,
            str(stack.BIN / "mitmdump"),
            "--mode",
            f"reverse:{upstream}@{port}",
            "--listen-host",
            stack.LOOPBACK,
            "--set",
            f"confdir={home / 'bare-conf'}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            "flow_detail=0",
            *(argument for script in extra_scripts for argument in ("-s", str(script))),
        ],
        home / "bare.log",
        env={**os.environ, **extra_env} if extra_env else None,
    ).start()
    try:
        bare.wait_ready(lambda: stack.port_open(port), timeout)
    except BaseException:
        bare.stop()
        raise
    return bare, port


def identity_options(issuer: str, token_key_env: str, password_env: str) -> dict[str, Any]:
    """The benches' caller and upstream: OIDC from `issuer`, group agents as ANALYST, the
    service user's password and the token key read from the environment."""
    return {
        "hoopgw_token_key": f"env:{token_key_env}",
        "hoopgw_oidc_issuer": issuer,
        "hoopgw_oidc_audience": "hoopgw",
        "hoopgw_allowed_groups": ["agents"],
        "hoopgw_role_map": ["agents=ANALYST"],
        "hoopgw_upstream_account": "bench",
        "hoopgw_upstream_user": "HOOPGW_SVC",
        "hoopgw_upstream_secondary_roles": "none",
        "hoopgw_upstream_password": f"env:{password_env}",
    }


def start_full_gateway(
    home: Path,
    upstream: str,
    moto: str,
    provider: stack.OidcProvider,
    *,
    policy: str = POLICY,
    gateway_options: dict[str, str] | None = None,
    hook_timing: Path | None = None,
    name: str = "gateway",
    port: int | None = None,
    token_key: str | None = None,
    extra_scripts: Sequence[Path] = (),
    extra_env: Mapping[str, str] | None = None,
    run_under: Sequence[str] = (),
    timeout: float = 30.0,
) -> stack.Gateway:
    """The gateway with every feature the benchmark measures: OIDC identity, credential
    swap, sealed tokens, guardrails with `policy`, recording with fsync into a local
    spool (`home/NAME/spool`) and moto S3. Processes that share a port (`port`) must
    share `token_key` too."""
    (home / "policy.toml").write_text(policy)
    return stack.start_gateway(
        home / name,
        upstream,
        {
            "hoopgw_store": f"s3://{BUCKET}/{PREFIX}",
            "hoopgw_s3_endpoint_url": moto,
            "hoopgw_spool_dir": str(home / name / "spool"),
            **identity_options(provider.issuer, TOKEN_KEY_ENV, PASSWORD_ENV),
            "hoopgw_policy": str(home / "policy.toml"),
            **(gateway_options or {}),
        },
        env={
            PASSWORD_ENV: "fakesnow-ignores-it",
            TOKEN_KEY_ENV: token_key or new_token_key(),
            **({"HOOPGW_HOOK_TIMING": str(hook_timing.resolve())} if hook_timing else {}),
            **(extra_env or {}),
        },
        extra_scripts=[
            *([REPO_ROOT / "scripts" / "hook_timing.py"] if hook_timing else []),
            *extra_scripts,
        ],
        port=port,
        run_under=run_under,
        timeout=timeout,
    )


@contextlib.contextmanager
def running_stack(
    gateway_options: dict[str, str] | None = None, hook_timing: Path | None = None
) -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="hoopgw-bench-"))
    procs: list[stack.Proc] = []
    try:
        upstream_proc, upstream = stack.start_fakesnow(home)
        procs.append(upstream_proc)
        s3, moto, provider = start_store_and_idp(home, procs)
        bare, bare_port = start_bare_mitmdump(home, upstream)
        procs.append(bare)
        gateway = start_full_gateway(
            home,
            upstream,
            moto,
            provider,
            gateway_options=gateway_options,
            hook_timing=hook_timing,
        )
        procs.append(gateway.proc)
        assert bare.process is not None and gateway.proc.process is not None
        token = provider.mint("bench-agent", ["agents"], email="bench-agent@example.com")
        targets = [
            Target(DIRECT, int(upstream.rsplit(":", 1)[1]), None, None),
            Target(BARE, bare_port, ProcessProbe(bare.process.pid), None),
            Target(GATEWAY, gateway.port, ProcessProbe(gateway.proc.process.pid), token),
        ]
        yield Stack(home, targets, gateway, s3, home / "gateway" / "spool")
    finally:
        for proc in reversed(procs):
            proc.stop()


# --- throughput and latency -------------------------------------------------------


@dataclass
class Measurement:
    """One target at one concurrency, summed over rounds."""

    target: str
    clients: int
    queries: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: float | None = None
    logins: list[float] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    @property
    def cpu_ms_per_query(self) -> float | None:
        return None if self.cpu_seconds is None else self.cpu_seconds * 1000 / self.queries


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_round(target: Target, clients: int, per_client: int, into: Measurement) -> int:
    """`clients` sessions each run `per_client` statements at once; returns sessions closed."""
    connections = [target.connect() for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def work(index: int) -> None:
        try:
            cursor = connections[index][0].cursor()
            for sql in WORKLOAD:  # warm-up, not counted
                cursor.execute(sql).fetchall()
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()
            raise
        barrier.wait()
        for number in range(per_client):
            sql = WORKLOAD[(index + number) % len(WORKLOAD)]
            started = time.perf_counter()
            cursor.execute(sql).fetchall()
            latencies[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    cpu_before = target.probe.cpu_seconds() if target.probe else None
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu_after = target.probe.cpu_seconds() if target.probe else None
    for connection, _ in connections:
        connection.close()
    flat = [latency for per in latencies for latency in per]
    if failures or len(flat) != clients * per_client:
        raise RuntimeError(f"{target.name}: {len(flat)} of {clients * per_client} queries ran")
    into.queries += len(flat)
    into.seconds += elapsed
    into.latencies += flat
    into.logins += [login for _, login in connections]
    if cpu_before is not None and cpu_after is not None:
        into.cpu_seconds = (into.cpu_seconds or 0.0) + cpu_after - cpu_before
    return clients


def measure_levels(
    bench: Stack, levels: list[int], per_client: int, rounds: int
) -> list[Measurement]:
    results: list[Measurement] = []
    for clients in levels:
        by_target = {t.name: Measurement(t.name, clients) for t in bench.targets}
        for number in range(rounds):
            shift = number % len(bench.targets)
            for target in bench.targets[shift:] + bench.targets[:shift]:
                closed = run_round(target, clients, per_client, by_target[target.name])
                if target.name == GATEWAY:
                    bench.sessions_closed += closed
            print(f"  {clients} clients, round {number + 1}/{rounds} done", file=sys.stderr)
        results += by_target.values()
    return results


def login_times(target: Target, count: int) -> list[float]:
    """Sequential logins, each followed by a logout."""
    times = []
    for _ in range(count):
        connection, seconds = target.connect()
        connection.close()
        times.append(seconds)
    return times


# --- memory -----------------------------------------------------------------------


@dataclass
class LargeResults:
    variant: str
    target: str
    sessions: int
    rss_before_mb: float
    peak_rss_mb: float
    seconds: float
    cpu_seconds: float


def large_results(target: Target, sessions: int, variant: str) -> LargeResults:
    """Peak RSS while `sessions` sessions each fetch a 100k-row result at the same time."""
    assert target.probe is not None
    connections = [target.connect()[0] for _ in range(sessions)]
    barrier = threading.Barrier(sessions + 1)
    fetched: list[int] = []

    def fetch(connection: snowflake.connector.SnowflakeConnection) -> None:
        cursor = connection.cursor()
        barrier.wait()
        fetched.append(len(cursor.execute(LARGE_QUERIES[variant]).fetchall()))

    threads = [threading.Thread(target=fetch, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    rss_before = target.probe.rss_mb()
    target.probe.reset_peak()
    cpu_before = target.probe.cpu_seconds()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = target.probe.cpu_seconds() - cpu_before
    peak = target.probe.peak_rss_mb()
    for connection in connections:
        connection.close()
    if fetched != [LARGE_ROWS] * sessions:
        raise RuntimeError(f"{target.name}: large results incomplete: {fetched}")
    return LargeResults(variant, target.name, sessions, rss_before, peak, elapsed, cpu)


@dataclass
class Soak:
    seconds: float
    clients: int
    queries: int
    sessions: int
    samples: list[tuple[float, float]]
    fds: tuple[int, int]
    spool_bytes: int

    @property
    def warm_rss(self) -> float:
        """RSS once the first tenth of the run (caches, allocator arenas) is over."""
        start = self.samples[-1][0] * 0.1
        return next(rss for at, rss in self.samples if at >= start)

    @property
    def end_rss(self) -> float:
        return self.samples[-1][1]

    @property
    def growth(self) -> float:
        return (self.end_rss - self.warm_rss) / self.warm_rss

    @property
    def slope_mb_per_min(self) -> float:
        """Least-squares slope of RSS over the second half of the run."""
        half = [(at, rss) for at, rss in self.samples if at >= self.samples[-1][0] / 2]
        if len(half) < 2:
            return 0.0
        mean_t = statistics.fmean(at for at, _ in half)
        mean_r = statistics.fmean(rss for _, rss in half)
        num = sum((at - mean_t) * (rss - mean_r) for at, rss in half)
        den = sum((at - mean_t) ** 2 for at, _ in half)
        return num / den * 60 if den else 0.0

    @property
    def met(self) -> bool:
        return self.growth < SOAK_MAX_GROWTH and self.slope_mb_per_min < SOAK_MAX_SLOPE_MB_PER_MIN


def soak(bench: Stack, seconds: float, clients: int, interval: float = 5.0) -> Soak:
    """Steady load with session churn: each client logs in, runs 50 statements (one of
    them a 2000-row result) and logs out, again and again, while RSS is sampled."""
    target = bench.target(GATEWAY)
    assert target.probe is not None
    stop = threading.Event()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client(index: int) -> None:
        try:
            while not stop.is_set():
                connection, _ = target.connect()
                cursor = connection.cursor()
                for number in range(50):
                    sql = SOAK_MIDSIZE_QUERY if number == 25 else WORKLOAD[number % len(WORKLOAD)]
                    cursor.execute(sql).fetchall()
                connection.close()
                with lock:
                    counts["queries"] += 50
                    counts["sessions"] += 1
        except BaseException as exc:
            failures.append(exc)
            stop.set()

    fds_before = target.probe.open_fds()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, float]] = []
    next_report = started + 60
    while not stop.is_set():
        now = time.monotonic()
        samples.append((now - started, target.probe.rss_mb()))
        if now >= next_report:
            print(
                f"  soak {now - started:.0f}s: RSS {samples[-1][1]:.0f} MB, "
                f"{counts['queries']} queries",
                file=sys.stderr,
            )
            next_report += 60
        if now - started >= seconds:
            break
        stop.wait(interval)
    stop.set()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"soak client failed: {failures[0]!r}")
    bench.sessions_closed += counts["sessions"]
    samples.append((time.monotonic() - started, target.probe.rss_mb()))
    spool_bytes = sum(p.stat().st_size for p in bench.spool_dir.iterdir() if p.is_file())
    return Soak(
        samples[-1][0],
        clients,
        counts["queries"],
        counts["sessions"],
        samples,
        (fds_before, target.probe.open_fds()),
        spool_bytes,
    )


# --- recorder ---------------------------------------------------------------------


@dataclass
class Archive:
    summaries: int
    ended: int
    records: int
    raw_bytes: int
    stored_bytes: int
    statements: int = 0

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("nan")


def archive_totals(s3: Any) -> Archive:
    totals = Archive(0, 0, 0, 0, 0)
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"{PREFIX}/summaries/"
    )
    for page in pages:
        for item in page.get("Contents", []):
            summary = orjson.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
            totals.summaries += 1
            totals.ended += summary.get("end_ts") is not None
            totals.records += summary.get("records", 0)
            totals.statements += summary.get("statements", 0)
            totals.raw_bytes += summary.get("bytes", 0)
            totals.stored_bytes += summary.get("stored_bytes", 0)
    return totals


def wait_archived(bench: Stack, timeout: float = 120.0) -> Archive:
    """The archive once every session the benchmark closed is stored with its end."""
    return wait_sessions_archived(bench.s3, bench.sessions_closed, timeout)


def wait_sessions_archived(
    s3: Any, sessions: int, timeout: float = 120.0, statements: int = 0
) -> Archive:
    """The archive once `sessions` sessions are stored with their end and at least
    `statements` statements across every writer's stream (or after `timeout`).

    A session served by several gateway processes ends in the stream of the one that
    saw its logout; the others' streams arrive when their segments seal by age."""
    try:
        return stack.wait_until(  # type: ignore[return-value]
            lambda: (
                (a := archive_totals(s3)).ended >= sessions and a.statements >= statements and a
            ),
            timeout,
            f"{sessions} ended sessions and {statements} statements in the archive",
        )
    except TimeoutError as exc:
        print(f"warning: {exc}; figures from what is stored", file=sys.stderr)
        return archive_totals(s3)


@dataclass
class Recording:
    records: int
    seconds: float
    archive: Archive

    @property
    def per_second(self) -> float:
        return self.records / self.seconds


def recording_rate(bench: Stack, clients: int, per_client: int) -> Recording:
    """Records the gateway made durable and stored per second of a timed run."""
    before = wait_archived(bench)
    measurement = Measurement(GATEWAY, clients)
    bench.sessions_closed += run_round(bench.target(GATEWAY), clients, per_client, measurement)
    after = wait_archived(bench)
    return Recording(after.records - before.records, measurement.seconds, after)


# --- profiling --------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, output: Path) -> Iterator[None]:
    """Sample the gateway with py-spy (collapsed stacks) while the block runs."""
    output.parent.mkdir(parents=True, exist_ok=True)
    binary = stack.BIN / "py-spy"
    if not binary.exists():
        raise SystemExit("--profile needs py-spy in the venv: .venv/bin/pip install py-spy")
    argv = [str(binary), "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    process = subprocess.Popen(
        [*argv, "--gil", "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # py-spy attaches asynchronously; a second covers it
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def profile_summary(raw: Path, top: int = 40) -> str:
    """Inclusive and self share of samples per function, from py-spy's collapsed stacks.

    Sampled with --gil: only the thread holding the GIL counts, which is the
    event loop's CPU plus whatever the spool's threads take from it."""
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack_text.split(";")]
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    lines = [f"{total} samples", "inclusive:"]
    lines += [f"  {n * 100 / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines.append("self:")
    lines += [f"  {n * 100 / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def hook_timing_table(path: Path) -> str:
    """The per-hook wall times scripts/hook_timing.py wrote, slowest first."""
    if not path.exists():
        return f"no hook timings in {path} (fewer than 100 answers?)"
    timings = orjson.loads(path.read_bytes())
    lines = ["| hook | calls | p50 us | mean us | p99 us |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in sorted(timings.items(), key=lambda item: -item[1]["p50_us"]):
        lines.append(
            f"| {name} | {row['n']} | {row['p50_us']:.0f} | {row['mean_us']:.0f}"
            f" | {row.get('p99_us', 0):.0f} |"
        )
    return "\n".join(lines)


# --- report -----------------------------------------------------------------------


def source_version() -> str:
    """The commit measured, and whether the working tree had changes on top of it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "source: not a git checkout"
    return f"source: commit {commit}" + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("mitmproxy", "fakesnow", "snowflake-connector-python", "moto")
    )
    load = os.getloadavg()[0]
    return (
        f"{source_version()}; "
        f"{os.cpu_count()} vCPUs ({cpu}), {memory:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}; {versions}; load average {load:.2f} at start. "
        "Clients, fakesnow, moto, the IdP and the proxy all share these CPUs."
    )


def throughput_table(results: list[Measurement]) -> str:
    bare = {r.clients: r for r in results if r.target == BARE}
    lines = [
        "| clients | target | queries/s | p50 ms | p99 ms | proxy CPU ms/query | vs bare |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        cpu = r.cpu_ms_per_query
        versus = ""
        if r.target == GATEWAY and r.clients in bare:
            base = bare[r.clients]
            versus = (
                f"{r.qps / base.qps:.0%} throughput, "
                f"{r.percentile_ms(0.5) - base.percentile_ms(0.5):+.2f} ms p50"
            )
        lines.append(
            f"| {r.clients} | {r.target} | {r.qps:.0f} | {r.percentile_ms(0.5):.2f} | "
            f"{r.percentile_ms(0.99):.2f} | {'-' if cpu is None else f'{cpu:.2f}'} | {versus} |"
        )
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def report(
    *,
    per_client: int,
    rounds: int,
    results: list[Measurement],
    logins: dict[str, list[float]],
    peaks: dict[str, float],
    large: list[LargeResults],
    recording: Recording | None,
    soaked: Soak | None,
    machine_text: str,
) -> str:
    by_key = {(r.target, r.clients): r for r in results}
    out = [
        f"Machine: {machine_text}",
        "",
        f"Workload: each client its own connector session, {per_client} statements per client "
        f"per round, {rounds} round(s) with the targets taking turns; statements cycle through "
        f"{len(WORKLOAD)} small SELECTs (1 to 8 rows). Latency is per statement as the "
        "connector sees it (execute + fetchall).",
        "",
        throughput_table(results),
        "",
        "| target | login p50 ms | login p99 ms | peak RSS MB (whole run) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, times in logins.items():
        peak = peaks.get(name)
        out.append(
            f"| {name} | {percentile(times, 0.5) * 1000:.0f} | {percentile(times, 0.99) * 1000:.0f}"
            f" | {'-' if peak is None else f'{peak:.0f}'} |"
        )
    if large:
        out += [
            "",
            f"{large[0].sessions} sessions each fetching a {LARGE_ROWS:,}-row result at the same "
            "time (narrow: 1 number column, about 1.1 MB of JSON per answer; wide: 4 columns, "
            "about 7.3 MB; fakesnow sends all of it inline):",
            "",
            "| result | target | RSS before MB | peak RSS MB | seconds | proxy CPU s |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        out += [
            f"| {x.variant} | {x.target} | {x.rss_before_mb:.0f} | {x.peak_rss_mb:.0f} | "
            f"{x.seconds:.1f} | {x.cpu_seconds:.1f} |"
            for x in large
        ]
    if recording is not None:
        archive = recording.archive
        out += [
            "",
            f"Recorder, in the gateway: {recording.records:,} records made durable (fsync) and "
            f"stored in moto S3 during a {recording.seconds:.1f} s run at 32 clients: "
            f"{recording.per_second:,.0f} records/s. Whole archive of this run: "
            f"{archive.records:,} records in {archive.summaries} session streams, "
            f"{archive.raw_bytes / 1e6:.1f} MB of JSON lines stored as "
            f"{archive.stored_bytes / 1e6:.2f} MB: compression {archive.ratio:.1f}x.",
        ]
    if soaked is not None:
        out += [
            "",
            f"Soak: {soaked.seconds:.0f} s, {soaked.clients} clients, {soaked.sessions:,} sessions "
            f"(login, 50 statements, logout), {soaked.queries:,} statements; gateway RSS "
            f"{soaked.samples[0][1]:.0f} MB when it began (after the large results, if they ran), "
            f"{soaked.warm_rss:.0f} MB after the first "
            f"tenth, {soaked.end_rss:.0f} MB at the end (max "
            f"{max(rss for _, rss in soaked.samples):.0f} MB): growth {soaked.growth:+.1%}, "
            f"slope over the second half {soaked.slope_mb_per_min:+.2f} MB/min; open files "
            f"{soaked.fds[0]} -> {soaked.fds[1]}; spool on disk at the end "
            f"{soaked.spool_bytes / 1e6:.1f} MB.",
        ]
    out += ["", "Targets:", ""]
    gateway_8, bare_8 = by_key.get((GATEWAY, 8)), by_key.get((BARE, 8))
    if gateway_8 and bare_8:
        ratio = gateway_8.qps / bare_8.qps
        out.append(
            f"- throughput at 8 clients >= {TARGET_THROUGHPUT_RATIO:.0%} of bare mitmdump: "
            f"{ratio:.0%}, {verdict(ratio >= TARGET_THROUGHPUT_RATIO)}"
        )
    gateway_1, bare_1 = by_key.get((GATEWAY, 1)), by_key.get((BARE, 1))
    if gateway_1 and bare_1:
        added = gateway_1.percentile_ms(0.5) - bare_1.percentile_ms(0.5)
        out.append(
            f"- p50 latency added over bare mitmdump (1 client) <= {TARGET_ADDED_P50_MS:.0f} ms: "
            f"{added:.2f} ms, {verdict(added <= TARGET_ADDED_P50_MS)}"
        )
    for x in large:
        if x.target == GATEWAY:
            out.append(
                f"- gateway RSS < {TARGET_LARGE_RSS_MB:.0f} MB with {x.sessions} sessions each "
                f"fetching {LARGE_ROWS:,} rows ({x.variant}): {x.peak_rss_mb:.0f} MB, "
                f"{verdict(x.peak_rss_mb < TARGET_LARGE_RSS_MB)}"
            )
    if soaked is not None:
        out.append(
            f"- no RSS growth over the soak (growth < {SOAK_MAX_GROWTH:.0%} and slope < "
            f"{SOAK_MAX_SLOPE_MB_PER_MIN} MB/min): {soaked.seconds / 60:.1f} min run, "
            f"{verdict(soaked.met)}"
        )
    else:
        out.append("- soak: not run this time (`--soak SECONDS`)")
    return "\n".join(out)


def write_doc(text: str, section: str = "bench.py") -> None:
    """Replace the block between `<!-- {section} begin -->` and its end marker."""
    path = REPO_ROOT / "docs" / "performance.md"
    begin, end = f"<!-- {section} begin -->", f"<!-- {section} end -->"
    content = path.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{path} lacks the {begin} ... {end} markers")
    head, _, rest = content.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def unwind_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the bench stops its processes (each in its own session)."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main() -> int:
    delegated = {"--saturate": "scripts.bench_saturation", "--chunks": "scripts.bench_chunks"}
    for flag, module in delegated.items():
        if flag in sys.argv[1:]:
            rest = sys.argv[1:]
            rest.remove(flag)  # the first only: bench_chunks has a --chunks COUNT of its own
            return int(importlib.import_module(module).main(rest))
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="--saturate [ARGS] runs scripts/bench_saturation.py (nginx upstream, wrk load) "
        "and --chunks [ARGS] scripts/bench_chunks.py (the chunk proxy) with ARGS instead.",
    )
    parser.add_argument("--queries", type=int, default=100, help="statements per client per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency level")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels")
    parser.add_argument("--logins", type=int, default=20, help="sequential logins per target")
    parser.add_argument("--large-sessions", type=int, default=32)
    parser.add_argument(
        "--large", default="narrow,wide", help="100k-row result variants to fetch ('' for none)"
    )
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="soak length")
    parser.add_argument("--soak-clients", type=int, default=8)
    parser.add_argument(
        "--profile", type=Path, help="also run 8 clients on the gateway under py-spy, raw output"
    )
    parser.add_argument(
        "--large-only",
        action="store_true",
        help="measure only the large results (no throughput levels, one login per target)",
    )
    parser.add_argument(
        "--gateway-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra gateway option, e.g. hoopgw_body_limit=33554432 (repeatable)",
    )
    parser.add_argument(
        "--hook-timing",
        type=Path,
        metavar="FILE",
        help="also load scripts/hook_timing.py: wall time per gateway hook as JSON in FILE; "
        "skips the 32-client recording run (the clocks cost a little: take the other figures "
        "from a run without it)",
    )
    parser.add_argument("--write", action="store_true", help="update docs/performance.md")
    args = parser.parse_args()
    levels = [] if args.large_only else [int(c) for c in args.clients.split(",") if c]
    if args.large_only:
        args.logins = 1
    gateway_options = dict(option.split("=", 1) for option in args.gateway_set)
    machine_text = machine()

    with running_stack(gateway_options, args.hook_timing) as bench:
        gateway_probe = bench.target(GATEWAY).probe
        bare_probe = bench.target(BARE).probe
        assert gateway_probe is not None and bare_probe is not None
        logins = {}
        for target in bench.targets:
            logins[target.name] = login_times(target, args.logins)
        bench.sessions_closed += args.logins
        results = measure_levels(bench, levels, args.queries, args.rounds)
        peaks = {BARE: bare_probe.peak_rss_mb(), GATEWAY: gateway_probe.peak_rss_mb()}
        # the 32-client recording run would swamp the hook timings of the levels asked for
        measure_recording = levels and not args.hook_timing
        recording = recording_rate(bench, 32, args.queries) if measure_recording else None
        large: list[LargeResults] = []
        for variant in [v for v in args.large.split(",") if v]:
            for name in (BARE, GATEWAY):
                large.append(large_results(bench.target(name), args.large_sessions, variant))
                if name == GATEWAY:
                    bench.sessions_closed += args.large_sessions
        soaked = soak(bench, args.soak, args.soak_clients) if args.soak > 0 else None
        if recording is not None:
            recording.archive = wait_archived(bench)
        if args.profile:
            with py_spy(gateway_probe.pid, args.profile):
                run_round(bench.target(GATEWAY), 8, args.queries * 2, Measurement(GATEWAY, 8))
            print(profile_summary(args.profile), file=sys.stderr)
        if args.hook_timing:
            print(hook_timing_table(args.hook_timing), file=sys.stderr)

    text = report(
        per_client=args.queries,
        rounds=args.rounds,
        results=results,
        logins=logins,
        peaks=peaks,
        large=large,
        recording=recording,
        soaked=soaked,
        machine_text=machine_text,
    )
    print(text)
    if args.write:
        write_doc(text)
    return 0


if __name__ == "__main__":
    unwind_on_sigterm()
    sys.exit(main())
