"""Start-up behaviour: the collector's walks leave out what the gateway loaded at start, and
the event loop waits less behind other threads for the GIL."""

from __future__ import annotations

import gc
import sys

import pytest

from hoopgw.addons.startup import GIL_SWITCH_INTERVAL, QuietCollector


def test_running_freezes_the_start_up_heap_out_of_full_collections() -> None:
    loaded_at_start = [[index] for index in range(10_000)]  # tracked containers
    gc.collect()
    before, frozen_before = len(gc.get_objects(generation=2)), gc.get_freeze_count()
    try:
        QuietCollector().running()
        assert gc.get_freeze_count() >= frozen_before + len(loaded_at_start)
        gc.collect()
        # a full collection now walks only what was made after start
        assert len(gc.get_objects(generation=2)) < before - len(loaded_at_start)
    finally:
        gc.unfreeze()


def test_running_shortens_the_gil_switch_interval_for_the_event_loop() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # Python's default
        QuietCollector().running()
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(before)
        gc.unfreeze()
