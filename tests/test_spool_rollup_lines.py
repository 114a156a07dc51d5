"""The roll-up entry the uploader stores for a segment is, byte for byte, the one its stored
records give, however the uploader reads them (recorder/spool/uploader.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest
import zstandard

from hoopgw.recorder.catalog import segment_key
from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.index import list_versions
from hoopgw.recorder.rollup import (
    ROLLUP_VERSION,
    ROLLUPS,
    SEGMENTS_KIND,
    segment_entry,
    thin_record,
)
from hoopgw.recorder.segment import decompress_segment
from hoopgw.recorder.segment import parse_lines as _parse_lines
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.spool.entries import SegmentEntries
from hoopgw.recorder.store import LocalStore
from tests.test_rollup import DEADLINE, record, varied_session


@pytest.mark.parametrize("described_by", ["this process", "the helper process"])
def test_segment_entries_are_exactly_those_of_the_parsed_segments(
    tmp_path: Path, described_by: str
) -> None:
    store = LocalStore(tmp_path / "store")
    spool = Spool(
        SpoolConfig(
            tmp_path / "spool",
            writer_id=new_writer_id(),
            max_bytes=1 << 30,
            rollup_interval=3600,
            segment_max_bytes=4096,  # several segments per session
            rollup_helper_min_bytes=0 if described_by == "the helper process" else 1 << 30,
        ),
        store,
    )
    spool.start()
    try:
        for user in range(3):
            record(spool, varied_session(new_session_id(), user=user))
        assert spool.flush(DEADLINE)
        stats = spool.stats()
    finally:
        spool.close()
    assert stats.rollup_helper_failures == 0
    if described_by == "the helper process":
        assert stats.rollup_entries_by_helper == stats.uploaded_segments > 3
    else:
        assert stats.rollup_entries_by_helper == 0
    entries = [
        line
        for key, _ in list_versions(store, f"{ROLLUPS}/")
        if f"-{SEGMENTS_KIND}-" in key
        for line in zstandard.ZstdDecompressor()
        .stream_reader(store.get(key), read_across_frames=True)
        .read()
        .splitlines()
    ]
    segments = dict(list_versions(store, "sessions/"))
    assert len(entries) == len(segments) > 3
    for line in entries:
        entry = orjson.loads(line)
        stored = decompress_segment(store.get(entry["key"])).splitlines()
        records = [orjson.loads(record_line) for record_line in stored]
        assert entry["version"] == segments[entry["key"]]
        assert line + b"\n" == segment_entry(entry["key"], entry["version"], records)


def test_a_segment_entry_is_the_one_shot_encoding_of_its_thinned_records() -> None:
    """Encoding record by record (so the GIL can change hands between them) gives the
    bytes that encoding the whole list at once gives."""
    records = varied_session(new_session_id(), user=1)
    key = segment_key(records[0]["session_id"], new_writer_id(), 0)
    one_shot = {
        "v": ROLLUP_VERSION,
        "key": key,
        "version": "v1",
        "records": [thin_record(item) for item in records],
    }
    assert segment_entry(key, "v1", iter(records)) == orjson.dumps(one_shot) + b"\n"
    empty = {"v": ROLLUP_VERSION, "key": key, "version": "v1", "records": []}
    assert segment_entry(key, "v1", []) == orjson.dumps(empty) + b"\n"


def test_spool_lines_are_read_in_place_skipping_what_is_not_a_record() -> None:
    lines = [
        b'{"kind":"request","n":1}',
        b"",
        b"[1, 2]",
        b"not json",
        b'{"kind":"response","body":{"text":"a\\nb"}}',
        b'{"kind":"request","n":2}',
    ]
    data = b"\n".join(lines)
    assert list(_parse_lines(data)) == [
        {"kind": "request", "n": 1},
        {"kind": "response", "body": {"text": "a\nb"}},
        {"kind": "request", "n": 2},
    ]
    assert list(_parse_lines(data + b"\n")) == list(_parse_lines(data))
    assert list(_parse_lines(data + b'\n{"torn')) == list(_parse_lines(data))
    assert list(_parse_lines(b"")) == list(_parse_lines(b"\n\n")) == []


def _sealed_segment(tmp_path: Path) -> tuple[str, Path, bytes]:
    records = varied_session(new_session_id(), user=2)
    data = b"".join(orjson.dumps(item) + b"\n" for item in records)
    path = tmp_path / "sealed.jsonl"
    path.write_bytes(data)
    return segment_key(records[0]["session_id"], new_writer_id(), 0), path, data


def test_the_helper_process_describes_a_large_segment_as_this_process_would(
    tmp_path: Path,
) -> None:
    key, path, data = _sealed_segment(tmp_path)
    here = segment_entry(key, "v1", _parse_lines(data))
    entries = SegmentEntries(min_bytes=len(data))
    try:
        assert entries.describe(key, "v1", path, data) == here
        helper = entries.helper_pid()
        assert helper is not None and helper != os.getpid()
        assert (entries.by_helper, entries.here) == (1, 0)
        # one byte short of the threshold: described here, the helper not asked
        smaller = SegmentEntries(min_bytes=len(data) + 1)
        assert smaller.describe(key, "v1", path, data) == here
        assert (smaller.by_helper, smaller.here, smaller.helper_pid()) == (0, 1, None)
    finally:
        entries.close()
    assert entries.helper_pid() is None


def test_the_helper_inherits_none_of_the_variables_the_gateway_reads_secrets_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "helper-must-not-see-" + os.urandom(8).hex()
    monkeypatch.setenv("HOOPGW_UPSTREAM_PASSWORD", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    key, path, data = _sealed_segment(tmp_path)
    entries = SegmentEntries(min_bytes=0)
    try:
        assert entries.describe(key, "v1", path, data) == segment_entry(
            key, "v1", _parse_lines(data)
        )
        helper = entries.helper_pid()
        assert helper is not None and entries.by_helper == 1
        inherited = Path(f"/proc/{helper}/environ").read_bytes().split(b"\0")
        names = {variable.partition(b"=")[0] for variable in inherited}
        assert b"PATH" in names
        assert not names & {b"HOOPGW_UPSTREAM_PASSWORD", b"AWS_SECRET_ACCESS_KEY"}
        assert secret.encode() not in b"\0".join(inherited)
    finally:
        entries.close()


def test_a_killed_helper_costs_nothing_but_time_the_entry_is_made_here_then_by_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, path, data = _sealed_segment(tmp_path)
    here = segment_entry(key, "v1", _parse_lines(data))
    entries = SegmentEntries(min_bytes=0, retry=0.0)
    try:
        assert entries.describe(key, "v1", path, data) == here
        killed = entries.helper_pid()
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        assert entries.describe(key, "v1", path, data) == here
        assert (entries.by_helper, entries.here, entries.helper_failures) == (1, 1, 1)
        assert "the helper process failed (it exited" in caplog.text
        assert entries.describe(key, "v1", path, data) == here
        assert entries.by_helper == 2 and entries.helper_pid() not in (None, killed)
    finally:
        entries.close()


def test_while_the_helper_rests_after_a_failure_segments_are_described_here(
    tmp_path: Path,
) -> None:
    key, path, data = _sealed_segment(tmp_path)
    entries = SegmentEntries(min_bytes=0, retry=3600.0)
    try:
        assert entries.describe(key, "v1", path, data)
        killed = entries.helper_pid()
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        for _ in range(3):
            entries.describe(key, "v1", path, data)
        assert (entries.by_helper, entries.here, entries.helper_failures) == (1, 3, 1)
        assert entries.helper_pid() is None
    finally:
        entries.close()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("the named file is gone", "FileNotFoundError"),
        ("no answer in time", "no answer in 0 s"),
    ],
)
def test_a_helper_that_cannot_describe_a_segment_leaves_it_to_this_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, reason: str
) -> None:
    key, path, data = _sealed_segment(tmp_path)
    here = segment_entry(key, "v1", _parse_lines(data))
    entries = SegmentEntries(min_bytes=0, timeout=0.0 if "time" in case else 60.0)
    try:
        if "gone" in case:
            path.unlink()  # the bytes the uploader read are still in hand
        assert entries.describe(key, "v1", path, data) == here
        assert (entries.by_helper, entries.here, entries.helper_failures) == (0, 1, 1)
        assert f"the helper process failed ({reason})" in caplog.text
        assert entries.helper_pid() is None, "a failed helper is stopped"
    finally:
        entries.close()
