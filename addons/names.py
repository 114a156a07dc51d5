"""The names addons mark a flow with, shared by the addons and `FailClosed`.

A required addon adds its name to `state.passed` once it has done its work;
`FailClosed` refuses a request still missing one (addons/failclosed.py). Both
sides use these constants, and tests/test_failclosed.py checks that the names
gateway.py requires are exactly the names the addons mark.
"""

from __future__ import annotations

from typing import Final

TRAFFIC: Final = "traffic"
"""Not a mark: what FailClosed names when the flow was never classified."""
TRANSPORT: Final = "transport"
AUTHENTICATION: Final = "authentication"
ATTRIBUTION: Final = "attribution"
QUERY_IDS: Final = "query_ids"
GUARDRAILS: Final = "guardrails"
RECORDING: Final = "recording"
APPROVAL: Final = "approval"
