"""`hoopgw sessions list` and `hoopgw sessions show`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from hoopgw.cli.common import (
    WHEN,
    archive_errors,
    cache_option,
    check_time_range,
    echo_json,
    echo_jsonl,
    echo_table,
    emit,
    format_option,
    note,
    open_archive,
    open_index,
    session_id_argument,
    store_options,
)
from hoopgw.recorder import listing
from hoopgw.recorder.session import load_session


@click.group()
def sessions() -> None:
    """List recorded sessions and show one statement by statement.

    \b
    Examples:
      hoopgw sessions list --since 1d
      hoopgw sessions show 0190f3c4
    """


@sessions.command("list")
@store_options
@click.option("--since", type=WHEN, help="Sessions started at or after TIME (2026-11-01, 12h, 7d).")
@click.option("--until", type=WHEN, help="Sessions started before TIME.")
@click.option("--user", help="Caller's subject or e-mail (any case).")
@click.option("--group", help="One of the caller's identity-provider groups.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@cache_option
@format_option
@archive_errors
def list_sessions(
    store: str,
    s3_endpoint_url: str | None,
    since: datetime | None,
    until: datetime | None,
    user: str | None,
    group: str | None,
    limit: int,
    no_cache: bool,
    output_format: str,
) -> None:
    """Recorded sessions, newest first, one line each.

    \b
    Columns: session id, user, start (UTC), duration, statements, errors,
    statements blocked by the gateway, client application. Requests refused
    without a verified caller (a refused login, a bad token) are counted per
    time window by each gateway process: such a window shows "(not verified)"
    as its user, "refused" as its duration, how many it refused under BLOCKED
    and by which endpoint under CLIENT; `sessions show` gives the reasons and
    samples.

    \b
    Examples:
      hoopgw sessions list --since 7d --user ada@example.com
      hoopgw sessions list --store s3://audit/hoopgw --group agents --format jsonl
    """
    check_time_range(since, until)
    with open_index(store, s3_endpoint_url, no_cache=no_cache) as index:
        found = index.list_sessions(since=since, until=until, user=user, group=group, limit=limit)
        windows = listing.window_totals(index, found)
    emit(
        output_format,
        listing.SESSION_HEADERS,
        [listing.summary_row(s, windows.get(s.session_id)) for s in found],
        [listing.summary_dict(s, windows.get(s.session_id)) for s in found],
    )
    if output_format == "table" and not found:
        note("no sessions match")


@sessions.command("show")
@session_id_argument
@store_options
@click.option(
    "--verify/--no-verify",
    "verify_chain",
    default=True,
    show_default=True,
    help="Check the session's hash chains (as hoopgw verify does) and show their state.",
)
@format_option
@archive_errors
def show_session(
    session_id: str, store: str, s3_endpoint_url: str | None, verify_chain: bool, output_format: str
) -> None:
    """One session's statements in order, with timing, rows and outcome.

    \b
    TIME is when the gateway received the statement (UTC), MS how long Snowflake
    took to answer, ROWS the rows returned (or changed, for DML), OUTCOME ok,
    error CODE (Snowflake's six digits), or blocked (refused by the gateway,
    never sent to Snowflake). The header says whether the session's hash chains
    are intact, and lists refused requests without SQL (a refused login) with
    their reason. JSON output adds bindings, context, query ids and error
    messages. SESSION_ID may be a unique prefix, in any case.

    \b
    Examples:
      hoopgw sessions show 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f --format json
      hoopgw sessions show 0190f3c4
    """
    archive = open_archive(store, s3_endpoint_url)
    records = archive.read_session(session_id)
    session = load_session(session_id, records)
    refused = listing.refused_requests(records)
    windows = listing.refusal_windows(records)
    if verify_chain:
        report = archive.verify_session(session_id)
        chain: dict[str, Any] | None = {
            "verified": True,
            "ok": report.ok,
            "problems": len(report.problems),
        }
        chain_line = listing.chain_state(report.ok, len(report.problems), report.records)
    else:
        chain = {"verified": False}
        chain_line = f"not verified (--no-verify); run hoopgw verify {session_id}"
    if output_format == "json":
        echo_json(listing.session_dict(session, refused, chain, windows))
        return
    if output_format == "jsonl":
        echo_jsonl(listing.statement_dict(s, session.session_id) for s in session.statements)
        if chain.get("ok") is False:
            note(f"warning: session {session_id}: {chain_line}")
        return
    for name, value in listing.session_header(session, refused, chain_line, windows):
        click.echo(f"{name + ':':<12}{value}")
    click.echo()
    if session.statements:
        echo_table(
            listing.STATEMENT_HEADERS, [listing.statement_row(s) for s in session.statements]
        )
    else:
        note("no statements in this session")
    if chain.get("ok") is False:
        note(f"warning: session {session_id}: {chain_line}")
