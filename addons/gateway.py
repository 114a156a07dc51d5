"""hoopgw's mitmproxy entry point.

    mitmdump -s addons/gateway.py --mode reverse:https://ACCOUNT.snowflakecomputing.com@8443

This module only builds the addon list; each concern lives in the module named
after it, and the order below is the order of the hooks (see addons/flowstate.py).
"""

from __future__ import annotations

import os
import sys

_ADDONS_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(_ADDONS_DIR)
# mitmproxy's script loader leaves the script's folder on sys.path, where our
# module names (snowflake.py, ...) would shadow real packages such as the
# Snowflake connector. Import our modules as the `addons` package instead.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _ADDONS_DIR]
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from addons.authentication import Authentication  # noqa: E402
from addons.contentview import snowflake_view  # noqa: E402, F401  (registers the view)
from addons.failclosed import FailClosed, guarded  # noqa: E402
from addons.guardrails import Guardrails  # noqa: E402
from addons.inspection import Inspection  # noqa: E402
from addons.recording import Recording  # noqa: E402
from addons.startup import (  # noqa: E402
    ReadyAnnouncer,
    one_line_option_errors,
    pin_malloc_mmap_threshold,
)
from addons.traffic import SnowflakeTraffic  # noqa: E402

pin_malloc_mmap_threshold()

addons = [
    one_line_option_errors(guarded(addon))
    for addon in (
        SnowflakeTraffic(),
        Authentication(),
        Guardrails(),
        Recording(),
        Inspection(),
        FailClosed(required=("authentication", "guardrails", "recording")),
        ReadyAnnouncer(),
    )
]
