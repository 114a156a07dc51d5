"""The roll-up entry the uploader stores for a segment is, byte for byte, the one its stored
records give, however the uploader reads them (recorder/spool/uploader.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
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
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.spool.uploader import _parse_lines
from hoopgw.recorder.store import LocalStore
from tests.test_rollup import DEADLINE, record, varied_session


def test_segment_entries_are_exactly_those_of_the_parsed_segments(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spool = Spool(
        SpoolConfig(
            tmp_path / "spool",
            writer_id=new_writer_id(),
            max_bytes=1 << 30,
            rollup_interval=3600,
            segment_max_bytes=4096,  # several segments per session
        ),
        store,
    )
    spool.start()
    try:
        for user in range(3):
            record(spool, varied_session(new_session_id(), user=user))
        assert spool.flush(DEADLINE)
    finally:
        spool.close()
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
