"""Bare mitmdump with the gateway's mitmproxy chain, for benchmarks.

The gateway takes seventeen of mitmproxy's own addons out of its chain
(addons/lockdown.py) and groups the rest (addons/chain.py), and each addon out
of the chain is a step less on every event mitmproxy dispatches. Loaded into
bare mitmdump (`scripts/bench_saturation.py --lean-bare`), this gives bare the
same chain, so the gap that is left is the gateway's own work.
"""

from __future__ import annotations

from hoopgw.addons.chain import ChainGroups
from hoopgw.addons.lockdown import MitmproxyLockdown

addons = [MitmproxyLockdown(), ChainGroups()]
