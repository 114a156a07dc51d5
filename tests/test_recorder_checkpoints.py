"""Writer chains and signed checkpoints: deletions and rewrites of stored sessions are reported.

A real spool records sessions into a local store with a checkpoint key; the
tests then delete and rewrite objects the way someone with write access to the
store could, and hold `Archive.verify_session` / `verify_archive` to what they
must report.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hoopgw.recorder.catalog import (
    Archive,
    SessionNotFound,
    StreamSummary,
    segment_key,
    summary_key,
)
from hoopgw.recorder.checkpoints import (
    CheckpointChain,
    CheckpointKeyError,
    check_chain,
    checkpoint_key,
    key_id,
    load_public_key,
    load_signing_key,
    new_checkpoint_key,
    public_key_pem,
    public_keys_by_id,
    spool_signing_key,
)
from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.store import LocalStore
from tests import stack
from tests.tampering import rewrite_session

DEADLINE = 20.0


def statement(session_id: str, number: int) -> dict[str, Any]:
    return {
        "kind": "request",
        "session_id": session_id,
        "ts": time.time(),
        "flow_id": f"f{number}",
        "method": "POST",
        "path": "/queries/v1/query-request",
        "sql": f"select {number}",
    }


def session_end(session_id: str) -> dict[str, Any]:
    return {"kind": "session_end", "session_id": session_id, "ts": time.time(), "reason": "logout"}


class Recorder:
    """One spool process over a shared store; `segments` seals after each appended batch."""

    def __init__(
        self,
        tmp_path: Path,
        store: LocalStore,
        key: Ed25519PrivateKey,
        interval: float = 3600,
        directory: Path | None = None,
    ) -> None:
        self.writer = new_writer_id()
        self.spool = Spool(
            SpoolConfig(
                directory or tmp_path / f"spool-{self.writer}",
                writer_id=self.writer,
                max_bytes=1 << 30,
                rollup_interval=None,
                checkpoint_key=key,
                checkpoint_interval=interval,
                retry_initial=0.02,
                retry_max=0.1,
            ),
            store,
        )
        self.spool.start()

    def segment(self, session_id: str, numbers: range, end: bool = False) -> None:
        for number in numbers:
            self.spool.append(statement(session_id, number)).result(DEADLINE)
        if end:
            self.spool.append(session_end(session_id)).result(DEADLINE)
        assert self.spool.flush(DEADLINE)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return load_signing_key(new_checkpoint_key().encode())


@pytest.fixture
def public(key: Ed25519PrivateKey) -> dict[str, Any]:
    return public_keys_by_id([load_public_key(public_key_pem(key).encode())])


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def recorded(
    tmp_path: Path, store: LocalStore, key: Ed25519PrivateKey
) -> Callable[..., tuple[Recorder, list[str]]]:
    """Three sessions by one writer, two or three segments each; `stop` closes it cleanly."""

    def record(stop: bool = True, interval: float = 3600) -> tuple[Recorder, list[str]]:
        recorder = Recorder(tmp_path, store, key, interval)
        sessions = [new_session_id() for _ in range(3)]
        for session in sessions:
            recorder.segment(session, range(0, 3))
            recorder.segment(session, range(3, 6))
        recorder.segment(sessions[2], range(6, 8), end=True)
        if stop:
            recorder.spool.close()
        return recorder, sessions

    return record


def kinds(report) -> set[str]:
    return {problem.kind for problem in report.problems}


def messages(report) -> str:
    return "\n".join(str(problem) for problem in report.problems)


def test_a_cleanly_stopped_writer_verifies_intact_and_says_so(recorded, store, public) -> None:
    recorder, sessions = recorded()
    archive = Archive(store)

    report = archive.verify_archive(public)

    assert report.ok, [str(p) for s in report.sessions for p in s.problems] + report.problems
    assert len(report.sessions) == 3
    [status] = report.chains
    assert f"writer {recorder.writer}: stopped cleanly" in status
    assert "nothing missing up to it" in status
    session = archive.verify_session(sessions[0], public)
    assert session.ok and session.verdict == "intact"
    assert any("stopped cleanly" in line for line in session.chains)
    assert not session.unchecked


def test_a_deleted_tail_segment_and_summary_is_a_cut_tail(recorded, store, public) -> None:
    recorder, sessions = recorded()
    archive = Archive(store)
    last = sessions[2]
    tail = segment_key(last, recorder.writer, 6)
    store.delete(tail)
    store.delete(summary_key(last, recorder.writer))

    report = archive.verify_session(last, public)

    assert not report.ok and report.verdict == "cut_tail"
    [problem] = [p for p in report.problems if p.kind == "cut_tail"]
    assert problem.segment == tail and problem.seq == 6
    assert "records seq 6..8" in problem.message
    whole = archive.verify_archive(public)
    assert not whole.ok
    assert any(p.kind == "cut_tail" and "links 6" in p.message for p in whole.problems)


def test_a_whole_deleted_session_is_reported_not_unknown(recorded, store, public) -> None:
    recorder, sessions = recorded()
    archive = Archive(store)
    gone = sessions[1]
    for key in [*archive.segments(gone), summary_key(gone, recorder.writer)]:
        store.delete(key)

    report = archive.verify_session(gone, public)

    assert report.verdict == "cut_tail"
    assert {p.seq for p in report.problems} == {0, 3}
    with pytest.raises(SessionNotFound):
        archive.verify_session(new_session_id(), public)


def test_a_deleted_middle_segment_is_reported_with_its_seq(recorded, store, public) -> None:
    recorder, sessions = recorded()
    archive = Archive(store)
    middle = segment_key(sessions[2], recorder.writer, 3)
    store.delete(middle)

    report = archive.verify_session(sessions[2], public)

    assert "missing" in kinds(report)
    [problem] = [p for p in report.problems if p.kind == "missing" and p.segment == middle]
    assert problem.seq == 3 and "deleted from the middle" in problem.message


def test_a_consistent_rewrite_is_reported_as_rewritten(recorded, store, public) -> None:
    recorder, sessions = recorded()
    archive = Archive(store)
    assert rewrite_session(store, archive, sessions[1], recorder.writer, "select 4") == 1

    without_checkpoints = archive.verify_session(sessions[1], public)
    assert without_checkpoints.verdict == "rewritten"
    rewritten = [p for p in without_checkpoints.problems if p.kind == "rewritten"]
    assert any(p.segment == segment_key(sessions[1], recorder.writer, 3) for p in rewritten)
    assert not [p for p in without_checkpoints.problems if p.kind == "record"]


def test_an_altered_checkpoint_fails_its_signature(recorded, store, public) -> None:
    recorder, sessions = recorded()
    archive = Archive(store)
    assert rewrite_session(store, archive, sessions[1], recorder.writer, "select 4") == 1
    # the rewriter also fixes the checkpoint's links, but cannot sign them
    key = checkpoint_key(recorder.writer, 1)
    checkpoint = orjson.loads(store.get(key))
    rewritten_links = {
        link["first_seq"]: link
        for link in StreamSummary.from_json(
            store.get(summary_key(sessions[1], recorder.writer))
        ).links
    }
    for link in checkpoint["links"]:
        if link["session_id"] == sessions[1]:
            link["last_hash"] = rewritten_links[link["first_seq"]]["last_hash"]
    store.put(key, orjson.dumps(checkpoint, option=orjson.OPT_SORT_KEYS))

    with_key = archive.verify_session(sessions[1], public)
    without_key = archive.verify_session(sessions[1])

    assert with_key.verdict == "signature", messages(with_key)
    assert any("signature invalid" in p.message for p in with_key.problems), messages(with_key)
    assert without_key.unchecked and "no --public-key" in without_key.unchecked[0]


def test_a_deleted_checkpoint_breaks_the_checkpoint_chain(recorded, store, public) -> None:
    recorder, _ = recorded(interval=0.001)  # a checkpoint after (nearly) every segment
    assert store.exists(checkpoint_key(recorder.writer, 3))
    store.delete(checkpoint_key(recorder.writer, 1))

    report = Archive(store).verify_archive(public)

    assert any(
        p.kind == "checkpoint" and "checkpoint(s) 1 missing" in p.message for p in report.problems
    )


def test_a_writer_that_did_not_stop_cleanly_is_told_apart(recorded, store, public) -> None:
    recorder, sessions = recorded(stop=False, interval=0.001)
    archive = Archive(store)
    chain = recorder.spool._uploader.checkpoints
    stack.wait_until(lambda: not chain.pending, DEADLINE, "every link checkpointed")
    chain.interval = 3600
    recorder.segment(sessions[0], range(6, 7))  # after the last checkpoint

    report = archive.verify_archive(public)

    assert report.ok, report.problems
    [status] = report.chains
    assert "not stopped cleanly" in status and "nothing missing up to it" in status
    assert "1 segment(s) after it, chained but not yet signed" in status
    session = archive.verify_session(sessions[0], public)
    assert session.ok
    assert any("not yet signed" in note for note in session.notes)
    recorder.spool.close()


def test_another_key_is_not_trusted(recorded, store) -> None:
    recorded()
    stranger = public_keys_by_id([Ed25519PrivateKey.generate().public_key()])

    report = Archive(store).verify_archive(stranger)

    assert not report.ok
    assert any(
        p.kind == "signature" and "not one of the public keys" in p.message for p in report.problems
    )


def test_checkpoint_chain_unit(key) -> None:
    chain = CheckpointChain(new_writer_id(), key, interval=60, clock=lambda: 1_700_000_000.0)
    stored = []
    for number in range(3):
        link = chain.link(new_session_id(), chain.chain, 0, number, "a" * 64)
        chain.commit(link)
        k, data = chain.build(final=number == 2)
        chain.stored(data, final=number == 2)
        stored.append((k, data))
    keys = public_keys_by_id([key.public_key()])

    state = check_chain(chain.chain, stored, keys)
    assert not state.problems and state.final and state.head == 2
    tampered = stored[1][1].replace(b'"final":false', b'"final":true')
    state = check_chain(chain.chain, [stored[0], (stored[1][0], tampered), stored[2]], keys)
    assert [kind for kind, _ in state.problems] == ["signature", "checkpoint"]
    with pytest.raises(ValueError):
        chain.commit(link)


def test_keys_load_from_seed_or_pem_and_never_echo(tmp_path: Path) -> None:
    seed = new_checkpoint_key()
    key = load_signing_key(seed.encode())
    assert key_id(load_public_key(public_key_pem(key).encode())) == key_id(key)
    raw_public = base64.b64encode(load_public_key(public_key_pem(key).encode()).public_bytes_raw())
    assert key_id(load_public_key(raw_public)) == key_id(key)
    with pytest.raises(CheckpointKeyError) as caught:
        load_signing_key(b"not-a-key-" + seed.encode())
    assert seed not in str(caught.value)

    made, public_path, created = spool_signing_key(tmp_path / "spool")
    again, _, created_again = spool_signing_key(tmp_path / "spool")
    assert created and not created_again and key_id(made) == key_id(again)
    assert (tmp_path / "spool" / "checkpoint-key").stat().st_mode & 0o777 == 0o600
    assert key_id(load_public_key(public_path.read_bytes())) == key_id(made)


def test_the_genesis_checkpoint_is_written_at_start(tmp_path, store, key) -> None:
    recorder = Recorder(tmp_path, store, key)
    first = checkpoint_key(recorder.writer, 0)
    stack.wait_until(lambda: store.exists(first), DEADLINE, "the genesis checkpoint")
    assert orjson.loads(store.get(first))["head"] is None
    recorder.spool.close()
    assert orjson.loads(store.get(checkpoint_key(recorder.writer, 1)))["final"] is True


def test_a_deleted_final_checkpoint_shows_through_the_next_process(
    tmp_path, store, key, public
) -> None:
    spool_dir = tmp_path / "shared-spool"
    first = Recorder(tmp_path, store, key, directory=spool_dir)
    first.segment(new_session_id(), range(0, 2), end=True)
    first.spool.close()
    second = Recorder(tmp_path, store, key, directory=spool_dir)
    second.segment(new_session_id(), range(0, 2), end=True)
    second.spool.close()
    archive = Archive(store)
    genesis = orjson.loads(store.get(checkpoint_key(second.writer, 0)))
    assert genesis["predecessor"]["chain"] == first.writer

    intact = archive.verify_archive(public)
    final = checkpoint_key(first.writer, genesis["predecessor"]["n"])
    store.delete(final)
    cut = archive.verify_archive(public)

    assert intact.ok, intact.problems
    assert any(f"writer {first.writer}: stopped cleanly" in line for line in intact.chains)
    assert not cut.ok
    assert any(
        p.kind == "checkpoint" and "its newest checkpoints were deleted" in p.message
        for p in cut.problems
    ), cut.problems
