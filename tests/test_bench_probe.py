"""The benches' process probe counts a process's children (the gateway's roll-up helper),
and a bench stopped while a component starts leaves no process behind.

Not a benchmark: nothing here is timed. A child that burns CPU and holds memory
must show in its parent's probe while it runs, and its CPU must stay counted
after it has exited and been reaped (through the parent's cutime/cstime), so a
bench's CPU per statement and RSS include the helper process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import bench
from tests import stack

CHILD_CPU = 0.3
CHILD_MB = 64

# Burns CHILD_CPU seconds of CPU and holds CHILD_MB touched, says so, then waits for stdin to close.
CHILD = f"""
import sys, time
held = bytearray({CHILD_MB} * 1024 * 1024)
for at in range(0, len(held), 4096):
    held[at] = 1
while time.process_time() < {CHILD_CPU}:
    pass
print("ready", flush=True)
sys.stdin.read()
"""


def test_the_probe_counts_a_child_s_cpu_while_it_runs_and_after_it_is_reaped() -> None:
    probe = bench.ProcessProbe(os.getpid())
    cpu_before, rss_before, own_before = probe.cpu_seconds(), probe.rss_mb(), time.process_time()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        own = time.process_time() - own_before
        running = probe.cpu_seconds() - cpu_before
        assert running >= CHILD_CPU + own - 0.02  # clock ticks are 10 ms
        assert probe.rss_mb() - rss_before >= CHILD_MB * 0.8
    finally:
        child.communicate("")
    assert child.returncode == 0
    assert probe.cpu_seconds() - cpu_before >= CHILD_CPU - 0.02


def test_the_probe_of_a_process_that_has_gone_reads_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    probe = bench.ProcessProbe(child.pid)
    assert probe.cpu_seconds() == 0
    assert probe.rss_mb() == 0


def test_a_component_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    """A bench interrupted (or a start timed out) while a component starts leaves no process."""
    sleeper = stack.Proc(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "sleeper.log"
    ).start()
    with pytest.raises(stack.StartupError, match="sleeper to be ready"):
        sleeper.wait_ready(lambda: False, timeout=0.3)
    assert not sleeper.alive()


def test_an_interrupted_wait_for_a_component_stops_it(tmp_path: Path) -> None:
    sleeper = stack.Proc(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "sleeper.log"
    ).start()

    def interrupted() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sleeper.wait_ready(interrupted)
    assert not sleeper.alive()
