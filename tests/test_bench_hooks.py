"""The hook-path micro-benchmark runs the real addon list end to end and prints its table.

Not a benchmark: nothing here is timed. The script runs in its own process
(it configures the module-level addons of addons/gateway.py and freezes the
collector, as the gateway does), and it stops with an error when a statement
is not answered with Snowflake's success, so a table means every statement
went through every hook, the recorder included.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_bench_drives_statements_through_every_hook_and_reports_per_addon() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench_hooks",
            *("--statements", "20", "--rounds", "2", "--warmup", "5", "--arrow-every", "4"),
            "--by-addon",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"best round's mean CPU per statement: \d+ us", run.stdout)
    hooks = dict(re.findall(r"^(\w+\.\w+)\s+([\d.]+)\s+[\d.]+$", run.stdout, re.MULTILINE))
    for hook in (
        "SnowflakeTraffic.request",
        "Authentication.request",
        "Guardrails.request",
        "Recording.request",
        "Recording._record_answers",
        "QueryIds.response",
    ):
        assert hook in hooks, run.stdout
