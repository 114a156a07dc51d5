"""Bare mitmdump with the gateway's lockdown only (addons/lockdown.py), for benchmarks.

The gateway takes some seventeen of mitmproxy's own addons out of its chain,
and each one out is a step less on every event mitmproxy dispatches. Loaded
into bare mitmdump (`scripts/bench_saturation.py --lean-bare`), this gives
bare the same chain, so the gap that is left is the gateway's own work.
"""

from __future__ import annotations

from hoopgw.addons.lockdown import MitmproxyLockdown

addons = [MitmproxyLockdown()]
