"""An HTTP CONNECT proxy on loopback, as an operator's egress proxy: it tunnels and counts.

Written here because the tests need to see which hosts went through it; it serves
CONNECT only (what the gateway sends for a storage fetch) and refuses anything else.
"""

from __future__ import annotations

import select
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Self

from tests import stack


class ConnectProxy(stack.LoopbackServer):
    def __init__(self) -> None:
        self.targets: list[str] = []
        self._lock = threading.Lock()

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.command != "CONNECT":
            handler.send_error(405, "CONNECT only")
            return
        host, _, port = handler.path.rpartition(":")
        with self._lock:
            self.targets.append(handler.path)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            handler.send_error(502)
            return
        handler.send_response(200, "Connection established")
        handler.end_headers()
        _pipe(handler.connection, upstream)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [client, upstream]
    try:
        while True:
            readable, _, failed = select.select(sockets, [], sockets, 60)
            if failed or not readable:
                return
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                (upstream if source is client else client).sendall(data)
    finally:
        upstream.close()
