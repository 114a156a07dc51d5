"""Instructions per statement on the event loop's thread, bare mitmdump and the gateway, under
callgrind: a count that does not move with the machine's load.

On this shared VM a proxy's CPU per statement moves by 30% between runs, so a
change worth less than about 0.3 ms cannot be read from wrk's figures
(docs/performance.md). valgrind's callgrind counts the instructions each thread
executes, the same for the same code and input however busy the machine is.
This bench starts each target under `valgrind --tool=callgrind` in front of the
saturation bench's canned nginx upstream (the gateway as
scripts/bench_saturation.py starts it: OIDC, sealed tokens, guardrails,
recording to moto's S3), warms it up with wrk at one connection, zeroes the
counters, drives it for `--seconds`, dumps them and divides by the statements
wrk completed:

- `bare`: `mitmdump --mode reverse`, no addons;
- `lean-bare`: the same with the gateway's lockdown (scripts/lean_bare.py), the
  mitmproxy chain the gateway runs with;
- `gateway`: `mitmdump -s addons/gateway.py` with every feature on.

Instructions are not time: the same count runs slower when the caches miss
more, which callgrind does not see (the twelfth round found mitmproxy's own
steps 27% slower in the gateway's process for the same instructions). Use it
to tell whether a change removed work, and wrk's figures for what that buys.
`--by-function` runs the targets with Python's perf trampolines
(PYTHONPERFSUPPORT=1, which adds instructions of its own) and prints the
inclusive count of mitmproxy's dispatch functions and the gateway's entry
points, then the project's own functions with the largest counts, wherever
mitmproxy calls them from: where the gateway's own work per statement goes
(recursive functions such as `traverse` are counted once per level).

    apt-get install valgrind nginx-light wrk
    .venv/bin/python -m scripts.bench_instructions                      # bare, gateway
    .venv/bin/python -m scripts.bench_instructions --targets bare,lean-bare,gateway
    .venv/bin/python -m scripts.bench_instructions --by-function

Slow (valgrind runs Python about 50 times slower: several minutes), not timed,
not part of CI.
"""

from __future__ import annotations

import argparse
import bisect
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts import bench, bench_saturation
from tests import stack

TARGETS = ("bare", "lean-bare", "gateway")
# mitmproxy's per-event dispatch, its protocol work, and the gateway's own entry points
FUNCTIONS = (
    "AddonManager.handle_lifecycle",
    "AddonManager.trigger_event",
    "AddonManager.invoke_addon",
    "AddonManager._iter_hooks",
    "traverse",
    "contextmanager.<locals>.helper",
    "Layer.handle_event",
    "_dispatcher.<locals>.dispatch_guarded",
    "_dispatcher.<locals>.finish_guarded",
    "Recording._record_answers",
    "Spool._commit_on_loop",
)
INSTALL_HINT = "apt-get install valgrind nginx-light wrk"
PROJECT = Path(__file__).resolve().parent.parent
OWN_FUNCTIONS_SHOWN = 30
"""The project's own functions listed with `--by-function`, the largest inclusive counts."""


@dataclass
class Counted:
    target: str
    statements: int
    loop_thread: int
    all_threads: int
    functions: dict[str, float] = field(default_factory=dict)
    own: dict[str, float] = field(default_factory=dict)
    """The project's own functions (`own_functions`), with `--by-function`."""

    def per_statement(self, count: float) -> float:
        return count / max(self.statements, 1)


def callgrind(out_dir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        "--dump-instr=no",
        f"--callgrind-out-file={out_dir / 'callgrind.%p'}",
    ]


def summary(path: Path) -> int:
    for line in path.open():
        if line.startswith("summary:"):
            return int(line.split()[1])
    return 0


def inclusive_counts(dump: Path, perf_map: Path) -> dict[str, float]:
    """Inclusive instructions of every Python function that made calls, keyed by its perf
    map name (`qualname:file`), from callgrind's call arcs out of Python's perf trampolines
    (one per code object, named in `perf_map`)."""
    symbols: list[tuple[int, int, str]] = []
    for line in perf_map.read_text().splitlines():
        start, size, name = line.split(" ", 2)
        symbols.append((int(start, 16), int(size, 16), name))
    symbols.sort()
    starts = [start for start, _, _ in symbols]
    function_names: dict[str, str] = {}
    arcs: dict[str, int] = defaultdict(int)
    caller = ""
    pending = False
    define = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    with dump.open() as lines:
        for line in lines:
            head = line[:1]
            if head.isdigit() or head in "+-*":
                if pending:
                    arcs[caller] += int(line.split()[-1])
                    pending = False
                continue
            if match := define.match(line.rstrip("\n")):
                kind, ident, name = match.groups()
                if name:
                    function_names[ident] = name
                if kind == "fn":
                    caller = ident
            elif line.startswith("calls="):
                pending = True
    found: dict[str, float] = defaultdict(float)
    for ident, cost in arcs.items():
        name = function_names.get(ident, "")
        if not name.startswith("0x"):
            continue
        address = int(name.split("'")[0], 16)
        index = bisect.bisect_right(starts, address) - 1
        if index < 0 or address >= symbols[index][0] + symbols[index][1]:
            continue
        found[symbols[index][2].removeprefix("py::")] += cost
    return dict(found)


def by_qualname(counts: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
    """The counts of the functions in `names` (qualnames, whatever their file)."""
    found: dict[str, float] = defaultdict(float)
    for key, cost in counts.items():
        qualname = key.split(":", 1)[0]
        if qualname in names:
            found[qualname] += cost
    return dict(found)


def inclusive_by_function(dump: Path, perf_map: Path, names: tuple[str, ...]) -> dict[str, float]:
    """Inclusive instructions of each Python function in `names` (qualnames)."""
    return by_qualname(inclusive_counts(dump, perf_map), names)


def own_functions(counts: dict[str, float], root: Path = PROJECT) -> dict[str, float]:
    """The counts of functions whose code is the project's own (under `root`, outside its
    hidden directories such as the virtualenv), keyed `qualname (relative/path.py)`."""
    own: dict[str, float] = defaultdict(float)
    for key, cost in counts.items():
        qualname, _, file = key.partition(":")
        path = Path(file)
        if not path.is_relative_to(root):
            continue
        relative = path.relative_to(root)
        if relative.parts[0].startswith("."):
            continue
        own[f"{qualname} ({relative})"] += cost
    return dict(own)


def count(
    target: str, proc: stack.Proc, port: int, script: Path, args: argparse.Namespace, home: Path
) -> Counted:
    assert proc.process is not None
    pid = proc.process.pid
    log = home / "wrk.log"
    bench_saturation.run_wrk(port, script, 1, args.warmup, log)
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    result = bench_saturation.run_wrk(port, script, 1, args.seconds, log)
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    if result.failures:
        raise SystemExit(f"{target}: {result.failures} failed answers; see {log}")
    out_dir = home / target
    dumps = sorted(out_dir.glob(f"callgrind.{pid}.1-*"))
    loop = next((dump for dump in dumps if dump.name.endswith("-01")), None)
    if loop is None:
        raise SystemExit(f"{target}: callgrind wrote no dump into {out_dir}")
    counted = Counted(target, result.requests, summary(loop), sum(summary(d) for d in dumps))
    if args.by_function:
        perf_map = Path(f"/tmp/perf-{pid}.map")
        if perf_map.exists():
            counts = inclusive_counts(loop, perf_map)
            counted.functions = by_qualname(counts, FUNCTIONS)
            counted.own = own_functions(counts)
    return counted


def start(
    target: str,
    home: Path,
    upstream: str,
    stores: tuple[Any, str, stack.OidcProvider] | None,
    env: dict[str, str],
    procs: list[stack.Proc],
) -> tuple[stack.Proc, int]:
    out_dir = home / target
    out_dir.mkdir(parents=True, exist_ok=True)
    under = callgrind(out_dir)
    if target == "gateway":
        assert stores is not None
        _, moto, provider = stores
        gateway = bench.start_full_gateway(
            home, upstream, moto, provider, extra_env=env, run_under=under, timeout=900
        )
        procs.append(gateway.proc)
        return gateway.proc, gateway.port
    extra = [bench_saturation.LEAN_BARE_SCRIPT] if target == "lean-bare" else []
    proc, port = bench.start_bare_mitmdump(
        out_dir, upstream, extra, extra_env=env, run_under=under, timeout=900
    )
    procs.append(proc)
    return proc, port


def table(results: list[Counted]) -> str:
    bare = next((r for r in results if r.target == "bare"), None)
    lines = [
        "| target | statements | instructions per statement, loop thread | all threads | "
        "loop thread vs bare |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        versus = (
            f"{r.loop_thread / r.statements / (bare.loop_thread / bare.statements):.2f}x"
            if bare and r.statements and bare.statements
            else ""
        )
        lines.append(
            f"| {r.target} | {r.statements} | {r.per_statement(r.loop_thread):,.0f} | "
            f"{r.per_statement(r.all_threads):,.0f} | {versus} |"
        )
    if any(r.functions for r in results):
        lines += [
            "",
            "| function (inclusive, per statement) | "
            + " | ".join(r.target for r in results)
            + " |",
        ]
        lines.append("| --- |" + " ---: |" * len(results))
        for name in FUNCTIONS:
            cells = [f"{r.per_statement(r.functions.get(name, 0.0)):,.0f}" for r in results]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    owners = [r for r in results if r.own]
    if owners:
        biggest = max(owners, key=lambda r: sum(r.own.values()))
        shown = sorted(biggest.own, key=lambda name: -biggest.own[name])[:OWN_FUNCTIONS_SHOWN]
        lines += [
            "",
            f"| the project's own functions, the {len(shown)} largest (inclusive, per "
            "statement; a caller includes its callees) | "
            + " | ".join(r.target for r in owners)
            + " |",
            "| --- |" + " ---: |" * len(owners),
        ]
        for name in shown:
            cells = [f"{r.per_statement(r.own.get(name, 0.0)):,.0f}" for r in owners]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="bare,gateway", help=f"of {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=float, default=40.0, help="counted wrk run per target")
    parser.add_argument("--warmup", type=float, default=10.0, help="wrk warm-up per target")
    parser.add_argument(
        "--by-function",
        action="store_true",
        help="Python's perf trampolines on, and mitmproxy's dispatch functions counted",
    )
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    for tool in ("valgrind", "callgrind_control"):  # nginx and wrk: their starters say
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: {INSTALL_HINT}")
    home = Path(tempfile.mkdtemp(prefix="hoopgw-bench-instructions-"))
    print(f"working in {home}", file=sys.stderr)
    env = {"PYTHONPERFSUPPORT": "1"} if args.by_function else {}
    procs: list[stack.Proc] = []
    results: list[Counted] = []
    try:
        upstream = bench_saturation.start_canned_upstream(home / "nginx")
        procs.append(upstream.proc)
        stores = bench.start_store_and_idp(home, procs) if "gateway" in targets else None
        started = {t: start(t, home, upstream.url, stores, env, procs) for t in targets}
        for target in targets:
            proc, port = started[target]
            script = home / f"{target}.lua"
            if target == "gateway":
                assert stores is not None
                id_token = stores[2].mint("bench-agent", ["agents"], email="bench@example.com")
                with bench_saturation.connector_session(port, id_token) as token:
                    script.write_text(bench_saturation.wrk_script(token, 10))
                    results.append(count(target, proc, port, script, args, home))
            else:
                script.write_text(
                    bench_saturation.wrk_script(bench_saturation.UPSTREAM_SESSION_TOKEN, 10)
                )
                results.append(count(target, proc, port, script, args, home))
            print(f"  {target}: {results[-1].statements} statements counted", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            proc.stop()
    print(table(results))
    return 0


if __name__ == "__main__":
    bench.unwind_on_sigterm()
    sys.exit(main())
