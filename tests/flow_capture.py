"""A test-only mitmproxy script: writes each flow, as mitmproxy holds it once the gateway's
hooks have run, to the file named by $HOOPGW_TEST_FLOWS.

The gateway refuses mitmproxy's `save_stream_file` (addons/lockdown.py: it writes
flows unredacted); tests that render live flows as mitmweb would load this after
addons/gateway.py instead.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from mitmproxy import http, io

PATH_ENV = "HOOPGW_TEST_FLOWS"


class FlowCapture:
    def __init__(self) -> None:
        self._file: BinaryIO | None = None
        self._writer: io.FlowWriter | None = None

    def running(self) -> None:
        self._file = open(os.environ[PATH_ENV], "wb")  # noqa: SIM115  (closed in done)
        self._writer = io.FlowWriter(self._file)

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def _write(self, flow: http.HTTPFlow) -> None:
        if self._writer is not None and self._file is not None:
            self._writer.add(flow)
            self._file.flush()

    def done(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


addons = [FlowCapture()]
