"""Recording hooks: every flow on record, durable before it goes upstream.

The request record is appended to the spool and awaited until it is fsync'd;
only then does the hook return and mitmproxy forward the request. Responses,
errors and session_start are appended without waiting: their order in the
stream is fixed when they are appended, and the statement they belong to is
already on record. An answer's records are built just after mitmproxy has
written the answer to the client (the next turn of the event loop, or sooner
when another hook of this addon runs first), so that building them adds
nothing to the statement's latency. While the spool is over
`hoopgw_spool_max_bytes` (the store is out of reach) logins and new
statements are refused with 399002; the rest of a session still runs,
recorded, so that sessions can end and drain. While the spool's disk is full
every request is refused (399002, "the recording spool's disk is full") until
the spool finds room again by itself.

An answer streamed to the client (addons/traffic.py) is recorded from what was
counted, hashed and outlined on the way (`redaction.streamed_body_for_record`);
one that broke off mid-stream gets an `error` record saying how far it got.

A refused request that carries no verified caller (no token, a bad one, a
malformed request, a body refused unread) is not recorded on its own: it is
counted in a `recorder.refusal_tally.RefusalTally`, from its head only (its
body is never parsed, scanned or stored, only its size), and each time window
becomes one `refusal_summary` record within `hoopgw_refusal_budget_bytes` per
hour, apart from `hoopgw_spool_max_bytes`. So anonymous traffic costs the
event loop a few dictionary updates and can neither fill the spool nor queue
uploads ahead of authenticated sessions. Refusals of a verified caller (a
policy block, an unrecordable statement) stay ordinary records of its session.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import url

from hoopgw.addons import protocol
from hoopgw.addons.credentials import resolve_option_secret
from hoopgw.addons.flowstate import FlowState, Refusal, attach, state_of
from hoopgw.addons.names import RECORDING
from hoopgw.addons.protocol import Endpoint
from hoopgw.addons.refusals import refuse
from hoopgw.recorder import ids, redaction
from hoopgw.recorder.checkpoints import (
    SPOOL_KEY_FILE,
    CheckpointKeyError,
    key_id,
    load_signing_key,
    spool_signing_key,
)
from hoopgw.recorder.records import (
    Client,
    add_statement,
    milliseconds,
    new_record,
    query_id_in_path,
    statement_outcome,
    withhold_statement_echoes,
)
from hoopgw.recorder.refusal_tally import RefusalTally
from hoopgw.recorder.schema import RecordKind
from hoopgw.recorder.spool import Spool, SpoolConfig, SpoolDiskFull
from hoopgw.recorder.store import S3Store, Store, open_store
from hoopgw.recorder.store_process import StoreProcess

logger = logging.getLogger(__name__)

_STATEMENT_ENDPOINTS = frozenset({Endpoint.QUERY, Endpoint.SQL_API})
_OUTCOME_ENDPOINTS = frozenset(
    {Endpoint.LOGIN, Endpoint.QUERY, Endpoint.SQL_API, Endpoint.MONITORING, Endpoint.RESULT}
)
_QUERY_ID_ENDPOINTS = frozenset({Endpoint.MONITORING, Endpoint.RESULT, Endpoint.ABORT})
# Options that shape the spool and store; they take effect at start-up only.
_STARTUP_OPTIONS = frozenset(
    {
        "hoopgw_store",
        "hoopgw_s3_endpoint_url",
        "hoopgw_spool_dir",
        "hoopgw_rollup_interval",
        "hoopgw_checkpoint_key",
        "hoopgw_checkpoint_interval",
        "hoopgw_refusal_budget_bytes",
        "hoopgw_refusal_window",
        "hoopgw_refusal_samples",
    }
)
# What a refusal summary keeps of each sampled request's head.
_SAMPLE_PATH_CHARS = 256
_SAMPLE_HEADER_CHARS = 100


class LoneStatement:
    """Says when the loop would idle through a statement record's fsync, so it may do it.

    One request in flight is not enough: requests still in other connections'
    socket buffers do not count, and under load the loop's fsync made them wait
    while the writer thread could have batched them. So no other connection may
    have sent a request lately either. An idle connection (a driver's pool)
    sends nothing and changes nothing.
    """

    def __init__(self, quiet: float = 0.02) -> None:
        self.quiet = quiet
        """Seconds since another connection's last request before the loop commits."""
        self._in_flight: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self._connection: str | None = None
        self._last = float("-inf")
        self._others_last = float("-inf")

    def begin(self, flow: http.HTTPFlow) -> None:
        if flow.client_conn.id != self._connection:
            self._connection = flow.client_conn.id
            self._others_last = self._last
        self._last = time.monotonic()
        self._in_flight.add(flow)

    def end(self, flow: http.HTTPFlow) -> None:
        self._in_flight.discard(flow)

    def alone(self) -> bool:
        return len(self._in_flight) <= 1 and time.monotonic() - self._others_last > self.quiet


class Recording:
    """Writes each flow's records to the spool and, through it, to the store."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.store_process: StoreProcess | None = None
        self.spool: Spool | None = None
        self.body_limit = 1024 * 1024
        self.fail_open = False
        self.writer_id = ids.new_writer_id()
        self.checkpoint_key: Ed25519PrivateKey | None = None
        self._answers: list[tuple[http.HTTPFlow, FlowState]] = []
        self.refusals: RefusalTally | None = None
        self._tallied: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self.lone = LoneStatement()
        self._windows: asyncio.Task[None] | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_store",
            str,
            "file:var/recordings",
            """
            Where sealed recording segments go: `s3://bucket/prefix` for S3 (or an
            S3-compatible store, see hoopgw_s3_endpoint_url), or `file:DIR`
            (`file:///abs/dir` or `file:relative/dir`) for a local directory, the
            embedded default. S3 is called from a helper process the gateway starts
            (it inherits only the AWS_* variables, proxy and CA settings of the
            gateway's environment), so that the SDK's Python does not hold up
            statements.
            """,
        )
        loader.add_option(
            "hoopgw_s3_endpoint_url",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Endpoint URL of an S3-compatible store (MinIO, Ceph, moto) for
            hoopgw_store s3:// URLs; unset for AWS S3, where boto3's usual
            configuration (region, credentials, AWS_ENDPOINT_URL_S3) applies.
            """,
        )
        loader.add_option(
            "hoopgw_spool_dir",
            str,
            "var/spool",
            """
            Local directory of the write-ahead spool. Every request record is
            fsync'd here before the request goes upstream; segments leave the
            spool only once the store has verified them. Use a persistent disk:
            leftovers are uploaded at the next start. While its filesystem is
            full, requests are refused (399002) until it has room again; the
            gateway notices that by itself.
            """,
        )
        loader.add_option(
            "hoopgw_spool_max_bytes",
            int,
            1024 * 1024 * 1024,
            """
            Spool size, in bytes, above which the gateway refuses new statements
            (fail closed) until the store has caught up, e.g. after an S3 outage.
            """,
        )
        loader.add_option(
            "hoopgw_spool_wal_prepare",
            bool,
            True,
            """
            Keep the spool's next write-ahead log file (16 MiB) zero-filled and
            synced before it is used, so that the sync each statement waits for
            flushes its data alone, without a journal commit (about half the
            wait on ext4 and XFS). Turn it off on copy-on-write filesystems
            (btrfs, ZFS), where overwriting zeros gains nothing. No file is
            prepared while the disk has less than four files' worth free.
            """,
        )
        loader.add_option(
            "hoopgw_fail_open",
            bool,
            False,
            """
            Forward statements even when they cannot be recorded (spool full or
            unwritable). Off by default: without a durable record a statement
            does not reach Snowflake. Turning it on trades the audit guarantee
            for availability; every unrecorded statement is logged as an error.
            """,
        )
        loader.add_option(
            "hoopgw_body_limit",
            int,
            self.body_limit,
            """
            Largest request or response body, in bytes, kept in full in a record;
            larger bodies are truncated in the record, which keeps their full size
            and SHA-256. A successful result answer whose Content-Length is larger
            is streamed to the client as it arrives, never held whole, and its
            record keeps size, SHA-256 and the answer without its rows.
            """,
        )
        loader.add_option(
            "hoopgw_refusal_budget_bytes",
            int,
            1024 * 1024,
            """
            Bytes per hour that summaries of refused anonymous requests (no
            verified caller) may write, apart from hoopgw_spool_max_bytes.
            While it is spent, refusals are only counted and their summary is
            written once the allowance refills (samples dropped first); they
            never block and never take what authenticated statements need.
            """,
        )
        loader.add_option(
            "hoopgw_refusal_window",
            int,
            60,
            """
            Seconds of anonymous refusals counted into one refusal_summary
            record (per reason, endpoint and client address, with samples).
            """,
        )
        loader.add_option(
            "hoopgw_refusal_samples",
            int,
            20,
            """
            Refused anonymous requests kept as samples in each refusal_summary
            (head facts only: endpoint, method, redacted path, reason, body
            size); the rest of the window is counted.
            """,
        )
        loader.add_option(
            "hoopgw_rollup_interval",
            int,
            60,
            """
            Seconds between rewrites of this replica's roll-ups: per-day indexes
            of the stored summaries and segments that let `hoopgw sessions list`
            and `hoopgw search` read a day in a few requests. 0 writes none
            (listing then reads every object). Under S3 Object Lock each rewrite
            is a retained version; see docs/operations.md.
            """,
        )

        loader.add_option(
            "hoopgw_checkpoint_key",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Secret reference (env:NAME, file:/path or aws-secretsmanager:ID) to the
            Ed25519 private key that signs this gateway's checkpoints: its 32-byte
            seed in base64url (make one with `hoopgw checkpoint-key`) or a PEM
            private key. `hoopgw verify --public-key` then detects deleted and
            rewritten segments. Unset: a key is made at first start in
            hoopgw_spool_dir (`checkpoint-key`, public half `checkpoint-key.pub`,
            path logged at start); keep a copy of the public key off this host.
            """,
        )
        loader.add_option(
            "hoopgw_checkpoint_interval",
            int,
            60,
            """
            Seconds between the signed checkpoints of what this gateway stored (one
            is also written at start and at a clean stop). Segments stored since
            the last checkpoint are chained but not yet signed: their deletion at
            the very end of the archive is what a checkpoint cannot show.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if self.spool is not None and updated & _STARTUP_OPTIONS:
            names = ", ".join(sorted(updated & _STARTUP_OPTIONS))
            raise exceptions.OptionsError(f"{names}: takes effect only at start-up")
        if "hoopgw_store" in updated or "hoopgw_s3_endpoint_url" in updated:
            try:
                self.store = open_store(
                    ctx.options.hoopgw_store, s3_endpoint_url=ctx.options.hoopgw_s3_endpoint_url
                )
            except ValueError as exc:
                raise exceptions.OptionsError(f"hoopgw_store: {exc}") from None
        if "hoopgw_body_limit" in updated:
            if ctx.options.hoopgw_body_limit < 0:
                raise exceptions.OptionsError("hoopgw_body_limit must not be negative")
            self.body_limit = ctx.options.hoopgw_body_limit
        if "hoopgw_rollup_interval" in updated and ctx.options.hoopgw_rollup_interval < 0:
            raise exceptions.OptionsError("hoopgw_rollup_interval must not be negative")
        if "hoopgw_checkpoint_interval" in updated and ctx.options.hoopgw_checkpoint_interval < 1:
            raise exceptions.OptionsError("hoopgw_checkpoint_interval must be positive")
        if "hoopgw_checkpoint_key" in updated:
            self.checkpoint_key = _checkpoint_key(ctx.options.hoopgw_checkpoint_key)
        if "hoopgw_spool_max_bytes" in updated and ctx.options.hoopgw_spool_max_bytes < 1:
            raise exceptions.OptionsError("hoopgw_spool_max_bytes must be positive")
        for name in ("hoopgw_refusal_budget_bytes", "hoopgw_refusal_window"):
            if name in updated and getattr(ctx.options, name) < 1:
                raise exceptions.OptionsError(f"{name} must be positive")
        if "hoopgw_refusal_samples" in updated and ctx.options.hoopgw_refusal_samples < 0:
            raise exceptions.OptionsError("hoopgw_refusal_samples must not be negative")
        if "hoopgw_fail_open" in updated:
            self.fail_open = ctx.options.hoopgw_fail_open
            if self.fail_open:
                logger.warning("hoopgw: hoopgw_fail_open is on: unrecordable statements still run")

    def running(self) -> None:
        if self.spool is not None or self.store is None:
            return
        directory = Path(ctx.options.hoopgw_spool_dir)
        try:
            signing_key = self.checkpoint_key or self._spool_key(directory)
        except (CheckpointKeyError, OSError) as exc:
            # fail closed: without a spool every statement is refused as unrecordable
            logger.error(
                "hoopgw: the spool's checkpoint key %s cannot be used, so recording does not "
                "start and statements are refused: %s",
                directory / SPOOL_KEY_FILE,
                exc,
            )
            return
        self.spool = Spool(
            SpoolConfig(
                directory,
                writer_id=self.writer_id,
                max_bytes=ctx.options.hoopgw_spool_max_bytes,
                rollup_interval=ctx.options.hoopgw_rollup_interval or None,
                checkpoint_key=signing_key,
                checkpoint_interval=ctx.options.hoopgw_checkpoint_interval,
                wal_prepare=ctx.options.hoopgw_spool_wal_prepare,
            ),
            self._spool_store(self.store),
        )
        self.spool.start()
        self.refusals = RefusalTally(
            window_seconds=ctx.options.hoopgw_refusal_window,
            max_samples=ctx.options.hoopgw_refusal_samples,
            budget_bytes=ctx.options.hoopgw_refusal_budget_bytes,
            now=time.time(),
        )
        try:
            self._windows = asyncio.get_running_loop().create_task(self._close_windows())
        except RuntimeError:  # no event loop (an in-process test): windows close as refusals come
            self._windows = None
        logger.info(
            "hoopgw: recording to %s (writer %s, checkpoints signed by key %s)",
            ctx.options.hoopgw_store,
            self.writer_id,
            key_id(signing_key),
        )

    def _spool_store(self, store: Store) -> Store:
        """S3 through a helper process: botocore's Python per call (about 2 ms, four calls a
        segment) held the GIL against the event loop. A directory is written from here."""
        if not isinstance(store, S3Store):
            return store
        self.store_process = StoreProcess(
            ctx.options.hoopgw_store, s3_endpoint_url=ctx.options.hoopgw_s3_endpoint_url
        )
        return self.store_process

    @staticmethod
    def _spool_key(directory: Path) -> Ed25519PrivateKey:
        """No hoopgw_checkpoint_key: the spool's own key, made at first start, and said so."""
        key, public_path, created = spool_signing_key(directory)
        logger.warning(
            "hoopgw: hoopgw_checkpoint_key is unset, so checkpoints are signed with the key %s "
            "in the spool directory; verify with `hoopgw verify --public-key %s` and keep a "
            "copy of that public key where whoever can write the store cannot change it",
            "made now" if created else "kept",
            public_path,
        )
        return key

    async def _close_windows(self) -> None:
        """Write each closed refusal window's summary, as long as the gateway runs."""
        assert self.refusals is not None
        tick = min(5.0, float(self.refusals.window_seconds))
        while True:
            await asyncio.sleep(tick)
            self._write_refusal_summary()

    def _write_refusal_summary(self, *, closing: bool = False) -> None:
        """One summary per window, in a session of its own that ends at once (so it seals)."""
        if self.refusals is None:
            return
        try:
            summary = self.refusals.due(time.time(), closing=closing)
        except Exception:
            logger.exception("hoopgw: the refusal summary could not be built")
            return
        if summary is None:
            return
        session_id = ids.new_session_id()
        client = Client(address=None, application=None, version=None)
        self.append_quietly(
            [
                new_record(RecordKind.REFUSAL_SUMMARY, session_id, client, None, **summary),
                new_record(
                    RecordKind.SESSION_END, session_id, client, None, reason="refusal_window"
                ),
            ]
        )

    def done(self) -> None:
        self._record_answers()
        if self._windows is not None:
            self._windows.cancel()
            self._windows = None
        self._write_refusal_summary(closing=True)
        if self.refusals is not None and self.refusals.pending():
            logger.warning(
                "hoopgw: %d anonymous refusal(s) not written: the refusal budget is spent",
                self.refusals.pending(),
            )
        if self.spool is None:
            return
        if not self.spool.flush(timeout=20.0):
            logger.warning("hoopgw: some segments stay in the spool for the next start")
        self.spool.close()
        self.spool = None
        if self.store_process is not None:
            self.store_process.close()
            self.store_process = None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.lone.begin(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        self._record_answers()
        state = state_of(flow)
        if state is None:
            return
        if state.answered and state.caller is None and state.session_id is None:
            self._tally(flow, state)
            return
        if state.session_id is None:
            # a login, or a refused request in no session: each gets its own id
            state.session_id = ids.new_session_id()
        record = self._request_record(flow, state)
        if state.answered:
            self.append_quietly([record])
            return
        spool = self.spool
        if spool is None:
            self._unrecordable(flow, state, "the recording spool is not running")
            return
        if spool.over_limit() and _starts_work(flow, state):
            self._unrecordable(flow, state, "the recording spool is full")
            return
        try:
            await spool.append_on_loop(record, commit_here=self.lone.alone())
        except SpoolDiskFull:
            self._unrecordable(flow, state, "the recording spool's disk is full")
            return
        except Exception as exc:  # the spool's failure is the gateway's refusal reason
            self._unrecordable(flow, state, f"the spool could not write: {exc}")
            return
        state.passed.add(RECORDING)

    def response(self, flow: http.HTTPFlow) -> None:
        self.lone.end(flow)
        state = state_of(flow)
        if state is None or (state.refusal is not None and state.refusal.source == "recording"):
            return
        if flow in self._tallied:
            return
        # a copy: the last hook lets go of the bodies on the flow's own state
        self._answers.append((flow, state.snapshot()))
        if len(self._answers) == 1:
            asyncio.get_running_loop().call_soon(self._record_answers)

    def _record_answers(self) -> None:
        """Append the records of the answers given since the last call, in order."""
        answers, self._answers = self._answers, []
        for flow, state in answers:
            try:
                records = []
                if _opens_session(state):
                    records.append(self._session_start(flow, state))
                records.append(self._response_record(flow, state))
                if state.session_ended:
                    records.append(
                        self._event(flow, state, RecordKind.SESSION_END, reason="logout")
                    )
            except Exception as exc:
                logger.exception("hoopgw: the answer to %s could not be recorded", flow.id)
                record = self._event(flow, state, RecordKind.ERROR, flow_id=flow.id)
                record["error"] = f"hoopgw could not record the answer: {type(exc).__name__}"
                records = [record]
            self.append_quietly(records)

    def error(self, flow: http.HTTPFlow) -> None:
        self.lone.end(flow)
        self._record_answers()
        state = state_of(flow)
        if state is None:
            if not flow.live:
                return
            state = attach(flow, FlowState(endpoint=Endpoint.OTHER))
        if flow in self._tallied:
            return
        reason = str(flow.error.msg) if flow.error else "unknown"
        records = []
        if state.session_id is None and state.caller is None:
            # refused before the request hook: by mitmproxy (bad framing, body over
            # body_size_limit) or unread by the gateway (addons/traffic.py); nothing
            # went upstream and no caller is known, so it is counted with the refusals
            if state.refusal is None:
                state.refusal = Refusal(0, reason, "mitmproxy")
            self._tally(flow, state)
            return
        if state.session_id is None:
            # mitmproxy refused the request itself (bad framing, body over the size cap)
            # before the request hook: nothing went upstream, but it is on record
            state.session_id = ids.new_session_id()
            state.refusal = Refusal(0, reason, "mitmproxy")
            records.append(self._request_record(flow, state))
        record = self._event(flow, state, RecordKind.ERROR, flow_id=flow.id)
        record["error"] = redaction.mask_credential_values(reason)
        record["duration_ms"] = milliseconds(flow.request.timestamp_start, time.time())
        if state.streamed is not None and flow.response is not None:
            # the answer was being streamed when it broke off: say how far it got
            record["status"] = flow.response.status_code
            record["headers"] = redaction.redact_headers(flow.response.headers.items(multi=True))
            record["body"] = redaction.streamed_body_for_record(
                state.streamed.facts(cut=True), None, {}, self.body_limit
            )
        records.append(record)
        self.append_quietly(records)

    def _tally(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Count a refusal of no verified caller: from its head only, never its body."""
        self._tallied.add(flow)
        refusal = state.refusal
        if self.refusals is None or refusal is None:
            logger.warning("hoopgw: an anonymous refusal was not counted (recording not running)")
            return
        request = flow.request
        body_size = _body_size(request)
        address = flow.client_conn.peername[0] if flow.client_conn.peername else None
        response = flow.response
        sample = {
            "ts": request.timestamp_start,
            "flow_id": flow.id,
            "endpoint": str(state.endpoint),
            "method": protocol.printable(request.data.method)[:24],
            "path": redaction.redact_path(protocol.printable(request.data.path))[
                :_SAMPLE_PATH_CHARS
            ],
            "http_version": request.http_version,
            "status": response.status_code if response is not None else None,
            "refusal": refusal.as_record(),
            "client": address,
            "body_size": body_size,
            "content_type": _head_value(request, "content-type"),
            "content_encoding": _head_value(request, "content-encoding"),
        }
        self.refusals.add(
            endpoint=str(state.endpoint),
            code=refusal.code,
            reason=refusal.reason,
            address=address,
            body_size=body_size,
            sample=sample,
        )
        self._write_refusal_summary()

    def _unrecordable(self, flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
        """Refuse the request (or, failing open, forward it), recording that on a best-effort basis.

        A full spool still takes the small refusal record, so the archive shows
        what was refused; a failed spool logs that the record is lost.
        """
        if self.fail_open:
            logger.error(
                "hoopgw: forwarding request %s without a durable record (%s)", flow.id, reason
            )
            state.passed.add(RECORDING)
            self.append_quietly([self._request_record(flow, state)])
            return
        message = f"hoopgw cannot record this request, so it was not run: {reason}"
        code = protocol.CODE_GATEWAY_RECORDING
        refuse(
            flow,
            state,
            code,
            reason,
            RECORDING,
            message=message,
            sql_state="57014",
            sql_api_status=503,
        )
        logger.error("hoopgw: refused request %s: %s", flow.id, reason)
        self.append_quietly([self._request_record(flow, state)])

    def append_quietly(self, records: list[dict[str, Any]]) -> None:
        """Queue records nobody waits on (answers, chunks, agent calls); failures are logged."""
        if self.spool is None:
            logger.error("hoopgw: no spool; %d record(s) lost", len(records))
            return
        for record in records:
            try:
                self.spool.append_eventually(record)
            except Exception as exc:
                logger.error("hoopgw: a %s record could not be written: %s", record["kind"], exc)

    def _event(
        self, flow: http.HTTPFlow, state: FlowState, kind: RecordKind, **fields: Any
    ) -> dict[str, Any]:
        client: Client = {
            "address": _peer(flow),
            "application": state.client_app,
            "version": state.client_version,
        }
        caller = state.caller.as_record() if state.caller is not None else None
        return new_record(kind, state.session_id, client, caller, **fields)

    def _session_start(self, flow: http.HTTPFlow, state: FlowState) -> dict[str, Any]:
        upstream = state.upstream_login
        return self._event(
            flow,
            state,
            RecordKind.SESSION_START,
            account=upstream.account if upstream else None,
            login_name=upstream.user if upstream else None,
            authenticator=upstream.authenticator if upstream else None,
            upstream_session_id=_response_data(state).get("sessionId"),
            # in reverse mode the request's address is the upstream's, whatever the Host header
            upstream={
                "scheme": flow.request.scheme,
                "host": flow.request.host,
                "port": flow.request.port,
            },
            **_context(state),
        )

    def _request_record(self, flow: http.HTTPFlow, state: FlowState) -> dict[str, Any]:
        request = flow.request
        record = self._event(
            flow,
            state,
            RecordKind.REFUSAL if state.answered else RecordKind.REQUEST,
            flow_id=flow.id,
            endpoint=str(state.endpoint),
            method=request.data.method.decode("ascii", "replace"),
            path=redaction.redact_path(request.path),
            headers=redaction.redact_headers(request.headers.items(multi=True)),
            body=self._body(request, state.request_body, state.request_json),
        )
        record["ts"] = request.timestamp_start
        request_id = _request_id(request)
        if request_id:
            record["request_id"] = request_id
        body = state.request_json or {}
        if state.endpoint in _STATEMENT_ENDPOINTS:
            state.sql_masked = add_statement(record, body, self.body_limit)
            record.update(_context(state))
        elif state.endpoint in _QUERY_ID_ENDPOINTS:
            query_id = body.get("requestId") if state.endpoint is Endpoint.ABORT else None
            record["query_id"] = query_id or query_id_in_path(request.path)
        if state.statements is not None:
            record["statements"] = state.statements
        if state.guardrail is not None:
            record["guardrail"] = state.guardrail
        if state.refusal is not None:
            record["refusal"] = _refusal(state.refusal)
        return record

    def _response_record(self, flow: http.HTTPFlow, state: FlowState) -> dict[str, Any]:
        response = flow.response
        assert response is not None
        record = self._event(
            flow,
            state,
            RecordKind.RESPONSE,
            flow_id=flow.id,
            endpoint=str(state.endpoint),
            status=response.status_code,
            duration_ms=milliseconds(
                flow.request.timestamp_start, response.timestamp_end or time.time()
            ),
            headers=redaction.redact_headers(response.headers.items(multi=True)),
            body=self._response_body(response, state),
        )
        if state.refusal is not None:
            record["refusal"] = _refusal(state.refusal)
        if isinstance(state.response_json, dict) and state.endpoint in _OUTCOME_ENDPOINTS:
            record.update(statement_outcome(state.response_json))
        if state.sql_masked:
            withhold_statement_echoes(record)
        if state.detections:
            record["detections"] = state.detections
        return record

    def _response_body(self, response: http.Response, state: FlowState) -> dict[str, Any]:
        streamed = state.streamed
        if streamed is None or state.answered:
            return self._body(response, state.response_body, state.response_json)
        return redaction.streamed_body_for_record(
            streamed.facts(), state.response_json, streamed.elided, self.body_limit
        )

    def _body(
        self, message: http.Message, decoded: bytes | None, parsed: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The record's body, treated as what its bytes are whatever its Content-Type says;
        reuses the JSON the gateway parsed (decoded bodies are bounded)."""
        raw = decoded if decoded is not None else message.raw_content or b""
        if parsed is not None and decoded is not None:
            return redaction.body_for_record(raw, self.body_limit, parsed=parsed)
        return redaction.body_for_record(raw, self.body_limit)


def _request_id(request: http.Request) -> str | None:
    """The driver's `requestId` (or `request_id`), as `request.query` reads it, from one parse
    of the query string (each `request.query` access parses it again)."""
    _, sep, query = request.path.partition("?")
    if not sep:
        return None
    first: dict[str, str] = {}
    if "%" in query or "+" in query:
        for name, value in url.decode(query):
            first.setdefault(name, value)
    else:  # what url.decode gives when there is nothing to unquote, without its machinery
        for pair in query.split("&"):
            if pair:
                name, _, value = pair.partition("=")
                first.setdefault(name, value)
    return first.get("requestId") or first.get("request_id")


def _refusal(refusal: Refusal) -> dict[str, Any]:
    """A refusal as recorded: a reason may quote the request (a header value), so it is scrubbed."""
    record = refusal.as_record()
    record["reason"] = redaction.mask_credential_values(record["reason"])
    return record


def _checkpoint_key(ref: str | None) -> Ed25519PrivateKey | None:
    """The configured checkpoint key; failures name the option, never the key."""
    if not ref:
        return None
    try:
        return load_signing_key(resolve_option_secret("hoopgw_checkpoint_key", ref))
    except CheckpointKeyError as exc:
        raise exceptions.OptionsError(f"hoopgw_checkpoint_key: {ref}: {exc}") from None


def _body_size(request: http.Request) -> int:
    """The body's size as received, or as declared when it was refused unread."""
    if request.raw_content:
        return len(request.raw_content)
    declared = request.headers.get("content-length", "").strip()
    return int(declared) if declared.isdigit() and len(declared) < 20 else 0


def _head_value(request: http.Request, name: str) -> str | None:
    value = request.headers.get(name)
    return None if value is None else protocol.printable(value.encode())[:_SAMPLE_HEADER_CHARS]


_WORK_ENDPOINTS: Final = frozenset({Endpoint.LOGIN, Endpoint.QUERY, *protocol.AGENT_ENDPOINTS})


def _starts_work(flow: http.HTTPFlow, state: FlowState) -> bool:
    """A login, a new statement or an agent-surface call: what a full spool refuses.

    The rest of a session (results, polling, renewal, cancel, logout) is still
    recorded and let through, so sessions can end and their segments seal and
    drain instead of waiting for the segment age limit.
    """
    if state.endpoint in _WORK_ENDPOINTS:
        return True
    if state.endpoint is Endpoint.SQL_API:
        route = flow.request.path.partition("?")[0].rstrip("/")
        return flow.request.method == "POST" and not route.endswith("/cancel")
    return False


def _response_data(state: FlowState) -> dict[str, Any]:
    answer = state.response_json
    data = answer.get("data") if isinstance(answer, dict) else None
    return data if isinstance(data, dict) else {}


def _opens_session(state: FlowState) -> bool:
    """A login that succeeded, or a bearer call (SQL API, Cortex, MCP) that went upstream."""
    if state.caller is None or state.answered:
        return False
    if state.endpoint in protocol.BEARER_ENDPOINTS:
        return state.upstream_login is not None
    return state.endpoint is Endpoint.LOGIN and _succeeded(state)


def _succeeded(state: FlowState) -> bool:
    return isinstance(state.response_json, dict) and state.response_json.get("success") is True


def _peer(flow: http.HTTPFlow) -> str | None:
    address = flow.client_conn.peername
    return f"{address[0]}:{address[1]}" if address else None


def _context(state: FlowState) -> dict[str, Any]:
    context = state.context
    return {
        "database": context.database,
        "schema": context.schema,
        "warehouse": context.warehouse,
        "role": context.role,
    }
