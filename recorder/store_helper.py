"""The store helper process: makes the spool's object-store calls out of the gateway's process.

Run by `recorder.store_process.StoreProcess` as `python -m
hoopgw.recorder.store_helper FD`, FD one end of a socket pair. Its first
message is a JSON array `[store URL, S3 endpoint URL or null]`; it opens that
store (`store.open_store`) and answers `OK`, or `FAILED` and why. Then each
request is a JSON array `[operation, key]`, followed, for `put` and `put_new`,
by a message holding the object's bytes; each answer is `OK` and the
operation's result (below), or `FAILED` and a JSON array `[kind, message]`
where kind names the exception (`KeyNotFound`, `IntegrityError`,
`StoreError`) and the message is the store's own, which names keys and S3
error codes, never credentials. Any other exception is answered
by its type's name alone. It imports only the store, and exits when the
gateway closes its end.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Final

import orjson

from hoopgw.recorder.helper_process import run_helper
from hoopgw.recorder.store import IntegrityError, KeyNotFound, Store, StoreError, open_store

OK: Final = b"\x00"
FAILED: Final = b"\x01"
WITH_DATA: Final = frozenset({"put", "put_new"})
"""Operations whose request is followed by a message holding the object's bytes."""
REPORTED: Final = (KeyNotFound, IntegrityError, StoreError)
"""Exceptions answered with their message: the store's messages name keys and S3's error
codes, never secrets. Any other is answered by its type's name alone (a ValueError deep in
the SDK may quote what it was given)."""


def _flag(value: bool) -> bytes:
    return b"1" if value else b"0"


OPERATIONS: Final[dict[str, Callable[[Store, str, bytes], bytes]]] = {
    "put": lambda store, key, data: orjson.dumps(store.put(key, data)),
    "put_new": lambda store, key, data: _flag(store.put_new(key, data)),
    "get": lambda store, key, _: store.get(key),
    "exists": lambda store, key, _: _flag(store.exists(key)),
    "delete": lambda store, key, _: store.delete(key) or b"",
    "list": lambda store, key, _: orjson.dumps(list(store.list(key))),
}
"""Each operation's call and how its result travels back (bytes as they are)."""


def failure(exc: BaseException) -> bytes:
    if isinstance(exc, REPORTED):
        kind = next(kind for kind in REPORTED if isinstance(exc, kind)).__name__
        message = str(exc.args[0]) if exc.args else ""
    else:
        kind, message = "StoreError", f"the store helper failed ({type(exc).__name__})"
    return FAILED + orjson.dumps([kind, message[:500]])


def answer(store: Store, operation: str, key: str, data: bytes) -> bytes:
    try:
        return OK + OPERATIONS[operation](store, key, data)
    except Exception as exc:
        return failure(exc)


def serve(connection: Connection) -> None:
    try:
        url, endpoint_url = orjson.loads(connection.recv_bytes())
        store = open_store(url, s3_endpoint_url=endpoint_url)
    except (EOFError, OSError):
        return
    except Exception as exc:
        connection.send_bytes(failure(exc))
        return
    connection.send_bytes(OK)
    while True:
        try:
            operation, key = orjson.loads(connection.recv_bytes())
            data = connection.recv_bytes() if operation in WITH_DATA else b""
            connection.send_bytes(answer(store, operation, key, data))
        except (EOFError, OSError):
            return


def main() -> None:
    run_helper(serve)


if __name__ == "__main__":
    main()
