"""The gateway pins glibc's mmap threshold (addons/startup.py): large freed buffers
must go back to the system instead of staying as holes in the C heap."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

# Frees one mmapped 4 MiB block (which makes glibc raise its threshold to 4 MiB),
# then allocates 32 MiB in 512 KiB buffers with small long-lived blocks between them,
# frees the buffers and prints how many MiB of them the process still holds.
HELD_AFTER_FREE = """
import os, sys
from hoopgw.addons.startup import pin_malloc_mmap_threshold

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

print(pin_malloc_mmap_threshold() if sys.argv[1] == "pin" else None)
big = b"x" * (4 << 20)
del big
before = rss()
buffers, kept = [], []
for _ in range(64):
    buffers.append(b"x" * (512 << 10))
    kept.append(bytes(2048))
del buffers
print((rss() - before) >> 20)
"""

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not Path("/proc/self/statm").exists(),
    reason="the threshold is glibc's",
)


def held_after_free(mode: str, **env: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    completed = subprocess.run(
        [sys.executable, "-c", HELD_AFTER_FREE, mode],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pinned, held = completed.stdout.split()
    return pinned, int(held)


@glibc_only
def test_pinned_threshold_returns_freed_buffers_to_the_system() -> None:
    pinned, held = held_after_free("default")
    assert pinned == "None" and held >= 16  # the heap keeps the holes
    pinned, held = held_after_free("pin")
    assert pinned == "True" and held <= 2


@glibc_only
def test_an_operators_own_threshold_is_left_alone() -> None:
    pinned, _ = held_after_free("pin", MALLOC_MMAP_THRESHOLD_="1048576")
    assert pinned == "False"
