"""A mitmdump script for tests: `GET /gc` answers with the objects the cyclic collector
found unreachable since the last `/gc`, so a test can count what each flow leaves.

The collector's automatic passes are off while it is loaded, so that nothing is freed
between two `/gc` requests but by reference counting.
"""

from __future__ import annotations

import gc

from mitmproxy import http

PATH = "/gc"


class CyclicGarbage:
    def running(self) -> None:
        gc.collect()
        gc.disable()

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path == PATH:
            flow.response = http.Response.make(200, str(gc.collect()).encode())

    def done(self) -> None:
        gc.enable()


addons = [CyclicGarbage()]
