"""The spool's object store in a helper process, so that the AWS SDK's Python leaves the gateway.

Each S3 call is about 2 ms of botocore's Python that holds the GIL, and a
segment's upload is four of them (the PUT and its read-back, for the
segment and for its stream's summary), about 9 ms a second at 500
statements a second. The uploader thread held the GIL against the event
loop for that long, in stretches up to the interpreter's switch interval:
the largest part of the gateway's p99 over bare mitmdump at one connection
(docs/performance.md, "Fourteenth round"). `StoreProcess` keeps the `Store`
contract and makes every call in a child process (`recorder.store_helper`),
the calling thread waiting for the answer without the GIL.

A plain child on a socket pair (`recorder.helper_process`). One call at a
time (the uploader's and the roll-up thread's calls take turns). A call that
fails in the store raises what the store raised (`KeyNotFound`,
`IntegrityError`, `StoreError`), with the store's message; a bad key raises
`ValueError` here, before any call. A helper that exits, cannot start or
does not answer within `call_timeout` seconds raises `StoreHelperFailed` (a
`StoreError`) and is stopped, and the next call starts another.
The spool already retries a failed upload, doubling its delay, so nothing is
lost to a helper's death: the segment stays on disk until a call stores it.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Final

import orjson

from hoopgw.recorder.helper_process import HelperProcess, helper_environment
from hoopgw.recorder.store import StoreError, check_key
from hoopgw.recorder.store_helper import FAILED, OK, REPORTED, WITH_DATA

CALL_TIMEOUT: Final = 300.0
"""Seconds a call may take: botocore's own timeouts and retries (connect 5 s, read 30 s,
five attempts) end every S3 call well before this."""
START_TIMEOUT: Final = 60.0
"""Seconds for the helper to import the SDK and open the store."""
STORE_ENVIRONMENT_PREFIXES: Final = ("AWS_",)
"""The SDK's configuration and credentials (keys, profile, web identity, container role)."""
STORE_ENVIRONMENT: Final = frozenset(
    {
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    }
)
"""How to reach the store; never the variables the gateway's other secrets are read from."""
_RAISED: Final[dict[str, type[Exception]]] = {kind.__name__: kind for kind in REPORTED}


class StoreHelperFailed(StoreError):
    """The helper itself failed (exited, garbage, no answer in time), not the store's call."""


def store_environment() -> dict[str, str]:
    environment = helper_environment()
    environment.update(
        (name, value)
        for name, value in os.environ.items()
        if name in STORE_ENVIRONMENT or name.startswith(STORE_ENVIRONMENT_PREFIXES)
    )
    return environment


class _Helper:
    """One running helper process with its store open."""

    def __init__(self, url: str, s3_endpoint_url: str | None) -> None:
        try:
            self.child = HelperProcess("hoopgw.recorder.store_helper", store_environment())
        except OSError as exc:
            raise StoreHelperFailed(f"the store helper could not start ({exc.strerror})") from None
        try:
            self.child.connection.send_bytes(orjson.dumps([url, s3_endpoint_url]))
            _result(self._answer(START_TIMEOUT, "open the store"))
        except BaseException:
            self.child.stop()
            raise

    def call(self, operation: str, key: str, data: bytes | None, timeout: float) -> bytes:
        try:
            self.child.connection.send_bytes(orjson.dumps([operation, key]))
            if operation in WITH_DATA:
                self.child.connection.send_bytes(data or b"")
        except OSError:
            raise StoreHelperFailed(self._exited()) from None
        return _result(self._answer(timeout, f"{operation} {key[:200]}"))

    def _answer(self, timeout: float, what: str) -> bytes:
        try:
            if not self.child.connection.poll(timeout):
                raise StoreHelperFailed(f"the store helper did not {what} within {timeout:.0f} s")
            return self.child.connection.recv_bytes()
        except (EOFError, OSError):
            raise StoreHelperFailed(self._exited()) from None

    def _exited(self) -> str:
        try:
            code = self.child.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "the store helper stopped answering"
        return f"the store helper exited (status {code})"


def _result(answer: bytes) -> bytes:
    if answer[:1] == OK:
        return answer[1:]
    if answer[:1] != FAILED:
        raise StoreHelperFailed("the store helper answered garbage")
    kind, message = orjson.loads(answer[1:])
    raise _RAISED.get(kind, StoreError)(message)


class StoreProcess:
    """The store a `hoopgw_store` URL names, reached through a helper process started on need.

    Thread-safe: calls take turns. `close` stops the helper; a call after it
    starts another.
    """

    def __init__(
        self, url: str, *, s3_endpoint_url: str | None = None, call_timeout: float = CALL_TIMEOUT
    ) -> None:
        self.url = url
        self.s3_endpoint_url = s3_endpoint_url
        self.call_timeout = call_timeout
        self._lock = threading.Lock()
        self._helper: _Helper | None = None
        self.helpers_started = 0

    def __repr__(self) -> str:
        return f"StoreProcess({self.url!r})"

    def helper_pid(self) -> int | None:
        """The helper's process id while it runs (for tests and diagnostics)."""
        helper = self._helper
        return helper.child.pid if helper is not None else None

    def put(self, key: str, data: bytes) -> str | None:
        version = orjson.loads(self._call("put", key, data))
        return str(version) if version is not None else None

    def put_new(self, key: str, data: bytes) -> bool:
        return self._call("put_new", key, data) == b"1"

    def get(self, key: str) -> bytes:
        return self._call("get", key)

    def list(self, prefix: str) -> Iterator[str]:
        yield from orjson.loads(self._call("list", prefix))

    def delete(self, key: str) -> None:
        self._call("delete", key)

    def exists(self, key: str) -> bool:
        return self._call("exists", key) == b"1"

    def close(self, timeout: float = 10.0) -> None:
        """Stop the helper once the call under way (if any) ends; at `timeout`, kill it (that
        call then fails as an exited helper's, and its thread stops what is left)."""
        if not self._lock.acquire(timeout=timeout):
            helper = self._helper
            if helper is not None:
                helper.child.kill()
            return
        try:
            helper, self._helper = self._helper, None
            if helper is not None:
                helper.child.stop()
        finally:
            self._lock.release()

    def _call(self, operation: str, key: str, data: bytes | None = None) -> bytes:
        if operation != "list":
            check_key(key)  # here, so that the helper's ValueErrors are never about our input
        with self._lock:
            helper = self._helper
            if helper is None:
                helper = self._helper = _Helper(self.url, self.s3_endpoint_url)
                self.helpers_started += 1
            try:
                return helper.call(operation, key, data, self.call_timeout)
            except StoreHelperFailed:
                self._helper = None
                helper.child.kill()
                helper.child.stop()
                raise
