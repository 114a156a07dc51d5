"""scripts/disk_probe.py flushes a prepared file at its pace and logs each flush.

Not a benchmark: nothing here is timed. The probe runs as the saturation bench
runs it, a child process on a directory, and must log flushes the bench can
read back by time window, without growing its file (a flush that carried the
file's size would measure the journal, not the disk).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from scripts import disk_probe
from tests import stack


def test_the_probe_logs_flushes_of_a_file_that_does_not_grow(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    started = time.time()
    probe = stack.Proc(
        "disk-probe",
        [sys.executable, "-m", "scripts.disk_probe", str(tmp_path), str(log), "--interval", "0"],
        tmp_path / "probe.out",
        cwd=Path(disk_probe.__file__).resolve().parent.parent,
    ).start()
    try:
        stack.wait_until(
            lambda: len(disk_probe.read_flushes(log, started, time.time())) >= 20, 30, "flushes"
        )
    finally:
        assert probe.process is not None
        probe.process.send_signal(signal.SIGTERM)
        assert probe.process.wait(timeout=10) == 0  # a signal ends it cleanly
    flushes = disk_probe.read_flushes(log, started, time.time())
    assert len(flushes) >= 20 and all(flush > 0 for flush in flushes)
    assert (tmp_path / "disk-probe.data").stat().st_size == disk_probe.FILE_BYTES
    assert log.read_text().startswith("ready\n")


def test_flushes_are_read_back_by_their_start(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    log.write_text("ready\n100.000000 0.300\n101.500000 250.000\n103.000000 0.400\n")
    assert disk_probe.read_flushes(log, 101.0, 102.0) == [250.0]
    assert disk_probe.read_flushes(log, 99.0, 104.0) == [0.3, 250.0, 0.4]
    assert disk_probe.read_flushes(tmp_path / "absent.log", 0.0, 1e12) == []
