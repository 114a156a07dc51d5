"""`hoopgw search`: statements across sessions."""

from __future__ import annotations

from datetime import datetime

import click

from hoopgw.cli.common import (
    WHEN,
    CommandError,
    archive_errors,
    cache_option,
    check_time_range,
    emit,
    format_option,
    note,
    open_index,
    store_options,
)
from hoopgw.recorder import listing
from hoopgw.recorder.masking import COLUMN_KIND, KINDS

DETECTED_CHOICES = sorted(KINDS | {COLUMN_KIND, "any"})


@click.command()
@click.option("--sql", "sql_text", metavar="TEXT", help="SQL containing TEXT (any case).")
@click.option(
    "--object",
    "object_name",
    metavar="NAME",
    help="Statements touching NAME: ORDERS, APP.ORDERS, DB.APP.ORDERS, or a glob "
    "like '*.PAYROLL.*'.",
)
@click.option("--user", help="Caller's subject or e-mail (any case).")
@click.option("--group", help="One of the caller's identity-provider groups.")
@click.option("--since", type=WHEN, help="Statements at or after TIME (2026-11-01, 12h, 7d).")
@click.option("--until", type=WHEN, help="Statements before TIME.")
@click.option(
    "--outcome",
    type=click.Choice(listing.SEARCH_OUTCOMES),
    help="Only statements that succeeded, failed, or were blocked by the gateway; or that "
    "were held for review and are still undecided (held: also timed out or withdrawn), "
    "approved, or denied.",
)
@click.option(
    "--detected",
    type=click.Choice(DETECTED_CHOICES),
    help="Only statements whose answer held this kind of sensitive data (masked, recorded "
    "or withheld; `column` for masked columns, `any` for all).",
)
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@store_options
@cache_option
@format_option
@archive_errors
def search(
    sql_text: str | None,
    object_name: str | None,
    user: str | None,
    group: str | None,
    since: datetime | None,
    until: datetime | None,
    outcome: str | None,
    detected: str | None,
    limit: int,
    store: str,
    s3_endpoint_url: str | None,
    no_cache: bool,
    output_format: str,
) -> None:
    """Statements matching every given criterion, newest session first.

    Objects are fully qualified as Snowflake resolves them (unquoted names upper
    case), from the guardrail's record or by parsing the SQL against the
    session's context at that point. Requests refused without SQL (a refused
    login) are found with --outcome blocked, their reason in the SQL column.

    \b
    Examples:
      hoopgw search --object PAYROLL.SALARIES --since 30d
      hoopgw search --sql "delete from" --user ada@example.com --format jsonl
      hoopgw search --outcome blocked --since yesterday
      hoopgw search --detected credit_card --since 7d
    """
    if not any((sql_text, object_name, user, group, since, until, outcome, detected)):
        raise CommandError(
            "give at least one of --sql, --object, --user, --group, --since, "
            "--until, --outcome, --detected (see hoopgw search --help)"
        )
    check_time_range(since, until)
    query = listing.SearchQuery(
        sql=sql_text,
        object=object_name,
        user=user,
        group=group,
        since=since,
        until=until,
        outcome=outcome,
        detected=detected,
        limit=limit,
    )
    with open_index(store, s3_endpoint_url, no_cache=no_cache) as index:
        result = listing.search(index, query)
    emit(
        output_format,
        listing.MATCH_HEADERS,
        [match.row() for match in result.matches],
        [match.to_dict() for match in result.matches],
    )
    for session_id in result.unreadable:
        note(
            f"warning: session {session_id} has a segment that does not decode; "
            "run hoopgw verify on it"
        )
    if output_format == "table":
        shown = len(result.matches)
        more = " (limit reached)" if shown >= limit else ""
        note(f"{shown} statement(s) in {result.sessions_searched} session(s) searched{more}")
