"""Bare mitmdump with the gateway's mitmproxy chain, for benchmarks.

The gateway takes seventeen of mitmproxy's own addons out of its chain
(addons/lockdown.py), groups the rest (addons/chain.py), turns off
mitmproxy's check of each message's field types and lets a finished HTTP
stream be freed without the cyclic collector (addons/startup.py,
`skip_message_typecheck`, `free_finished_streams`); each is work less on
every statement. Loaded into bare mitmdump (`scripts/bench_saturation.py
--lean-bare`), this gives bare the same mitmproxy, so the gap that is left is
the gateway's own work.
"""

from __future__ import annotations

from hoopgw.addons.chain import ChainGroups
from hoopgw.addons.lockdown import MitmproxyLockdown
from hoopgw.addons.startup import free_finished_streams, skip_message_typecheck

skip_message_typecheck()
free_finished_streams()
addons = [MitmproxyLockdown(), ChainGroups()]
