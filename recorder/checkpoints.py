"""Signed checkpoints: every segment a process stores chained to the one before, the head signed.

A session's hash chain shows a record altered or removed inside a stream, but
not a stream whose last segments were deleted with its summary, nor a session
rewritten consistently (records re-hashed, summary recomputed). So each
uploading process (a *chain*, named by its writer id) also links every segment
it stores, across sessions, to the previous one: link `n` names the segment
(session, stream writer, first and last seq, the hash of its last record) and
the hash of link `n - 1`. The link is kept in the stream's summary. Every
`interval` seconds, and at a clean stop (`final: true`), the chain writes a
checkpoint object, `checkpoints/<chain>/<n:08d>.json`, holding the links since
the previous checkpoint, the head link, and the previous checkpoint's hash,
signed with the gateway's Ed25519 key.

A verifier holding the public key then knows, up to the last checkpoint,
exactly which segments existed and what their records hashed to: a deleted
segment, a cut tail and a rewritten session all disagree with a signed link,
and a deleted checkpoint breaks the checkpoint chain. docs/threat-model.md
says what remains outside (the last `interval` seconds, a stolen key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hoopgw.recorder.ids import parse_writer_id
from hoopgw.recorder.schema import GENESIS_HASH

logger = logging.getLogger(__name__)

CHECKPOINTS: Final = "checkpoints"
CHECKPOINT_VERSION: Final = 1
SEED_BYTES: Final = 32
SPOOL_KEY_FILE: Final = "checkpoint-key"
SPOOL_PUBLIC_KEY_FILE: Final = "checkpoint-key.pub"
LAST_CHECKPOINT_FILE: Final = "checkpoint.last"
"""In the spool directory: the last checkpoint stored, which the next process names."""
_CHECKPOINT_KEY: Final = re.compile(r"checkpoints/([0-9a-z]{4,32})/(\d{8,})\.json")
_LINK_FIELDS: Final = (
    "chain",
    "n",
    "prev",
    "session_id",
    "writer",
    "first_seq",
    "last_seq",
    "last_hash",
)


class CheckpointKeyError(ValueError):
    """A key that does not load; the message never holds key material."""


class CheckpointFormatError(ValueError):
    """A stored checkpoint that is not one."""


# --- keys ----------------------------------------------------------------------------


def new_checkpoint_key() -> str:
    """A fresh Ed25519 private key: its 32-byte seed, base64url without padding."""
    return base64.urlsafe_b64encode(os.urandom(SEED_BYTES)).rstrip(b"=").decode()


def _b64(text: bytes) -> bytes | None:
    cleaned = b"".join(text.split()).replace(b"-", b"+").replace(b"_", b"/")
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        return None


def load_signing_key(data: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or its base64/base64url 32-byte seed."""
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise CheckpointKeyError("the key is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointKeyError("the PEM key is not an Ed25519 key")
        return key
    seed = _b64(data)
    if seed is None or len(seed) != SEED_BYTES:
        raise CheckpointKeyError(
            "the key must be an Ed25519 PEM private key or a 32-byte seed, base64 or "
            "base64url encoded (make one with `hoopgw checkpoint-key`)"
        )
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or its base64/base64url 32 bytes."""
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise CheckpointKeyError("not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointKeyError("the PEM public key is not an Ed25519 key")
        return key
    raw = _b64(data)
    if raw is None or len(raw) != SEED_BYTES:
        raise CheckpointKeyError("not an Ed25519 public key (PEM, or 32 bytes base64)")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A public name for a key pair: 16 hex digits of the public key's sha256."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def spool_signing_key(directory: Path) -> tuple[Ed25519PrivateKey, Path, bool]:
    """The key kept in a spool directory when none is configured: made at first use.

    Returns the key, the path of its public key file and whether it was just made.
    The private key file is 0600; the public one is what `hoopgw verify` takes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / SPOOL_KEY_FILE
    public_path = directory / SPOOL_PUBLIC_KEY_FILE
    created = False
    try:
        key = load_signing_key(private_path.read_bytes())
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        text = base64.urlsafe_b64encode(seed).rstrip(b"=") + b"\n"
        _write_new(private_path, text, 0o600)
        created = True
    pem = public_key_pem(key).encode()
    if not public_path.is_file() or public_path.read_bytes() != pem:
        _write_new(public_path, pem, 0o644)
    return key, public_path, created


def _write_new(path: Path, data: bytes, mode: int) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


# --- links and checkpoints -----------------------------------------------------------


def checkpoint_key(chain: str, n: int) -> str:
    return f"{CHECKPOINTS}/{parse_writer_id(chain)}/{n:08d}.json"


def parse_checkpoint_key(key: str) -> tuple[str, int] | None:
    match = _CHECKPOINT_KEY.fullmatch(key)
    return (match[1], int(match[2])) if match else None


def _canonical(value: Mapping[str, Any]) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def link_hash(link: Mapping[str, Any]) -> str:
    """sha256 of the link's canonical encoding (its known fields only)."""
    return hashlib.sha256(_canonical({name: link.get(name) for name in _LINK_FIELDS})).hexdigest()


def make_link(
    chain: str,
    n: int,
    prev: str,
    session_id: str,
    writer: str,
    first_seq: int,
    last_seq: int,
    last_hash: str,
) -> dict[str, Any]:
    """Link `n` of `chain`: one stored segment, and the hash of link `n - 1`."""
    return {
        "chain": chain,
        "n": n,
        "prev": prev,
        "session_id": session_id,
        "writer": writer,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "last_hash": last_hash,
    }


class CheckpointChain:
    """The writer side: links each stored segment and builds the signed checkpoints.

    The uploader thread's alone. `link` proposes the next link without taking it,
    so a summary PUT that fails is retried with the same link; `commit` takes it
    once the summary holding it is stored. Checkpoints are due every `interval`
    seconds while links are waiting, and once at start (the chain's genesis, so
    that a process which stored nothing still shows it ran).
    """

    def __init__(
        self,
        chain: str,
        key: Ed25519PrivateKey,
        interval: float,
        clock: Callable[[], float] = time.time,
        last_file: Path | None = None,
    ) -> None:
        """`last_file` keeps the last checkpoint stored (`LAST_CHECKPOINT_FILE` in the spool
        directory): the genesis names what an earlier process left there as its predecessor,
        so that the newest checkpoints of a process cannot vanish unnoticed once another
        process has started on the same spool."""
        self.chain = parse_writer_id(chain)
        self.last_file = last_file
        self.key = key
        self.key_id = key_id(key)
        self.interval = interval
        self.clock = clock
        self.next_link = 0
        self.head = GENESIS_HASH
        self.pending: list[dict[str, Any]] = []
        self.next_checkpoint = 0
        self.previous_checkpoint: str | None = None
        self.last_written = float("-inf")
        self.final_written = False
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None

    def link(
        self, session_id: str, writer: str, first_seq: int, last_seq: int, last_hash: str
    ) -> dict[str, Any]:
        return make_link(
            self.chain,
            self.next_link,
            self.head,
            session_id,
            writer,
            first_seq,
            last_seq,
            last_hash,
        )

    def commit(self, link: dict[str, Any]) -> None:
        if link["n"] != self.next_link:
            raise ValueError(f"link {link['n']} committed where {self.next_link} is next")
        self.pending.append(link)
        self.head = link_hash(link)
        self.next_link += 1

    def seconds_until_due(self) -> float | None:
        """Seconds until the next checkpoint is due (<= 0: now); None when none is."""
        if self.next_checkpoint and not self.pending:
            return None
        return self.last_written + self.interval - time.monotonic()

    def build(self, final: bool) -> tuple[str, bytes]:
        """The next checkpoint's key and bytes; nothing changes until `stored`."""
        body: dict[str, Any] = {
            "v": CHECKPOINT_VERSION,
            "chain": self.chain,
            "n": self.next_checkpoint,
            "ts": self.clock(),
            "final": final,
            "prev": (
                {"n": self.next_checkpoint - 1, "hash": self.previous_checkpoint}
                if self.previous_checkpoint is not None
                else None
            ),
            "head": {"n": self.next_link - 1, "hash": self.head} if self.next_link else None,
            "links": self.pending,
            "key_id": self.key_id,
        }
        if self.next_checkpoint == 0:
            body["predecessor"] = self._predecessor()
        signature = self.key.sign(_canonical(body))
        body["signature"] = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        return checkpoint_key(self.chain, self.next_checkpoint), _canonical(body)

    def _predecessor(self) -> dict[str, Any] | None:
        if self.last_file is None:
            return None
        try:
            last = orjson.loads(self.last_file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            logger.warning(
                "checkpoints: %s unreadable, no predecessor named: %s", self.last_file, exc
            )
            return None
        if not isinstance(last, dict) or set(last) != {"chain", "n", "hash"}:
            return None
        return last

    def failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.last_written = time.monotonic()

    def stored(self, data: bytes, final: bool) -> None:
        self.previous_checkpoint = hashlib.sha256(data).hexdigest()
        self.next_checkpoint += 1
        self.pending = []
        self.last_written = time.monotonic()
        self.final_written = final
        self.written += 1
        self.last_error = None
        if self.last_file is not None:
            last = {
                "chain": self.chain,
                "n": self.next_checkpoint - 1,
                "hash": self.previous_checkpoint,
            }
            try:
                _write_new(self.last_file, _canonical(last), 0o600)
            except OSError as exc:
                logger.warning(
                    "checkpoints: cannot note the last checkpoint in %s: %s", self.last_file, exc
                )


# --- reading and checking checkpoints --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored checkpoint, parsed; `hash` is the sha256 of its stored bytes."""

    key: str
    chain: str
    n: int
    ts: float
    final: bool
    prev: tuple[int, str] | None
    head: tuple[int, str] | None
    links: tuple[dict[str, Any], ...]
    key_id: str
    signature: bytes | None
    signed_bytes: bytes
    hash: str
    predecessor: tuple[str, int, str] | None = None
    """(chain, n, hash) of the last checkpoint of the process that used the spool before."""

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.ts))


def parse_checkpoint(key: str, data: bytes) -> Checkpoint:
    """A stored checkpoint; CheckpointFormatError when it is not one."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CheckpointFormatError(f"{key}: not JSON") from None
    if not isinstance(raw, dict) or raw.get("v") != CHECKPOINT_VERSION:
        raise CheckpointFormatError(f"{key}: not a version {CHECKPOINT_VERSION} checkpoint")
    try:
        signature_text = raw.pop("signature", None)
        signature = _b64(signature_text.encode()) if isinstance(signature_text, str) else None
        prev, head = raw.get("prev"), raw.get("head")
        links = raw.get("links")
        if not isinstance(links, list) or not all(isinstance(link, dict) for link in links):
            raise TypeError("links")
        ts, n = raw["ts"], raw["n"]
        if not isinstance(n, int) or not isinstance(ts, int | float) or isinstance(n, bool):
            raise TypeError("n, ts")
        return Checkpoint(
            key=key,
            chain=str(raw["chain"]),
            n=n,
            ts=float(ts),
            final=raw.get("final") is True,
            prev=(int(prev["n"]), str(prev["hash"])) if prev is not None else None,
            head=(int(head["n"]), str(head["hash"])) if head is not None else None,
            links=tuple(links),
            key_id=str(raw.get("key_id")),
            signature=signature,
            signed_bytes=_canonical(raw),
            hash=hashlib.sha256(data).hexdigest(),
            predecessor=(
                (str(predecessor["chain"]), int(predecessor["n"]), str(predecessor["hash"]))
                if isinstance(predecessor := raw.get("predecessor"), dict)
                else None
            ),
        )
    except (KeyError, TypeError, ValueError):
        raise CheckpointFormatError(f"{key}: fields missing or of the wrong type") from None


@dataclass(slots=True)
class ChainState:
    """What a chain's checkpoints say, and what is wrong with them.

    `links` maps link n to the link a checkpoint holds (and the checkpoint);
    `signed` is False when no public key was given to check the signatures.
    """

    chain: str
    checkpoints: int = 0
    last: Checkpoint | None = None
    links: dict[int, tuple[dict[str, Any], Checkpoint]] = field(default_factory=dict)
    by_number: dict[int, Checkpoint] = field(default_factory=dict)
    successor: str | None = None
    """The writer that started on the same spool next, and named this one's last checkpoint."""
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(kind, message): kind `signature` or `checkpoint`, as `catalog.Problem.kind`."""
    signed: bool = False

    @property
    def genesis(self) -> Checkpoint | None:
        return self.by_number.get(0)

    def flag(self, message: str, kind: str = "checkpoint") -> None:
        self.problems.append((kind, message))

    @property
    def final(self) -> bool:
        return self.last is not None and self.last.final

    @property
    def head(self) -> int:
        """The last link a checkpoint covers; -1 when none."""
        return self.last.head[0] if self.last is not None and self.last.head else -1

    def status(self) -> str:
        last = self.last
        if last is None:
            return f"writer {self.chain}: no checkpoint"
        covered = f"{self.head + 1} segment(s)"
        if last.final:
            return (
                f"writer {self.chain}: stopped cleanly (final checkpoint {last.n} at "
                f"{last.when}, {covered})"
            )
        after = f"; writer {self.successor} started on its spool next" if self.successor else ""
        return (
            f"writer {self.chain}: running or not stopped cleanly (last checkpoint {last.n} "
            f"at {last.when}, {covered}{after})"
        )


def check_chain(
    chain: str,
    stored: Iterable[tuple[str, bytes]],
    public_keys: Mapping[str, Ed25519PublicKey] | None,
) -> ChainState:
    """Check one chain's checkpoints: signatures, the checkpoint chain, the link chain."""
    state = ChainState(chain, signed=public_keys is not None)
    parsed: dict[int, Checkpoint] = {}
    for key, data in stored:
        try:
            checkpoint = parse_checkpoint(key, data)
        except CheckpointFormatError as exc:
            state.flag(f"checkpoint damaged: {exc}")
            continue
        if checkpoint.chain != chain or parse_checkpoint_key(key) != (chain, checkpoint.n):
            state.flag(f"checkpoint {key}: names chain {checkpoint.chain!r} n {checkpoint.n}")
            continue
        if public_keys is not None and not _signature_ok(checkpoint, public_keys, state):
            continue
        parsed[checkpoint.n] = checkpoint
    state.checkpoints = len(parsed)
    state.by_number = parsed
    if not parsed:
        return state
    top = max(parsed)
    missing = [n for n in range(top + 1) if n not in parsed]
    if missing:
        state.flag(
            f"writer {chain}: checkpoint(s) {describe_ranges(missing)} missing "
            "(deleted, or damaged beyond reading)"
        )
    expected_link = 0
    previous_head = GENESIS_HASH
    for n in range(top + 1):
        checkpoint = parsed.get(n)
        if checkpoint is None:
            expected_link, previous_head = -1, ""
            continue
        before = parsed.get(n - 1)
        if n and before is not None and checkpoint.prev != (n - 1, before.hash):
            state.flag(
                f"writer {chain}: checkpoint {n} does not name checkpoint {n - 1} as stored "
                "(a checkpoint was replaced)"
            )
        if n == 0 and checkpoint.prev is not None:
            state.flag(f"writer {chain}: checkpoint 0 names a predecessor")
        if before is not None and before.final:
            state.flag(f"writer {chain}: checkpoint {n} follows the final one")
        for link in checkpoint.links:
            number = link.get("n")
            if not isinstance(number, int):
                state.flag(f"writer {chain}: checkpoint {n} holds a malformed link")
                continue
            if expected_link >= 0 and (
                number != expected_link or link.get("prev") != previous_head
            ):
                state.flag(
                    f"writer {chain}: link {number} in checkpoint {n} does not follow link "
                    f"{expected_link - 1}"
                )
            state.links[number] = (link, checkpoint)
            expected_link, previous_head = number + 1, link_hash(link)
        head = checkpoint.head
        if expected_link >= 0 and head is not None and head != (expected_link - 1, previous_head):
            state.flag(f"writer {chain}: checkpoint {n}'s head is not its last link")
    state.last = parsed[top]
    return state


def check_predecessors(states: Mapping[str, ChainState]) -> None:
    """Each process's genesis names the last checkpoint its spool's previous process stored:
    that checkpoint must be there, as named, and be that process's last."""
    for state in states.values():
        genesis = state.genesis
        if genesis is None or genesis.predecessor is None:
            continue
        chain, n, digest = genesis.predecessor
        before = states.get(chain)
        stored = before.by_number.get(n) if before is not None else None
        if stored is None:
            (before or state).flag(
                f"writer {chain}: checkpoint {n} is missing: writer {state.chain}, which "
                "started on the same spool after it, names it as that writer's last "
                "(its newest checkpoints were deleted)"
            )
        elif stored.hash != digest:
            before.flag(
                f"writer {chain}: checkpoint {n} is not the one writer {state.chain} "
                "names as its last (replaced)"
            )
        elif before.last is not None and before.last.n != n:
            before.flag(
                f"writer {chain}: checkpoints after {n} exist, but writer {state.chain} "
                f"started on the same spool after checkpoint {n}"
            )
        else:
            before.successor = state.chain


def _signature_ok(
    checkpoint: Checkpoint, public_keys: Mapping[str, Ed25519PublicKey], state: ChainState
) -> bool:
    public = public_keys.get(checkpoint.key_id)
    if public is None:
        state.flag(
            f"checkpoint {checkpoint.key}: signed by key {checkpoint.key_id!r}, "
            "not one of the public keys given",
            "signature",
        )
        return False
    try:
        public.verify(checkpoint.signature or b"", checkpoint.signed_bytes)
    except InvalidSignature:
        state.flag(
            f"checkpoint {checkpoint.key}: signature invalid (altered, or not the gateway's)",
            "signature",
        )
        return False
    return True


def public_keys_by_id(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    return {key_id(key): key for key in keys}


def describe_ranges(numbers: list[int]) -> str:
    """`[1, 2, 3, 7]` as `1..3, 7`."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(f"{low}..{high}" if low != high else str(low) for low, high in runs)
