"""Segments: one zstd frame of JSON lines, and loud failures when damaged."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
import zstandard

from hoopgw.recorder.segment import (
    SegmentError,
    compress_lines,
    decode_segment,
    decompress_segment,
    encode_segment,
)


def _records(count: int) -> list[dict]:
    # Random payloads keep zstd from finding matches, so a flipped byte lands in literal
    # data and only the content checksum can notice it.
    return [
        {"kind": "request", "seq": i, "sql": f"select {i}", "noise": os.urandom(24).hex()}
        for i in range(count)
    ]


def test_round_trip_is_one_frame_with_checksum_and_size() -> None:
    records = _records(200)
    data = encode_segment(records)
    params = zstandard.get_frame_parameters(data)
    assert params.has_checksum
    assert params.content_size == sum(len(orjson.dumps(r)) + 1 for r in records)
    assert decode_segment(data) == records


def test_empty_segment_round_trips() -> None:
    assert decode_segment(encode_segment([])) == []


def test_flipped_byte_is_a_checksum_error() -> None:
    data = bytearray(encode_segment(_records(50)))
    data[len(data) // 2] ^= 0x01
    with pytest.raises(SegmentError, match="checksum"):
        decode_segment(bytes(data))


def test_flipped_checksum_byte_is_a_checksum_error() -> None:
    data = bytearray(encode_segment(_records(5)))
    data[-1] ^= 0xFF
    with pytest.raises(SegmentError, match="checksum"):
        decode_segment(bytes(data))


def test_truncated_frame_is_reported() -> None:
    data = encode_segment(_records(50))
    with pytest.raises(SegmentError, match="truncated"):
        decode_segment(data[:-10])
    with pytest.raises(SegmentError, match="frame header"):
        decode_segment(data[:3])


def test_trailing_data_and_second_frames_are_refused() -> None:
    data = encode_segment(_records(3))
    with pytest.raises(SegmentError, match="trailing data"):
        decode_segment(data + data)


def test_frame_without_checksum_is_refused() -> None:
    plain = zstandard.ZstdCompressor(write_checksum=False).compress(b'{"a":1}\n')
    with pytest.raises(SegmentError, match="no content checksum"):
        decode_segment(plain)


def test_bad_json_names_the_line() -> None:
    data = compress_lines(b'{"a": 1}\n{"b": 2}\n{"c": \n{"d": 4}\n')
    with pytest.raises(SegmentError, match="bad JSON at line 3"):
        decode_segment(data)
    with pytest.raises(SegmentError, match="line 2 is not a JSON object"):
        decode_segment(compress_lines(b'{"a": 1}\n[1, 2]\n'))


def test_cut_last_line_is_reported() -> None:
    with pytest.raises(SegmentError, match="no newline"):
        decode_segment(compress_lines(b'{"a": 1}\n{"b": 2}'))


def test_decompress_returns_the_lines() -> None:
    assert decompress_segment(compress_lines(b'{"a":1}\n')) == b'{"a":1}\n'


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd command not installed")
def test_standard_zstd_tool_reads_and_checks_segments(tmp_path: Path) -> None:
    records = _records(20)
    path = tmp_path / "w-000000.jsonl.zst"
    path.write_bytes(encode_segment(records))
    subprocess.run(["zstd", "-q", "-t", str(path)], check=True)
    out = subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    assert [orjson.loads(line) for line in out.splitlines()] == records
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    assert subprocess.run(["zstd", "-q", "-t", str(path)], capture_output=True).returncode != 0
