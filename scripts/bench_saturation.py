"""Saturation benchmark: the gateway against bare mitmdump, with an upstream that costs nothing.

scripts/bench.py puts fakesnow upstream, which answers in 5-7 ms and saturates
before either proxy does. Here the upstream is nginx answering fixed
Snowflake JSON (config written by this script, nothing installed system-wide:
its own pid, log and temp paths, `daemon off`, a loopback port), the load is
`wrk` (C, one thread, a Lua script this script writes), and the two targets
take turns within one run:

- bare: `mitmdump --mode reverse:http://127.0.0.1:NGINX`, no addons, with the
  canned upstream's session token;
- gateway: `mitmdump -s addons/gateway.py` with every feature on (OIDC via
  oidc-provider-mock, sealed tokens, guardrails with a policy, recording with
  fsync into a local spool and moto's S3 server as store; approval and
  masking rules present for other groups, so not triggered), with the
  session token the gateway handed the real connector at login.

wrk posts query-requests (a unique requestId each, varying SQL; one in
`--arrow-every` asks for the 1,000-row Arrow answer, the rest get a 3-row JSON
rowset) at 1, 8 and 32 connections. Per level: q/s, p50 added, p99 and p99.9
(wrk's own histogram, from a Lua `done` hook), the gateway's CPU per
statement (utime+stime from /proc over the wrk run, with its child
processes). Answers that are not HTTP 200 with `"success": true` are counted
by the Lua script and flag the run; after the run the records the gateway
stored are counted, so no feature was optimised away. `--write` replaces the
marked section of docs/performance.md. Needs `apt-get install nginx-light wrk`; not part of CI.

`--gateway-workers N` runs the gateway as N processes sharing one port
(`hoopgw_reuse_port`, docs/operations.md "Several processes per host"), each
with its own spool; wrk drives the shared port and the kernel gives each of
its connections to one process, which keeps it or hands it to the process
holding the fewest (`hoopgw_balance_dir`; `--kernel-spread` leaves the kernel's
hash alone). The gateway's CPU per statement is the sum over the N processes,
and the report says how many ran.

`--lean-bare` loads scripts/lean_bare.py into bare mitmdump: the gateway's
mitmproxy chain (addons/lockdown.py takes seventeen of mitmproxy's addons out,
addons/chain.py groups the rest), as the gateway runs it. The gap that is left is the
gateway's own work; the targets are met against bare mitmdump as shipped, so
such a run cannot `--write`.

    .venv/bin/python -m scripts.bench_saturation                # 3 rounds of 10 s
    .venv/bin/python -m scripts.bench_saturation --rounds 1 --duration 5
    .venv/bin/python -m scripts.bench_saturation --write        # on a quiet machine
    .venv/bin/python -m scripts.bench --saturate --connections 8
    .venv/bin/python -m scripts.bench_saturation --gateway-workers 2
    .venv/bin/python -m scripts.bench_saturation --connections 1 --rounds 1 \\
        --profile var/saturation.pyspy --hook-timing var/hooks.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow
import snowflake.connector

from hoopgw.addons.balance import OPTION as BALANCE_OPTION
from hoopgw.recorder.secrets import new_token_key
from scripts import bench, disk_probe, loop_cpu
from tests import stack

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
INSTALL_HINT = "apt-get install nginx-light wrk"

# The canned upstream's fixed facts.
UPSTREAM_SESSION_TOKEN = "ver:1-hint:1-ETMsDgAAAbenchSessionToken"
UPSTREAM_MASTER_TOKEN = "ver:1-hint:1-ETMsDgAAAbenchMasterToken"
UPSTREAM_SESSION_ID = 1172562260498
ARROW_ROWS = 1_000
JSON_ROWS = [["1", "alpha"], ["2", "beta"], ["3", "gamma"]]
QUERY_ID_SLOT = "@QUERY_ID@"
ROWSET_SLOT = "@ROWSET_BASE64@"
# `01` and 30 of the 32 hex digits of nginx's $request_id: a Snowflake-shaped query id.
QUERY_ID_FROM_REQUEST_ID = (
    '"~^..(?<a>.{6})(?<b>.{4})(?<c>.{4})(?<d>.{4})(?<e>.{12})$" "01$a-$b-$c-$d-$e";'
)
NGINX_PART = 3000  # nginx refuses a config token over 4096 bytes: the Arrow rowset goes in parts

# What wrk sends: `%d` is the request's number, so no two statements in a row are alike.
STATEMENTS = (
    "select id, name from bench.public.orders where id > %d",
    "select count(*) as n from bench.public.events where kind = 'click' and user_id = %d",
    "select o.id, c.name from bench.public.orders o join bench.public.customers c "
    "on o.customer_id = c.id where o.id = %d",
)
ARROW_STATEMENT = "select id, label, amount from bench.public.ledger where batch = %d"

# Rules for groups the bench's caller is not in: the gateway loads and checks them, and
# they must not fire (an approval hold or a masked answer would change what is measured).
POLICY = (
    bench.POLICY
    + """
[[rule]]
name = "contractors-review"
groups = ["contractors"]
review_kinds = ["DELETE", "UPDATE", "MERGE"]
review_objects = ["BENCH.*.*"]
approvers = ["dba"]

[[rule]]
name = "analysts-masking"
groups = ["analysts"]
mask_columns = ["*.*.CUSTOMERS.EMAIL"]
detect = ["email", "credit_card"]
on_detect = "mask"
"""
)

# Targets the issue sets (issue 22); docs/performance.md states them.
TARGET_SATURATION_RATIO = 0.85
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 2.0
TARGET_COMPRESSION = 8.0
BARE, GATEWAY = "bare mitmdump", "hoopgw gateway"
LEAN_BARE_SCRIPT = Path(__file__).resolve().parent / "lean_bare.py"
PROJECT = Path(__file__).resolve().parent.parent
DISK_PROBE_INTERVAL = 0.05
DISK_STALL_MS = 50.0
"""A flush of the spool's disk this long during a gateway run is the disk's, not the
gateway's: a wait for a CPU on this bench's busy machine is a few milliseconds."""
SHARED_PORT_OPTIONS = {"hoopgw_reuse_port": "true", "server": "false"}
RESULT_PREFIX = "BENCH-RESULT "


# --- the canned upstream ----------------------------------------------------------------


def _column(name: str, kind: str, **facts: Any) -> dict[str, Any]:
    return {
        "name": name,
        "database": "BENCH",
        "schema": "PUBLIC",
        "table": "ORDERS",
        "type": kind,
        "nullable": False,
        "byteLength": facts.get("byteLength"),
        "length": facts.get("length"),
        "precision": facts.get("precision"),
        "scale": facts.get("scale"),
        "collation": None,
    }


def _query_answer(rowtype: list[dict[str, Any]], rows: int, result: dict[str, Any]) -> str:
    """A successful SELECT's answer as Snowflake sends it (query-request and /result)."""
    return _compact(
        {
            "data": {
                "parameters": [
                    {"name": "TIMEZONE", "value": "Etc/UTC"},
                    {"name": "CLIENT_RESULT_CHUNK_SIZE", "value": 160},
                ],
                "rowtype": rowtype,
                "total": rows,
                "returned": rows,
                "queryId": QUERY_ID_SLOT,
                "databaseProvider": None,
                "finalDatabaseName": "BENCH",
                "finalSchemaName": "PUBLIC",
                "finalWarehouseName": "BENCH_WH",
                "finalRoleName": "ANALYST",
                "numberOfBinds": 0,
                "arrayBindSupported": False,
                "statementTypeId": 4096,
                "version": 1,
                "sendResultTime": 1765000000000,
                **result,
            },
            "code": None,
            "message": None,
            "success": True,
        }
    )


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def arrow_rowset() -> bytes:
    """1,000 rows as the IPC stream Snowflake sends, with the field metadata drivers read."""

    def meta(logical: str, precision: int = 38, scale: int = 0, length: int = 0) -> dict[str, str]:
        return {
            "logicalType": logical,
            "precision": str(precision),
            "scale": str(scale),
            "charLength": str(length),
        }

    schema = pyarrow.schema(
        [
            pyarrow.field("ID", pyarrow.int64(), False, meta("FIXED")),
            pyarrow.field("LABEL", pyarrow.string(), False, meta("TEXT", length=16777216)),
            pyarrow.field("AMOUNT", pyarrow.int64(), False, meta("FIXED", 12, 2)),
        ]
    )
    table = pyarrow.table(
        [
            pyarrow.array(range(ARROW_ROWS), pyarrow.int64()),
            pyarrow.array([f"ledger-entry-{n:05d}" for n in range(ARROW_ROWS)]),
            pyarrow.array([n * 137 % 100_000 for n in range(ARROW_ROWS)], pyarrow.int64()),
        ],
        schema=schema,
    )
    sink = pyarrow.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class CannedAnswers:
    """The upstream's answers as JSON text; QUERY_ID_SLOT (and ROWSET_SLOT) to be filled."""

    login: str
    token_request: str
    session: str
    json_query: str
    arrow_query: str
    rowset_base64: str
    not_found: str


def canned_answers() -> CannedAnswers:
    text = _column("NAME", "text", length=16777216, byteLength=16777216)
    json_rowtype = [_column("ID", "fixed", precision=38, scale=0), text]
    arrow_rowtype = [
        _column("ID", "fixed", precision=38, scale=0),
        _column("LABEL", "text", length=16777216, byteLength=16777216),
        _column("AMOUNT", "fixed", precision=12, scale=2),
    ]
    login = {
        "data": {
            "masterToken": UPSTREAM_MASTER_TOKEN,
            "token": UPSTREAM_SESSION_TOKEN,
            "validityInSeconds": 3600,
            "masterValidityInSeconds": 14400,
            "displayUserName": "HOOPGW_SVC",
            "serverVersion": "9.1.0",
            "firstLogin": False,
            "remMeToken": None,
            "remMeValidityInSeconds": 0,
            "healthCheckInterval": 45,
            "newClientForUpgrade": None,
            "sessionId": UPSTREAM_SESSION_ID,
            "parameters": [
                {"name": "AUTOCOMMIT", "value": True},
                {"name": "CLIENT_SESSION_KEEP_ALIVE_HEARTBEAT_FREQUENCY", "value": 3600},
                {"name": "CLIENT_STAGE_ARRAY_BINDING_THRESHOLD", "value": 0},
                {"name": "TIMEZONE", "value": "Etc/UTC"},
                {"name": "CLIENT_RESULT_CHUNK_SIZE", "value": 160},
            ],
            "sessionInfo": {
                "databaseName": "BENCH",
                "schemaName": "PUBLIC",
                "warehouseName": "BENCH_WH",
                "roleName": "ANALYST",
            },
            "idToken": None,
            "idTokenValidityInSeconds": 0,
            "responseData": None,
            "mfaToken": None,
            "mfaTokenValidityInSeconds": 0,
        },
        "code": None,
        "message": None,
        "success": True,
    }
    renewed = {
        "data": {
            "sessionToken": UPSTREAM_SESSION_TOKEN,
            "validityInSecondsST": 3600,
            "masterToken": UPSTREAM_MASTER_TOKEN,
            "validityInSecondsMT": 14400,
            "sessionId": UPSTREAM_SESSION_ID,
        },
        "code": None,
        "message": None,
        "success": True,
    }
    return CannedAnswers(
        login=_compact(login),
        token_request=_compact(renewed),
        session=_compact({"data": None, "code": None, "message": None, "success": True}),
        json_query=_query_answer(
            json_rowtype, len(JSON_ROWS), {"queryResultFormat": "json", "rowset": JSON_ROWS}
        ),
        arrow_query=_query_answer(
            arrow_rowtype,
            ARROW_ROWS,
            {"queryResultFormat": "arrow", "rowsetBase64": ROWSET_SLOT},
        ),
        rowset_base64=base64.b64encode(arrow_rowset()).decode(),
        not_found=_compact(
            {
                "data": None,
                "code": "390404",
                "message": "the canned upstream of the bench has no answer for this path",
                "success": False,
            }
        ),
    )


def _nginx_string(text: str) -> str:
    """`text` as a single-quoted nginx string; `$` is reserved for the variables put in."""
    if any(c in text for c in "'\\$"):
        raise ValueError("a canned answer holds a quote, backslash or $")
    return f"'{text}'"


def nginx_config(workdir: Path, port: int, arrow_port: int, answers: CannedAnswers) -> str:
    """nginx.conf for the canned upstream: loopback only, every path under `workdir`.

    A query-request gets the 3-row JSON answer, or the Arrow answer when its
    URL has `result=arrow` or it arrives on `arrow_port` (where a driver, which
    cannot add to the URL, gets it). Each query answer carries its own query id
    (`01` and 30 hex digits of nginx's `$request_id`, a Snowflake-shaped UUID).
    """
    rowset = answers.rowset_base64
    parts = [rowset[i : i + NGINX_PART] for i in range(0, len(rowset), NGINX_PART)]
    part_maps = "\n".join(
        f"    map $request_method $canned_rowset_{n} {{ default {_nginx_string(part)}; }}"
        for n, part in enumerate(parts)
    )
    rowset_value = "".join(f"$canned_rowset_{n}" for n in range(len(parts)))

    def answer(text: str) -> str:
        _nginx_string(text)  # checks the text before the variables go in
        filled = text.replace(QUERY_ID_SLOT, "$canned_query_id")
        return f"'{filled.replace(ROWSET_SLOT, rowset_value)}'"

    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    return f"""# written by scripts/bench_saturation.py
daemon off;
master_process off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    client_max_body_size 64m;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    default_type application/json;
    map $request_id $canned_query_id {{
        {QUERY_ID_FROM_REQUEST_ID}
    }}
    map "$arg_result:$server_port" $canned_arrow {{
        default "";
        "~^arrow:" 1;
        "~:{arrow_port}$" 1;
    }}
{part_maps}
    server {{
        listen {stack.LOOPBACK}:{port};
        listen {stack.LOOPBACK}:{arrow_port};
        location = /session/v1/login-request {{
            return 200 {answer(answers.login)};
        }}
        location = /session/token-request {{
            return 200 {answer(answers.token_request)};
        }}
        location = /session {{
            return 200 {answer(answers.session)};
        }}
        location = /session/heartbeat {{
            return 200 {answer(answers.session)};
        }}
        location = /telemetry/send {{
            return 200 {answer(answers.session)};
        }}
        location = /queries/v1/query-request {{
            if ($canned_arrow) {{
                return 200 {answer(answers.arrow_query)};
            }}
            return 200 {answer(answers.json_query)};
        }}
        location ~ ^/queries/[0-9a-fA-F-]+/result$ {{
            return 200 {answer(answers.json_query)};
        }}
        location = /queries/v1/abort-request {{
            return 200 {answer(answers.session)};
        }}
        location / {{
            return 404 {answer(answers.not_found)};
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    for candidate in NGINX_CANDIDATES:
        if found := shutil.which(candidate):
            return found
    return None


@dataclass
class CannedUpstream:
    proc: stack.Proc
    port: int
    arrow_port: int

    @property
    def url(self) -> str:
        return f"http://{stack.LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self.proc.stop()


def start_canned_upstream(workdir: Path, answers: CannedAnswers | None = None) -> CannedUpstream:
    """nginx serving the canned answers on two loopback ports, ready."""
    binary = nginx_binary()
    if binary is None:
        raise SystemExit(f"nginx is not installed: {INSTALL_HINT}")
    workdir.mkdir(parents=True, exist_ok=True)
    port, arrow_port = stack.free_port(), stack.free_port()
    config = workdir / "nginx.conf"
    config.write_text(nginx_config(workdir, port, arrow_port, answers or canned_answers()))
    proc = stack.Proc(
        "nginx",
        [binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(config)],
        workdir / "nginx.log",
    ).start()
    try:
        proc.wait_ready(lambda: stack.port_open(port) and stack.port_open(arrow_port))
    except BaseException:
        proc.stop()
        raise
    return CannedUpstream(proc, port, arrow_port)


# --- the load -----------------------------------------------------------------------------


def wrk_script(token: str, arrow_every: int, path: str = "/queries/v1/query-request") -> str:
    """The Lua script wrk runs: one query-request per call, and a JSON summary from `done`.

    Globals, not locals, where `done` reads them through `thread:get`."""
    for sql in (*STATEMENTS, ARROW_STATEMENT):
        if '"' in sql or "\\" in sql:
            raise ValueError(f"statement needs JSON escaping: {sql}")
    statements = ", ".join(f'"{sql}"' for sql in STATEMENTS)
    return f"""-- written by scripts/bench_saturation.py
local token = "{token}"
local path = "{path}"
local nonce = "{secrets.token_hex(4)}"
local arrow_every = {arrow_every}
local statements = {{ {statements} }}
local arrow_statement = "{ARROW_STATEMENT}"
local threads = {{}}

-- wrk checks each address with a connection it closes at once; gateway processes that
-- balance by connections held would count it as one more as wrk's own open
function wrk.resolve(host, service)
    wrk.addrs = wrk.lookup(host, service)
end

function setup(thread)
    table.insert(threads, thread)
    thread:set("thread_index", #threads)
end

function init(args)
    counter = 0
    non_ok = 0
    not_success = 0
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Accept"] = "application/snowflake"
    wrk.headers["User-Agent"] = "PythonConnector/4.8.1 (hoopgw saturation bench)"
    wrk.headers["Authorization"] = 'Snowflake Token="' .. token .. '"'
end

function request()
    counter = counter + 1
    local request_id = string.format("%s-%04x-4000-8000-%012x", nonce, thread_index, counter)
    local target = path .. "?requestId=" .. request_id
    local sql
    if arrow_every > 0 and counter % arrow_every == 0 then
        sql = string.format(arrow_statement, counter)
        target = target .. "&result=arrow"
    else
        sql = string.format(statements[counter % #statements + 1], counter)
    end
    local body = '{{"sqlText":"' .. sql .. '","asyncExec":false,"sequenceId":' .. counter
        .. ',"querySubmissionTime":' .. string.format("%.0f", os.time() * 1000)
        .. ',"isInternal":false}}'
    return wrk.format("POST", target, nil, body)
end

function response(status, headers, body)
    if status ~= 200 then
        non_ok = non_ok + 1
    elseif not string.find(body, '"success"%s*:%s*true') then
        not_success = not_success + 1
    end
end

function done(summary, latency, requests)
    local bad_status, bad_answer = 0, 0
    for _, thread in ipairs(threads) do
        bad_status = bad_status + thread:get("non_ok")
        bad_answer = bad_answer + thread:get("not_success")
    end
    local e = summary.errors
    io.write(string.format(
        '{RESULT_PREFIX}{{"requests":%d,"duration_us":%d,"non_200":%d,"not_success":%d,'
        .. '"socket_errors":%d,"timeouts":%d,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,'
        .. '"p999_us":%.0f,"max_us":%.0f,"mean_us":%.1f}}\\n',
        summary.requests, summary.duration, bad_status, bad_answer,
        e.connect + e.read + e.write, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non_200: int
    not_success: int
    socket_errors: int
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    cpu_seconds: float | None = None
    cpu_per_process: tuple[float, ...] = ()
    connections_per_process: tuple[int, ...] = ()
    """With several gateway processes, how many of wrk's connections each held."""
    disk_flushes_ms: tuple[float, ...] = ()
    """The disk probe's flushes during the run (scripts/disk_probe.py)."""
    loop: LoopWindow | None = None

    @property
    def qps(self) -> float:
        return self.requests / self.seconds

    @property
    def failures(self) -> int:
        return self.non_200 + self.not_success + self.socket_errors + self.timeouts


def run_wrk(
    port: int,
    script: Path,
    connections: int,
    duration: float,
    log: Path | None = None,
    spread_over: Sequence[int] = (),
) -> WrkResult:
    """wrk with one thread (the proxies need the other cores) and `connections` connections.

    With `spread_over` (the pids of the processes sharing `port`), also counts, once wrk
    has connected, how many of its connections each process holds."""
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit(f"wrk is not installed: {INSTALL_HINT}")
    argv = [
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        f"http://{stack.LOOPBACK}:{port}",
    ]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as running:
        spread = (
            wrk_spread(running.pid, port, spread_over, connections) if len(spread_over) > 1 else ()
        )
        try:
            stdout, stderr = running.communicate(timeout=duration + 120)
        except subprocess.TimeoutExpired:
            running.kill()
            raise RuntimeError(f"wrk did not finish within {duration + 120:g} s") from None
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n{stdout}{stderr}\n")
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if running.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({running.returncode}): {stderr[-2000:]}")
    raw = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        non_200=raw["non_200"],
        not_success=raw["not_success"],
        socket_errors=raw["socket_errors"],
        timeouts=raw["timeouts"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        p999_ms=raw["p999_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        connections_per_process=spread,
    )


def spread_text(spread: Sequence[int]) -> str:
    """`5/3`: wrk's connections held by each gateway process."""
    return "/".join(str(count) for count in spread)


def wrk_spread(
    wrk_pid: int, port: int, pids: Sequence[int], connections: int, timeout: float = 5.0
) -> tuple[int, ...]:
    """How many of wrk's connections to `port` each of `pids` accepted, read from /proc once
    they hold `connections` of them between them (or at `timeout`): the kernel spreads a
    shared port's connections by a hash of their addresses, so N processes seldom get an
    even share."""
    deadline = time.monotonic() + timeout
    while True:
        ends = tcp_connections()
        wrk_ports = {
            ends[inode][0] for inode in socket_inodes(wrk_pid) if ends.get(inode, (0, 0))[1] == port
        }
        spread = tuple(
            sum(
                1
                for inode in socket_inodes(pid)
                if (found := ends.get(inode)) is not None
                and found[0] == port
                and found[1] in wrk_ports
            )
            for pid in pids
        )
        if sum(spread) >= connections or time.monotonic() >= deadline:
            return spread
        time.sleep(0.02)  # polling /proc: nothing says when the last connection is accepted


def tcp_connections() -> dict[int, tuple[int, int]]:
    """Each established TCP socket's inode, with its local and remote port (IPv4 and IPv6)."""
    found: dict[int, tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "01":  # TCP_ESTABLISHED
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            found[int(fields[9])] = (local_port, remote_port)
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets `pid` holds open (empty once it has exited)."""
    inodes = set()
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in descriptors:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    """The processes of one target: their CPU time summed, idle only when each is."""

    probes: tuple[bench.ProcessProbe, ...]

    @classmethod
    def of(cls, *procs: stack.Proc) -> Processes:
        pids = [proc.process.pid for proc in procs if proc.process is not None]
        if len(pids) != len(procs):
            raise RuntimeError("a process of the bench was never started")
        return cls(tuple(bench.ProcessProbe(pid) for pid in pids))

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(probe.pid for probe in self.probes)

    def cpu_seconds(self) -> float:
        return sum(self.cpu_per_process())

    def cpu_per_process(self) -> tuple[float, ...]:
        return tuple(probe.cpu_seconds() for probe in self.probes)


@dataclass(frozen=True)
class LoopWindow:
    """scripts/loop_cpu.py's totals over one wrk run: the loop thread's CPU, by row."""

    statements: int
    thread_cpu: float
    rows: dict[str, float]

    @classmethod
    def read(cls, path: Path, written_after: float = 0.0, timeout: float = 5.0) -> LoopWindow:
        """The probe's totals, from a write after `written_after` (time.time()): it writes
        every 0.25 s, so a run's last quarter second is not left out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if path.stat().st_mtime > written_after:
                    raw = json.loads(path.read_bytes())
                    return cls(raw["statements"], raw["thread_cpu"], raw["rows"])
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"scripts/loop_cpu.py wrote no totals to {path} in {timeout} s")
            time.sleep(0.05)  # polls for the probe's next write, with a deadline

    def since(self, start: LoopWindow) -> LoopWindow:
        rows = {row: spent - start.rows.get(row, 0.0) for row, spent in self.rows.items()}
        return LoopWindow(
            self.statements - start.statements, self.thread_cpu - start.thread_cpu, rows
        )

    def plus(self, other: LoopWindow) -> LoopWindow:
        rows = dict(self.rows)
        for row, spent in other.rows.items():
            rows[row] = rows.get(row, 0.0) + spent
        return LoopWindow(
            self.statements + other.statements, self.thread_cpu + other.thread_cpu, rows
        )


@dataclass
class Target:
    name: str
    port: int
    processes: Processes
    script: Path
    loop_cpu: Path | None = None

    @property
    def label(self) -> str:
        return gateway_label(len(self.processes.probes), self.name)


def gateway_label(processes: int, name: str = "gateway") -> str:
    """`name`, with the number of processes when there are several, so no reader takes
    the figures of N processes for one's."""
    return name if processes == 1 else f"{name} ({processes} processes)"


@dataclass
class Level:
    """Both targets at one number of connections, every round."""

    connections: int
    runs: dict[str, list[WrkResult]] = field(default_factory=lambda: {BARE: [], GATEWAY: []})

    def qps(self, target: str) -> float:
        runs = self.runs[target]
        return sum(r.requests for r in runs) / sum(r.seconds for r in runs)

    def median(self, target: str, figure: str) -> float:
        return statistics.median(getattr(r, figure) for r in self.runs[target])

    def ratio(self) -> float:
        return self.qps(GATEWAY) / self.qps(BARE)

    def round_ratios(self) -> list[float]:
        return [g.qps / b.qps for b, g in zip(self.runs[BARE], self.runs[GATEWAY], strict=True)]

    def cpu_ms_per_statement(self, target: str) -> float:
        runs = self.runs[target]
        return sum(r.cpu_seconds or 0.0 for r in runs) * 1000 / sum(r.requests for r in runs)

    def cpu_shares(self, target: str) -> list[float]:
        """Each process's share of the target's CPU time over the rounds: with several
        gateway processes, how evenly the kernel spread wrk's connections."""
        per_process = [
            sum(shares)
            for shares in zip(*(r.cpu_per_process for r in self.runs[target]), strict=True)
        ]
        total = sum(per_process)
        return [part / total if total else 0.0 for part in per_process]

    def failures(self) -> int:
        return sum(r.failures for runs in self.runs.values() for r in runs)

    def requests(self, target: str) -> int:
        return sum(r.requests for r in self.runs[target])


def level_spreads(levels: list[Level], balanced: bool) -> str:
    """The sentence giving each gateway round's connections per process, by level."""
    spreads = [
        f"{level.connections} conn "
        + ", ".join(spread_text(run.connections_per_process) for run in runs)
        for level in levels
        if (runs := [run for run in level.runs[GATEWAY] if run.connections_per_process])
    ]
    if not spreads:
        return ""
    how = (
        "each process keeps a new connection only while it holds no more than the other"
        if balanced
        else "the kernel spreads a shared port's connections by a hash of their addresses; "
        "a process with more of them answers each more slowly"
    )
    return f"wrk's connections held by each process, by round ({how}): " + "; ".join(spreads) + "."


def balanced(args: argparse.Namespace) -> bool:
    """Whether the gateway's processes balanced their connections in this run."""
    return args.gateway_workers > 1 and not getattr(args, "kernel_spread", False)


def loop_cpu_table(levels: list[Level]) -> str:
    """Each level's loop-thread CPU per statement, bare and gateway side by side, by row of
    scripts/loop_cpu.py, summed over the rounds."""
    out = []
    for level in levels:
        windows = {}
        for name, runs in level.runs.items():
            loops = [run.loop for run in runs if run.loop is not None]
            if loops:
                windows[name] = functools.reduce(LoopWindow.plus, loops)
        if set(windows) != {BARE, GATEWAY} or not all(w.statements for w in windows.values()):
            continue
        bare, gateway = windows[BARE], windows[GATEWAY]

        def per_statement(window: LoopWindow, spent: float) -> float:
            return spent * 1e6 / window.statements

        def own(window: LoopWindow) -> float:
            return sum(window.rows.get(row, 0.0) for row in loop_cpu.GATEWAY_ROWS)

        def outside(window: LoopWindow) -> float:
            charged = sum(t for row, t in window.rows.items() if row != loop_cpu.COLLECTOR)
            return window.thread_cpu - charged

        lines = [
            ("loop thread's CPU", bare.thread_cpu, gateway.thread_cpu),
            *((row, 0.0, gateway.rows.get(row, 0.0)) for row in loop_cpu.GATEWAY_ROWS),
            (
                "everything else: mitmproxy, asyncio, the loop",
                bare.thread_cpu - own(bare),
                gateway.thread_cpu - own(gateway),
            ),
        ]
        kinds = sorted(
            {*bare.rows, *gateway.rows} - {*loop_cpu.GATEWAY_ROWS, loop_cpu.COLLECTOR},
            key=lambda row: -(gateway.rows.get(row, 0.0) + bare.rows.get(row, 0.0)),
        )
        lines += [
            (f"- {row}", bare.rows.get(row, 0.0), gateway.rows.get(row, 0.0)) for row in kinds
        ]
        lines += [
            ("- outside any callback (select, timers)", outside(bare), outside(gateway)),
            (
                loop_cpu.COLLECTOR,
                bare.rows.get(loop_cpu.COLLECTOR, 0.0),
                gateway.rows.get(loop_cpu.COLLECTOR, 0.0),
            ),
        ]
        out += [
            f"loop thread, {level.connections} connection(s): us per statement "
            f"({bare.statements} and {gateway.statements} statements)",
            "| row | bare | gateway | gateway - bare |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, bare_spent, gateway_spent in lines:
            b, g = per_statement(bare, bare_spent), per_statement(gateway, gateway_spent)
            if max(abs(b), abs(g)) < 1:
                continue
            out.append(f"| {name} | {b:.0f} | {g:.0f} | {g - b:+.0f} |")
        out.append("")
    return "\n".join(out)


def start_disk_probe(home: Path, interval: float, procs: list[stack.Proc]) -> Path | None:
    """scripts/disk_probe.py on the spools' disk (the bench's directory), or None when off."""
    if interval <= 0:
        return None
    log = home / "disk-probe.log"
    probe = stack.Proc(
        "disk-probe",
        [
            sys.executable,
            "-m",
            "scripts.disk_probe",
            str(home),
            str(log),
            "--interval",
            f"{interval:g}",
        ],
        home / "disk-probe.out",
        cwd=PROJECT,
    ).start()
    procs.append(probe)
    probe.wait_ready(lambda: log.exists() and log.read_text().startswith("ready"))
    return log


def wait_idle(processes: Processes, timeout: float = 15.0, busy: float = 0.05) -> bool:
    """Wait until each process uses under `busy` of a core (its spool uploads, roll-ups)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = [probe.cpu_seconds() for probe in processes.probes]
        time.sleep(0.5)  # a sampling window, not synchronisation
        after = [probe.cpu_seconds() for probe in processes.probes]
        if all(end - start < busy * 0.5 for start, end in zip(before, after, strict=True)):
            return True
    return False


def measure(
    target: Target, connections: int, duration: float, log: Path, disk_log: Path | None = None
) -> WrkResult:
    if not wait_idle(target.processes):
        print(f"  note: {target.label} still busy before the run", file=sys.stderr)
    loop_before = LoopWindow.read(target.loop_cpu) if target.loop_cpu else None
    cpu_before = target.processes.cpu_per_process()
    started = time.time()
    result = run_wrk(target.port, target.script, connections, duration, log, target.processes.pids)
    if disk_log is not None:
        result.disk_flushes_ms = tuple(disk_probe.read_flushes(disk_log, started, time.time()))
    cpu_after = target.processes.cpu_per_process()
    if target.loop_cpu is not None and loop_before is not None:
        result.loop = LoopWindow.read(target.loop_cpu, written_after=time.time()).since(loop_before)
    result.cpu_per_process = tuple(
        after - before for before, after in zip(cpu_before, cpu_after, strict=True)
    )
    result.cpu_seconds = sum(result.cpu_per_process)
    return result


def measure_levels(
    targets: list[Target],
    levels: list[int],
    rounds: int,
    duration: float,
    log: Path,
    disk_log: Path | None = None,
) -> list[Level]:
    results = []
    for connections in levels:
        level = Level(connections)
        for number in range(rounds):
            order = targets if number % 2 == 0 else targets[::-1]
            for target in order:
                result = measure(target, connections, duration, log, disk_log)
                level.runs[target.name].append(result)
                print(
                    f"  {connections:>2} conn, round {number + 1}/{rounds}, {target.label}: "
                    f"{result.qps:.0f} q/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f}"
                    f" ms, p99.9 {result.p999_ms:.2f} ms, CPU "
                    f"{(result.cpu_seconds or 0) * 1000 / max(result.requests, 1):.2f} ms/stmt"
                    + (
                        ", CPU split "
                        + "/".join(f"{cpu:.1f}" for cpu in result.cpu_per_process)
                        + " s"
                        if len(result.cpu_per_process) > 1
                        else ""
                    )
                    + (
                        ", connections " + spread_text(result.connections_per_process)
                        if result.connections_per_process
                        else ""
                    )
                    + (
                        f", disk flush max {max(result.disk_flushes_ms):.1f} ms"
                        if result.disk_flushes_ms
                        else ""
                    )
                    + (f", {result.failures} FAILED" if result.failures else ""),
                    file=sys.stderr,
                    flush=True,
                )
        results.append(level)
    return results


@contextlib.contextmanager
def connector_session(port: int, id_token: str) -> Iterator[str]:
    """Log in through the gateway with the real connector; yields the session token it got.

    One statement runs through the connector first, so the canned answers are
    known to satisfy it through the gateway. The session is closed (logged
    out) on exit, which ends its stream in the archive."""
    connection = snowflake.connector.connect(
        account="bench",
        user="bench",
        host=stack.LOOPBACK,
        port=port,
        protocol="http",
        authenticator="oauth",
        token=id_token,
        login_timeout=60,
        network_timeout=120,
    )
    try:
        rows = connection.cursor().execute(STATEMENTS[0] % 0).fetchall()
        if len(rows) != len(JSON_ROWS):
            raise RuntimeError(f"the connector read {len(rows)} rows through the gateway")
        token = connection.rest.token if connection.rest else None
        if not token:
            raise RuntimeError("the connector holds no session token after login")
        # its idle keep-alive connections would count in a balanced process's share until
        # the gateway's idle timeout ends them; the logout opens a new one
        connection.rest.session_manager.close()
        yield token
    finally:
        connection.close()


@dataclass
class Archived:
    """What the gateway stored for the statements sent through it."""

    statements: int
    archive: bench.Archive
    spool_bytes: int


def spool_bytes(spool: Path) -> int:
    return sum(p.stat().st_size for p in spool.rglob("*") if p.is_file())


# --- report -------------------------------------------------------------------------------


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "absent"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    nginx = tool_version([nginx_binary() or "nginx", "-v"]).removeprefix("nginx version: ")
    wrk = tool_version(["wrk", "-v"]).split(" [")[0]
    return (
        f"{bench.source_version()}; {os.cpu_count()} vCPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, mitmproxy {importlib.metadata.version('mitmproxy')}, "
        f"{nginx}, {wrk}; load average {os.getloadavg()[0]:.2f} at start. wrk, nginx, both "
        "proxies, moto and the IdP share these CPUs."
    )


def verdict(met: bool, by: str = "") -> str:
    return "met" if met else f"**not met**{by}"


def table(levels: list[Level], gateway_processes: int = 1) -> str:
    gateway = gateway_label(gateway_processes)
    lines = [
        f"| connections | bare q/s | {gateway} q/s | ratio (rounds) | p50 added | {gateway} p99 "
        f"(bare p99) | {gateway} p99.9 (bare p99.9) | {gateway} CPU ms/statement (bare) | "
        "failed |",
        "| ---: | ---: | ---: | --- | ---: | --- | --- | --- | ---: |",
    ]
    for level in levels:
        ratios = level.round_ratios()
        spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        added = level.median(GATEWAY, "p50_ms") - level.median(BARE, "p50_ms")
        lines.append(
            f"| {level.connections} | {level.qps(BARE):.0f} | {level.qps(GATEWAY):.0f} | "
            f"{level.ratio():.2f}{spread} | {added:+.2f} ms | "
            f"{level.median(GATEWAY, 'p99_ms'):.1f} ms ({level.median(BARE, 'p99_ms'):.1f} ms) | "
            f"{level.median(GATEWAY, 'p999_ms'):.1f} ms ({level.median(BARE, 'p999_ms'):.1f} ms)"
            f" | {level.cpu_ms_per_statement(GATEWAY):.2f} "
            f"({level.cpu_ms_per_statement(BARE):.2f}) | {level.failures()} |"
        )
    return "\n".join(lines)


def targets_text(levels: list[Level], archived: Archived) -> list[str]:
    by_connections = {level.connections: level for level in levels}
    out = []
    for connections in (8, 32):
        if level := by_connections.get(connections):
            ratio = level.ratio()
            out.append(
                f"- throughput at {connections} connections >= {TARGET_SATURATION_RATIO}x bare: "
                f"{ratio:.2f}x, "
                + verdict(
                    ratio >= TARGET_SATURATION_RATIO, f" by {TARGET_SATURATION_RATIO - ratio:.2f}"
                )
            )
    if level := by_connections.get(1):
        added = level.median(GATEWAY, "p50_ms") - level.median(BARE, "p50_ms")
        out.append(
            f"- p50 added at 1 connection <= {TARGET_ADDED_P50_MS} ms: {added:+.2f} ms, "
            + verdict(added <= TARGET_ADDED_P50_MS, f" by {added - TARGET_ADDED_P50_MS:.2f} ms")
        )
    for connections in (1, 8):
        if level := by_connections.get(connections):
            over = level.median(GATEWAY, "p99_ms") - level.median(BARE, "p99_ms")
            out.append(
                f"- p99 at {connections} connection(s) <= bare p99 + {TARGET_ADDED_P99_MS:.0f} ms:"
                f" {over:+.1f} ms over bare, "
                + verdict(over <= TARGET_ADDED_P99_MS, f" by {over - TARGET_ADDED_P99_MS:.1f} ms")
            )
    ratio = archived.archive.ratio
    out.append(
        f"- compression >= {TARGET_COMPRESSION:.0f}x on this run's archive: {ratio:.1f}x, "
        + verdict(ratio >= TARGET_COMPRESSION)
    )
    out.append(
        "- recorder >= 50,000 records/s per core: `scripts/bench_recorder.py`; RSS with 32 large "
        "results and the 30-minute soak: `scripts/bench.py` (not measured here)"
    )
    return out


def processes_text(gateway_processes: int, balanced: bool) -> str:
    """What the report says about a gateway run as several processes (nothing for one)."""
    if gateway_processes == 1:
        return ""
    return (
        f" **The gateway ran as {gateway_processes} processes** sharing one port "
        "(`hoopgw_reuse_port`), each with its own spool; bare mitmdump as one. The kernel "
        "gives each wrk connection to one process"
        + (
            ", which keeps it only while it holds no more than the other and otherwise hands "
            f"it over (`{BALANCE_OPTION}`)"
            if balanced
            else " by a hash of its addresses, and the processes leave it there (`--kernel-spread`)"
        )
        + ", so at 1 connection one process did all the work. The gateway's CPU per "
        "statement is the sum over its processes."
    )


def longest_flush(level: Level, target: str) -> float | None:
    flushes = [max(run.disk_flushes_ms) for run in level.runs[target] if run.disk_flushes_ms]
    return max(flushes) if flushes else None


def disk_stall(levels: list[Level]) -> tuple[float, int] | None:
    """The longest flush of the probe during a gateway run, and its level, when it stalled."""
    longest = [
        (flush, level.connections)
        for level in levels
        if (flush := longest_flush(level, GATEWAY)) is not None
    ]
    worst = max(longest, default=None)
    return worst if worst is not None and worst[0] >= DISK_STALL_MS else None


def disk_text(levels: list[Level]) -> str:
    """The sentence giving the disk probe's longest flush per level, gateway and bare."""

    def by_level(target: str) -> str:
        return ", ".join(
            f"{flush:.1f} ms at {level.connections} conn"
            for level in levels
            if (flush := longest_flush(level, target)) is not None
        )

    gateway, bare = by_level(GATEWAY), by_level(BARE)
    if not gateway:
        return ""
    return (
        "The spool's disk, probed beside the proxies (scripts/disk_probe.py: 4 KiB and "
        "`fdatasync` at a fixed pace; a flush includes its wait for a CPU): the longest flush "
        f"during the gateway's runs {gateway}"
        + (f"; during bare mitmdump's {bare}" if bare else "")
        + "."
    )


def report(
    levels: list[Level],
    archived: Archived,
    args: argparse.Namespace,
    machine_text: str,
    load_at_start: float,
) -> str:
    failed = sum(level.failures() for level in levels)
    records = archived.archive.records
    workers = args.gateway_workers
    out = [f"Machine: {machine_text}", ""]
    if load_at_start > (os.cpu_count() or 1) / 2:
        out += [
            f"**The machine was busy (load average {load_at_start:.1f} at start on "
            f"{os.cpu_count()} vCPUs): these figures measure the other load as much as the "
            "proxies; do not compare them with a quiet run's.**",
            "",
        ]
    stall = disk_stall(levels)
    if stall is not None:
        out += [
            f"**The spool's disk stalled during the gateway's runs: a flush took {stall[0]:.0f} "
            f"ms at {stall[1]} connection(s) (scripts/disk_probe.py, beside the proxies). Each "
            "statement waits for its record's flush, and bare mitmdump writes nothing, so "
            "those rounds' tails measure the disk as much as the gateway.**",
            "",
        ]
    out += [
        f"Load: wrk, one thread, {args.rounds} round(s) of {args.duration:g} s per target and "
        "level, the targets in turns; each request a query-request with a unique requestId and "
        f"varying SQL; one in {args.arrow_every} asks for the 1,000-row Arrow answer "
        f"({len(canned_answers().rowset_base64) / 1024:.0f} KiB of base64), the rest a "
        "3-row JSON rowset. q/s summed over the rounds; latencies the median of the rounds' "
        "wrk percentiles; CPU the proxy's utime+stime (the gateway's helpers "
        "included) over the wrk runs per statement."
        + processes_text(workers, balanced(args))
        + (
            " **Bare mitmdump ran with the gateway's mitmproxy chain** (`--lean-bare`: "
            "scripts/lean_bare.py), the same mitmproxy chain as the gateway's: the gap is the "
            "gateway's own work, and the target lines below are not the issue's."
            if getattr(args, "lean_bare", False)
            else ""
        ),
        "",
        table(levels, workers),
        "",
        *(
            [
                "Each gateway process's share of the gateway's CPU time: "
                + ", ".join(
                    f"{level.connections} conn "
                    + "/".join(f"{share:.0%}" for share in level.cpu_shares(GATEWAY))
                    for level in levels
                )
                + "."
                + (f" {spreads}" if (spreads := level_spreads(levels, balanced(args))) else ""),
                "",
            ]
            if workers > 1
            else []
        ),
        *([disk, ""] if (disk := disk_text(levels)) else []),
        f"Recorded: {records:,} records in the archive (moto S3), "
        f"{archived.archive.statements:,} of them statements, for "
        f"{archived.statements:,} statements through the gateway, "
        f"{archived.archive.raw_bytes / 1e6:.1f} MB of JSON lines stored as "
        f"{archived.archive.stored_bytes / 1e6:.2f} MB; local spool"
        + (f"s ({workers})" if workers > 1 else "")
        + f" at the end {archived.spool_bytes / 1e6:.1f} MB."
        + (
            " **Fewer statements stored than sent: recording was skipped.**"
            if archived.archive.statements < archived.statements
            else ""
        ),
        "",
        f"Failed answers (not HTTP 200 with success true, socket errors, timeouts): {failed}"
        + (" **: this run is flagged, its figures are not comparable.**" if failed else "."),
        "",
        "Targets (issue 22)" + (f", {gateway_label(workers)}:" if workers > 1 else ":"),
        "",
        *targets_text(levels, archived),
    ]
    return "\n".join(out)


def start_gateways(
    home: Path,
    upstream: str,
    moto: str,
    provider: stack.OidcProvider,
    workers: int,
    options: dict[str, str],
    hook_timing: Path | None,
    procs: list[stack.Proc],
    probe: dict[str, Any] | None = None,
    balance: bool = True,
) -> list[stack.Gateway]:
    """The full gateway as `workers` processes on one port (one token key, a spool each),
    balancing their connections unless `balance` is off; each joins `procs` once ready."""
    if workers > 1:
        options = {**options, **SHARED_PORT_OPTIONS}
        if balance:
            options[BALANCE_OPTION] = str(home / "balance")
    port, token_key = stack.free_port(), new_token_key()
    gateways = []
    for number in range(1, workers + 1):
        gateway = bench.start_full_gateway(
            home,
            upstream,
            moto,
            provider,
            policy=POLICY,
            gateway_options=options,
            hook_timing=hook_timing,
            name="gateway" if workers == 1 else f"gateway-{number}",
            port=port,
            token_key=token_key,
            **(probe or {}),
        )
        procs.append(gateway.proc)
        gateways.append(gateway)
    return gateways


def loop_cpu_files(directory: Path | None) -> dict[str, Path]:
    """Where scripts/loop_cpu.py writes each proxy's totals (`--loop-cpu DIR`)."""
    if directory is None:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    return {BARE: directory / "bare.json", GATEWAY: directory / "gateway.json"}


def loop_cpu_probe(files: dict[str, Path], target: str) -> dict[str, Any]:
    """The extra script and environment that load scripts/loop_cpu.py into `target`."""
    if target not in files:
        return {}
    return {
        "extra_scripts": [bench.REPO_ROOT / "scripts" / "loop_cpu.py"],
        "extra_env": {loop_cpu.ENVIRONMENT: str(files[target].resolve())},
    }


def bare_scripts(lean: bool, probe: dict[str, Any]) -> dict[str, Any]:
    """bare mitmdump's extra scripts: the gateway's chain first with `--lean-bare`, then a
    probe."""
    chain = [LEAN_BARE_SCRIPT] if lean else []
    return {**probe, "extra_scripts": [*chain, *probe.get("extra_scripts", [])]}


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level, targets in turns")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,8,32", help="levels of wrk connections")
    parser.add_argument(
        "--arrow-every", type=int, default=10, help="one statement in N gets the Arrow answer"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target")
    parser.add_argument(
        "--warmup-connections",
        type=int,
        default=8,
        help="wrk connections of the warm-up (1 keeps --hook-timing's samples of a 1-connection "
        "run free of concurrent ones)",
    )
    parser.add_argument(
        "--gateway-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra gateway option (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="after the levels, one more gateway run at 8 connections under py-spy (--gil), "
        "raw stacks in FILE and a summary on stderr",
    )
    parser.add_argument(
        "--hook-timing",
        type=Path,
        metavar="FILE",
        help="load scripts/hook_timing.py into the gateway: wall time per hook as JSON in FILE "
        "(the clocks cost a little: take the table from a run without it)",
    )
    parser.add_argument(
        "--loop-cpu",
        type=Path,
        metavar="DIR",
        help="load scripts/loop_cpu.py into both proxies (its totals in DIR) and print the "
        "loop thread's CPU per statement of each, side by side, by what ran on the loop",
    )
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        metavar="N",
        help="run the gateway as N processes sharing one port (hoopgw_reuse_port), "
        "each with its own spool, keeping even shares of the connections "
        f"({BALANCE_OPTION}); CPU per statement sums them",
    )
    parser.add_argument(
        "--kernel-spread",
        action="store_true",
        help=f"with --gateway-workers: no {BALANCE_OPTION}, the kernel's hash alone spreads "
        "the connections over the processes",
    )
    parser.add_argument(
        "--lean-bare",
        action="store_true",
        help="load the gateway's mitmproxy chain (scripts/lean_bare.py) into bare mitmdump, "
        "so that the gap is the gateway's own work",
    )
    parser.add_argument(
        "--disk-probe",
        type=float,
        default=DISK_PROBE_INTERVAL,
        metavar="SECONDS",
        help="flush 4 KiB on the spool's disk every SECONDS beside the proxies "
        "(scripts/disk_probe.py) and report the longest flush of each run; 0 turns it off",
    )
    parser.add_argument("--write", action="store_true", help="update docs/performance.md")
    args = parser.parse_args(argv)
    if args.lean_bare and args.write:
        parser.error("--write compares with bare mitmdump as shipped: drop --lean-bare")
    if args.gateway_workers < 1:
        parser.error("--gateway-workers must be at least 1")
    if args.kernel_spread and args.gateway_workers == 1:
        parser.error("--kernel-spread needs --gateway-workers 2 or more")
    if args.gateway_workers > 1 and (args.profile or args.hook_timing or args.loop_cpu):
        parser.error(
            "--profile, --hook-timing and --loop-cpu follow one process: use --gateway-workers 1"
        )
    levels = [int(c) for c in args.connections.split(",") if c]
    if nginx_binary() is None or shutil.which("wrk") is None:
        raise SystemExit(f"the saturation bench needs nginx and wrk: {INSTALL_HINT}")
    machine_text = machine()
    load_at_start = os.getloadavg()[0]
    home = Path(tempfile.mkdtemp(prefix="hoopgw-bench-saturation-"))
    log = home / "wrk.log"
    procs: list[stack.Proc] = []
    print(f"working in {home}", file=sys.stderr)
    try:
        upstream = start_canned_upstream(home / "nginx")
        procs.append(upstream.proc)
        s3, moto, provider = bench.start_store_and_idp(home, procs)
        loop_files = loop_cpu_files(args.loop_cpu)
        bare, bare_port = bench.start_bare_mitmdump(
            home, upstream.url, **bare_scripts(args.lean_bare, loop_cpu_probe(loop_files, BARE))
        )
        procs.append(bare)
        gateways = start_gateways(
            home,
            upstream.url,
            moto,
            provider,
            args.gateway_workers,
            dict(option.split("=", 1) for option in args.gateway_set),
            args.hook_timing,
            procs,
            loop_cpu_probe(loop_files, GATEWAY),
            balance=not args.kernel_spread,
        )
        disk_log = start_disk_probe(home, args.disk_probe, procs)
        port = gateways[0].port
        id_token = provider.mint("bench-agent", ["agents"], email="bench-agent@example.com")
        with connector_session(port, id_token) as gateway_token:
            bare_script, gateway_script = home / "bare.lua", home / "gateway.lua"
            bare_script.write_text(wrk_script(UPSTREAM_SESSION_TOKEN, args.arrow_every))
            gateway_script.write_text(wrk_script(gateway_token, args.arrow_every))
            targets = [
                Target(BARE, bare_port, Processes.of(bare), bare_script, loop_files.get(BARE)),
                Target(
                    GATEWAY,
                    port,
                    Processes.of(*(gateway.proc for gateway in gateways)),
                    gateway_script,
                    loop_files.get(GATEWAY),
                ),
            ]
            warm = 0
            for target in targets:
                result = run_wrk(
                    target.port, target.script, args.warmup_connections, args.warmup, log
                )
                if result.failures:
                    raise SystemExit(
                        f"{target.name} failed {result.failures} of {result.requests} warm-up "
                        f"requests; see {log} and the logs in {home}"
                    )
                warm += result.requests if target.name == GATEWAY else 0
            results = measure_levels(targets, levels, args.rounds, args.duration, log, disk_log)
            if args.profile:
                with bench.py_spy(targets[1].processes.probes[0].pid, args.profile):
                    profiled = run_wrk(targets[1].port, gateway_script, 8, args.duration, log)
                warm += profiled.requests
                print(bench.profile_summary(args.profile), file=sys.stderr)
        statements = warm + 1 + sum(level.requests(GATEWAY) for level in results)
        archive = bench.wait_sessions_archived(s3, 1, timeout=300, statements=statements)
        archived = Archived(
            statements,
            archive,
            sum(spool_bytes(gateway.workdir / "spool") for gateway in gateways),
        )
    finally:
        for proc in reversed(procs):
            proc.stop()
    if args.hook_timing:
        print(bench.hook_timing_table(args.hook_timing), file=sys.stderr)
    if args.loop_cpu:
        print(loop_cpu_table(results), file=sys.stderr)
    text = report(results, archived, args, machine_text, load_at_start)
    print(text)
    if args.write:
        bench.write_doc(text, section="bench_saturation.py")
    failed = sum(level.failures() for level in results) or archived.archive.statements < statements
    return 1 if failed else 0


if __name__ == "__main__":
    bench.unwind_on_sigterm()
    sys.exit(main())
