"""Held statements and their decisions, as objects in the store every replica reads.

A statement a policy rule sends to review (docs/approval.md) becomes an
`ApprovalRequest` at `approvals/<id>.json`; a human's decision, a withdrawal
or a timeout becomes an `ApprovalDecision` at `approvals/<id>.decision.json`;
the one run of an approved statement is claimed at `approvals/<id>.released.json`.
`approvals/fingerprints/<sha256>.json` names the latest request of a caller's
statement text and bindings, so a retry joins it or reuses its approval.

The gateway replica that holds a statement polls for the decision; any replica
(or the CLI, through any replica) may write it. Decisions and release claims
are created with `Store.put_new`, so the first decision stands and a statement
runs once, whichever replicas race. This module only reads and
writes those objects: no mitmproxy, no network besides the store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import orjson

from hoopgw.recorder.store import KeyNotFound, Store, StoreError

logger = logging.getLogger(__name__)

PREFIX = "approvals/"
Outcome = Literal["approved", "denied", "withdrawn", "timeout"]
OUTCOMES: frozenset[str] = frozenset({"approved", "denied", "withdrawn", "timeout"})


def new_approval_id() -> str:
    """A UUID: drivers validate the ids in `getResultUrl` as UUIDs."""
    return str(uuid.uuid4())


def is_approval_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def fingerprint(subject: str, sql: str, bindings: Any, objects: Any = ()) -> str:
    """What an approval binds: the caller, the statement text and its bindings.

    `objects` are the names the statement resolved to in its session's context:
    the same text run with another current schema is another statement.
    """
    material = orjson.dumps(
        {"subject": subject, "sql": sql, "bindings": bindings, "objects": list(objects)},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(material).hexdigest()


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A held request: who asked, what (redacted for people), which rule, who may decide.

    `sealed_body` is the request body exactly as the driver sent it, encrypted
    by the gateway (addons/approval.py) so the store never holds a statement's
    credential literals in clear; only a gateway replica can forward it.
    """

    id: str
    session_id: str
    caller: dict[str, Any]
    rule: str | None
    reason: str | None
    approvers: tuple[str, ...]
    created: float
    expires: float
    sql: str | None
    objects: tuple[str, ...]
    kinds: tuple[str, ...]
    fingerprint: str
    path: str
    request_id: str | None
    sealed_body: str
    writer: str | None = None

    @property
    def subject(self) -> str | None:
        return self.caller.get("subject")

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> ApprovalRequest:
        raw = orjson.loads(data)
        for name in ("approvers", "objects", "kinds"):
            raw[name] = tuple(raw.get(name) or ())
        return cls(**{key: raw.get(key) for key in cls.__dataclass_fields__})

    def public(self) -> dict[str, Any]:
        """What approvers and the CLI see: everything but the sealed body."""
        shown = asdict(self)
        shown.pop("sealed_body")
        return shown


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    id: str
    outcome: Outcome
    ts: float
    approver: dict[str, Any] | None = None
    reason: str | None = None
    mac: str | None = None
    """HMAC-SHA256 of the other fields with the gateways' shared key: only a replica decides."""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    def signed_content(self) -> bytes:
        fields = asdict(self)
        fields.pop("mac")
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

    def signed(self, key: bytes) -> ApprovalDecision:
        mac = hmac.new(key, self.signed_content(), hashlib.sha256).hexdigest()
        return replace(self, mac=mac)

    def verified(self, key: bytes) -> bool:
        expected = hmac.new(key, self.signed_content(), hashlib.sha256).hexdigest()
        return isinstance(self.mac, str) and hmac.compare_digest(expected, self.mac)

    @classmethod
    def from_json(cls, data: bytes) -> ApprovalDecision:
        raw = orjson.loads(data)
        if raw.get("outcome") not in OUTCOMES:
            raise ValueError(f"unknown outcome {raw.get('outcome')!r}")
        return cls(**{key: raw.get(key) for key in cls.__dataclass_fields__})


@dataclass(slots=True)
class Approval:
    """A request with its decision, if any, as listed."""

    request: ApprovalRequest
    decision: ApprovalDecision | None = None
    released: bool = False

    def state(self, now: float | None = None) -> str:
        if self.decision is not None:
            return self.decision.outcome
        if (now or time.time()) >= self.request.expires:
            return "timeout"
        return "pending"

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        return {
            **self.request.public(),
            "state": self.state(now),
            "age_seconds": round(now - self.request.created, 1),
            "decision": asdict(self.decision) if self.decision else None,
            "released": self.released,
        }


@dataclass(slots=True)
class ApprovalBook:
    """The approval objects of one store. Blocking calls: run them off the event loop."""

    store: Store
    mac_key: bytes | None = None
    """With a key, decisions are signed when written and ignored unless they verify."""
    reads: int = field(default=0)

    def _get(self, key: str) -> bytes | None:
        self.reads += 1
        try:
            return self.store.get(key)
        except KeyNotFound:
            return None

    def add(self, request: ApprovalRequest) -> None:
        self.store.put(f"{PREFIX}{request.id}.json", request.to_json())
        pointer = orjson.dumps({"id": request.id})
        self.store.put(f"{PREFIX}fingerprints/{request.fingerprint}.json", pointer)

    def request(self, approval_id: str) -> ApprovalRequest | None:
        if not is_approval_id(approval_id):
            return None
        data = self._get(f"{PREFIX}{approval_id}.json")
        return ApprovalRequest.from_json(data) if data is not None else None

    def decision(self, approval_id: str) -> ApprovalDecision | None:
        data = self._get(f"{PREFIX}{approval_id}.decision.json")
        if data is None:
            return None
        decision = ApprovalDecision.from_json(data)
        if self.mac_key is not None and not decision.verified(self.mac_key):
            logger.error(
                "hoopgw: the decision on approval %s in the store is not signed by a gateway; "
                "ignored",
                approval_id,
            )
            return None
        return decision

    def decide(self, decision: ApprovalDecision) -> tuple[ApprovalDecision, bool]:
        """Store `decision` unless one is there already: the decision in force, and whether
        it is this one.

        The write is a conditional create, so of two replicas deciding at the same
        instant the first to reach the store wins and the other gets the winner back.
        """
        existing = self.decision(decision.id)
        if existing is not None:
            return existing, False
        if self.mac_key is not None:
            decision = decision.signed(self.mac_key)
        if self.store.put_new(f"{PREFIX}{decision.id}.decision.json", decision.to_json()):
            return decision, True
        standing = self.decision(decision.id)
        if standing is None:
            raise StoreError(
                f"approval {decision.id}: the store holds a decision no gateway signed, which "
                f"blocks this one; check and remove {PREFIX}{decision.id}.decision.json"
            )
        return standing, False

    def released(self, approval_id: str) -> bool:
        self.reads += 1
        return self.store.exists(f"{PREFIX}{approval_id}.released.json")

    def release(self, approval_id: str, writer: str) -> bool:
        """Claim the one run of an approved statement; False when it was claimed before."""
        claim = orjson.dumps({"id": approval_id, "writer": writer, "ts": time.time()})
        return self.store.put_new(f"{PREFIX}{approval_id}.released.json", claim)

    def latest_for(self, print_: str) -> str | None:
        data = self._get(f"{PREFIX}fingerprints/{print_}.json")
        if data is None:
            return None
        approval_id = orjson.loads(data).get("id")
        return approval_id if isinstance(approval_id, str) else None

    def approval(self, approval_id: str) -> Approval | None:
        request = self.request(approval_id)
        if request is None:
            return None
        return Approval(request, self.decision(approval_id), self.released(approval_id))

    def all(self) -> list[Approval]:
        """Every request in the store, newest first."""
        found = []
        for key in self.store.list(PREFIX):
            name = key.removeprefix(PREFIX)
            if "/" in name or not name.endswith(".json"):
                continue
            approval_id = name.removesuffix(".json")
            if not is_approval_id(approval_id):
                continue
            approval = self.approval(approval_id)
            if approval is not None:
                found.append(approval)
        found.sort(key=lambda approval: approval.request.created, reverse=True)
        return found


def encode_body(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


def decode_body(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
