"""`hoopgw verify`: is a recorded session exactly what the gateway wrote?"""

from __future__ import annotations

import contextlib

import click

from hoopgw.cli.common import (
    EXIT_FINDING,
    archive_errors,
    echo_json,
    echo_jsonl,
    format_option,
    open_archive,
    session_id_argument,
    store_options,
)
from hoopgw.recorder.catalog import verify_chunks
from hoopgw.recorder.segment import SegmentError


@click.command()
@session_id_argument
@store_options
@format_option
@archive_errors
def verify(session_id: str, store: str, s3_endpoint_url: str | None, output_format: str) -> None:
    """Check a session's segments, records and hash chains; exit 0 only when intact.

    \b
    Checks every segment's zstd frame and content checksum, every record
    against the record schema, each writer's sequence numbers (no gap, no
    repeat) and hash chain (each record's hash, and its link to the previous
    record), the last record against the writer's summary, and each result
    chunk's record against the answer that handed the chunk out (its SHA-256
    present, the same for every fetch of one chunk). Each problem is
    printed with its segment, line and sequence number.

    \b
    Exit status: 0 intact, 1 broken, 2 unknown session or unreadable store.

    \b
    Example:
      hoopgw verify 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f --store s3://audit/hoopgw
    """
    archive = open_archive(store, s3_endpoint_url)
    report = archive.verify_session(session_id)
    with contextlib.suppress(SegmentError):  # a segment that does not decode is reported above
        verify_chunks(archive.read_session(session_id), report)
    if output_format == "json":
        echo_json(report.to_dict())
    elif output_format == "jsonl":
        echo_jsonl(report.to_dict()["problems"])
    else:
        state = "intact" if report.ok else "BROKEN"
        writers = ", ".join(report.writers) or "none"
        click.echo(
            f"session {report.session_id}: {state} ({report.segments} segment(s), "
            f"{report.records} record(s), writer(s) {writers})"
        )
        for problem in report.problems:
            click.echo(f"  problem: {problem}")
        for remark in report.notes:
            click.echo(f"  note: {remark}")
    if not report.ok:
        click.get_current_context().exit(EXIT_FINDING)
