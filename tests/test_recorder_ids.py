"""Session ids, writer ids and the record schema with its hash chain."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from hoopgw.recorder.ids import (
    InvalidSessionId,
    InvalidWriterId,
    new_session_id,
    new_writer_id,
    parse_session_id,
    parse_writer_id,
    session_date,
    session_start,
)
from hoopgw.recorder.schema import (
    FIELDS,
    FORMAT_VERSION,
    GENESIS_HASH,
    KINDS,
    canonical_bytes,
    chain_record,
    is_blocked,
    is_error,
    is_statement,
    record_hash,
    validate_record,
)

CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_session_ids_are_canonical_uuid7_and_time_ordered() -> None:
    ids = [new_session_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids of one process must sort in creation order"
    for text in ids[:50]:
        assert CANONICAL.fullmatch(text)
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_session_start_is_the_embedded_utc_time() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=2)
    started = session_start(new_session_id())
    after = datetime.now(UTC) + timedelta(milliseconds=2)
    assert started.tzinfo == UTC
    assert before <= started <= after


def test_backdated_session_id_carries_its_date() -> None:
    when = datetime(2024, 2, 29, 23, 59, 59, 123000, tzinfo=UTC)
    session_id = new_session_id(at=when)
    assert session_start(session_id) == when
    assert session_date(session_id) == "2024-02-29"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../../etc/passwd",
        "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f/..",
        "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6",
        "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f0",
        "0190F3C4-7B1A-7C2E-9D4F-1A2B3C4D5E6F",
        "0190f3c4-7b1a-4c2e-9d4f-1a2b3c4d5e6f",
        "0190f3c4-7b1a-7c2e-cd4f-1a2b3c4d5e6f",
        "0190f3c47b1a7c2e9d4f1a2b3c4d5e6f",
        "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f\n",
        "0190f3c4\\7b1a-7c2e-9d4f-1a2b3c4d5e6f",
        str(uuid.uuid4()),
    ],
)
def test_parse_session_id_rejects_anything_not_canonical_uuid7(text: str) -> None:
    with pytest.raises(InvalidSessionId, match="expected a lowercase UUIDv7"):
        parse_session_id(text)


def test_parse_session_id_rejects_non_strings_and_bounds_the_message() -> None:
    with pytest.raises(InvalidSessionId, match="of type int"):
        parse_session_id(12)  # type: ignore[arg-type]
    with pytest.raises(InvalidSessionId) as caught:
        parse_session_id("x" * 10_000)
    assert len(str(caught.value)) < 200


def test_parse_session_id_accepts_canonical() -> None:
    session_id = new_session_id()
    assert parse_session_id(session_id) == session_id
    assert isinstance(parse_session_id("0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"), str)


def test_a_checked_session_id_is_remembered_but_the_check_stays_exact(monkeypatch) -> None:
    from hoopgw.recorder import ids

    monkeypatch.setattr(ids, "_CHECKED_LIMIT", 3)
    monkeypatch.setattr(ids, "_checked_session_ids", set())
    checked = [new_session_id() for _ in range(5)]
    for session_id in checked:
        assert parse_session_id(session_id) == session_id
        assert parse_session_id(session_id) == session_id  # from the memo
    assert 0 < len(ids._checked_session_ids) <= 3  # bounded
    assert checked[-1] in ids._checked_session_ids

    class Sneaky(str):
        """Equal to a checked id, but not one: only exact `str` values use the memo."""

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash(checked[-1])

    with pytest.raises(InvalidSessionId):
        parse_session_id(Sneaky("../../etc/passwd"))
    with pytest.raises(InvalidSessionId):
        parse_session_id(checked[-1].upper())


def test_writer_ids_are_short_unique_and_key_safe() -> None:
    writers = {new_writer_id() for _ in range(1000)}
    assert len(writers) == 1000
    for writer in list(writers)[:20]:
        assert re.fullmatch(r"[0-9a-f]{12}", writer)
        assert parse_writer_id(writer) == writer
    for bad in ("", "ab", "a/b/c", "ABCDEF", "abc-def", "a" * 40):
        with pytest.raises(InvalidWriterId):
            parse_writer_id(bad)


def _record(**extra: object) -> dict:
    record = {
        "v": FORMAT_VERSION,
        "kind": "request",
        "session_id": new_session_id(),
        "writer": new_writer_id(),
        "seq": 0,
        "ts": 1700000000.25,
        "flow_id": "f1",
        "method": "POST",
        "path": "/queries/v1/query-request?requestId=1",
        "sql": "select 1",
    }
    record.update(extra)
    return record


def test_chain_record_hash_is_sha256_of_canonical_encoding_without_hash() -> None:
    record = _record()
    line = chain_record(record, GENESIS_HASH)
    assert line.endswith(b"}\n")
    parsed = orjson.loads(line)
    assert parsed == record
    assert parsed["prev_hash"] == GENESIS_HASH
    assert parsed["hash"] == record_hash(parsed)
    assert canonical_bytes(parsed) == orjson.dumps(
        {k: v for k, v in parsed.items() if k != "hash"}, option=orjson.OPT_SORT_KEYS
    )
    assert validate_record(parsed) == []
    changed = dict(parsed, sql="select 2")
    assert record_hash(changed) != parsed["hash"]


def test_chain_links_records() -> None:
    first = _record()
    chain_record(first, GENESIS_HASH)
    second = _record(session_id=first["session_id"], writer=first["writer"], seq=1)
    chain_record(second, first["hash"])
    assert second["prev_hash"] == first["hash"]
    assert validate_record(second) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"kind": "nonsense"}, "unknown kind"),
        ({"v": 99}, "unsupported format version"),
        ({"seq": "1"}, "field 'seq' has type str"),
        ({"ts": True}, "field 'ts' has type bool"),
        ({"session_id": "../x"}, "session_id is not a UUIDv7"),
        ({"hash": "abc"}, "hash is not 64 lowercase hex digits"),
        ({"prev_hash": "f" * 64}, "seq 0 must have the genesis prev_hash"),
        ({"method": None}, "field 'method' has type NoneType"),
    ],
)
def test_validate_record_names_the_problem(change: dict, problem: str) -> None:
    record = _record()
    chain_record(record, GENESIS_HASH)
    record.update(change)
    assert any(problem in text for text in validate_record(record)), validate_record(record)


def test_validate_record_requires_kind_fields() -> None:
    record = _record()
    del record["path"]
    chain_record(record, GENESIS_HASH)
    assert "missing field 'path'" in validate_record(record)
    end = {k: record[k] for k in ("v", "session_id", "writer", "seq", "ts")}
    end["kind"] = "session_end"
    chain_record(end, GENESIS_HASH)
    assert validate_record(end) == ["missing field 'reason'"]


def test_every_kind_has_a_field_list() -> None:
    assert (
        set(FIELDS)
        == set(KINDS)
        == {
            "session_start",
            "request",
            "response",
            "error",
            "refusal",
            "session_end",
            "chunk",
            "refusal_summary",
            "approval_request",
            "approval_decision",
            "cortex",
            "mcp_call",
        }
    )
    for fields in FIELDS.values():
        assert {"v", "kind", "session_id", "writer", "seq", "ts", "prev_hash", "hash"} <= set(
            fields
        )


def test_summary_classifiers() -> None:
    assert is_statement({"kind": "request", "sql": "select 1"})
    assert is_statement({"kind": "refusal", "sql": "drop table t"})
    assert not is_statement({"kind": "request"})
    assert not is_statement({"kind": "response", "sql": "select 1"})
    assert is_error({"kind": "error", "error": "reset"})
    assert is_error({"kind": "response", "status": 200, "success": False})
    assert is_error({"kind": "response", "status": 502})
    assert not is_error({"kind": "response", "status": 200, "success": True})
    assert not is_error({"kind": "response", "status": 200, "success": False, "refusal": {}})
    assert is_blocked({"kind": "refusal"})
    assert is_blocked({"kind": "request", "guardrail": {"decision": "block"}})
    assert not is_blocked({"kind": "request", "guardrail": {"decision": "allow"}})
