"""A probe of a disk's flush latency, run beside the saturation bench.

The gateway makes each statement's record durable (a write and `fdatasync` of
its spool's WAL) before the statement leaves; bare mitmdump writes nothing. So
a flush of the spool's disk that stalls stalls statements of the gateway alone,
and on a shared VM the disk's flushes stall now and then (docs/performance.md,
"Fifteenth round"). This probe tells such a run from one whose tail is the
gateway's own: every `--interval` seconds it writes 4 KiB into a file it
prepared (zeros, synced, so a flush carries no metadata, as the WAL's does not)
and flushes it with `fdatasync`, then appends the flush's start (epoch seconds)
and its duration in milliseconds to LOG. A duration includes any wait for a CPU
after the disk answered, a millisecond or two on a busy machine; a stalled disk
shows as tens to hundreds.

    python -m scripts.disk_probe DIR LOG [--interval 0.05]

It runs until it is signalled. At 20 flushes a second of 4 KiB it adds little
to the gateway's 300 or more.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Final

BLOCK: Final = 4096
FILE_BYTES: Final = 4 << 20
"""The prepared file; the probe writes it round and round."""


def prepare(directory: Path) -> int:
    """A file of zeros, synced with its directory entry: later writes change no metadata."""
    path = directory / "disk-probe.data"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.write(fd, bytes(FILE_BYTES))
    os.fsync(fd)
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return fd


def probe(directory: Path, log: Path, interval: float) -> None:
    fd = prepare(directory)
    block = os.urandom(BLOCK)
    offset = 0
    with log.open("a", buffering=1) as out:
        out.write("ready\n")
        while True:
            started = time.time()
            clock = time.perf_counter()
            os.pwrite(fd, block, offset)
            os.fdatasync(fd)
            out.write(f"{started:.6f} {(time.perf_counter() - clock) * 1000:.3f}\n")
            offset = (offset + BLOCK) % FILE_BYTES
            time.sleep(interval)  # the probe's pace, not a wait for anything


def read_flushes(log: Path, start: float, end: float) -> list[float]:
    """The durations (ms) of the flushes the probe started between `start` and `end`."""
    flushes = []
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return flushes
    for line in lines:
        fields = line.split()
        if len(fields) != 2:
            continue
        if start <= float(fields[0]) <= end:
            flushes.append(float(fields[1]))
    return flushes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a directory on the disk to probe")
    parser.add_argument("log", type=Path, help="where each flush's start and duration go")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between flushes")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        probe(args.directory, args.log, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
