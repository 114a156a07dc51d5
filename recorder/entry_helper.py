"""The roll-up helper process: describes sealed spool segments for the roll-ups.

Run by `recorder.spool.entries.SegmentEntries` as `python -m
hoopgw.recorder.entry_helper FD`, FD one end of a socket pair. Each request is
a JSON array `[key, version, path]`; each answer is `0x00` and the segment's
roll-up entry (`rollup.segment_entry`), or `0x01` and the name of the
exception that stopped it. The helper imports only what describing needs (not
the spool, not mitmproxy), reads only the files it is named, and exits when
the gateway closes its end.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path

import orjson

from hoopgw.recorder.helper_process import run_helper
from hoopgw.recorder.rollup import segment_entry
from hoopgw.recorder.segment import parse_lines

DESCRIBED: bytes = b"\x00"
FAILED: bytes = b"\x01"


def describe_file(key: str, version: str, path: str) -> bytes:
    """The segment's roll-up entry, from its sealed file."""
    return segment_entry(key, version, parse_lines(Path(path).read_bytes()))


def serve(connection: Connection) -> None:
    while True:
        try:
            request = connection.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            key, version, path = orjson.loads(request)
            answer = DESCRIBED + describe_file(key, version, path)
        except Exception as exc:
            answer = FAILED + type(exc).__name__.encode()
        connection.send_bytes(answer)


def main() -> None:
    run_helper(serve)


if __name__ == "__main__":
    main()
