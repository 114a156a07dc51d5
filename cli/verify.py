"""`hoopgw verify`: is a recorded session exactly what the gateway wrote?"""

from __future__ import annotations

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
    record), and the last record against the writer's summary. Each problem is
    printed with its segment, line and sequence number.

    \b
    Exit status: 0 intact, 1 broken, 2 unknown session or unreadable store.

    \b
    Example:
      hoopgw verify 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f --store s3://audit/hoopgw
    """
    archive = open_archive(store, s3_endpoint_url)
    report = archive.verify_session(session_id)
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
