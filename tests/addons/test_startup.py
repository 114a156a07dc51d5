"""Start-up behaviour: the collector's walks leave out what the gateway loaded at start."""

from __future__ import annotations

import gc

from hoopgw.addons.startup import QuietCollector


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
