"""`hoopgw replay`: run a recorded session again in a sandbox account and compare."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from hoopgw.cli.common import (
    EXIT_FINDING,
    CommandError,
    archive_errors,
    echo_json,
    echo_jsonl,
    format_option,
    note,
    open_archive,
    session_id_argument,
    stderr_is_terminal,
    store_options,
)
from hoopgw.recorder.session import load_session
from hoopgw.replay import engine
from hoopgw.replay.engine import ReplayConnectionError, ReplayReport, StatementResult
from hoopgw.replay.render import render_report
from hoopgw.replay.target import Target, TargetError, resolve_target


@click.command()
@session_id_argument
@click.option(
    "--connection",
    "-c",
    metavar="NAME",
    help="Sandbox connection NAME from Snowflake's connections.toml (or config.toml), "
    "found as Snowflake's tools find it: $SNOWFLAKE_HOME, else ~/.snowflake/.",
)
@click.option("--account", help="Sandbox account identifier (overrides the connection's).")
@click.option("--user", help="Sandbox user.")
@click.option("--host", help="Sandbox host, when not ACCOUNT.snowflakecomputing.com.")
@click.option("--port", type=click.IntRange(1, 65535), help="Sandbox port.")
@click.option("--protocol", type=click.Choice(("https", "http")), help="Sandbox protocol.")
@click.option(
    "--password-ref",
    metavar="REF",
    help="Where the sandbox password is: env:NAME, file:/path or aws-secretsmanager:ID.",
)
@click.option(
    "--private-key-ref",
    metavar="REF",
    help="Where the sandbox user's private key (PEM or DER) is, for key-pair login.",
)
@click.option(
    "--private-key-passphrase-ref", metavar="REF", help="Where the private key's passphrase is."
)
@click.option("--role", help="Use this role in the sandbox instead of the recorded one.")
@click.option("--warehouse", help="Use this warehouse in the sandbox instead of the recorded one.")
@click.option("--read-only", is_flag=True, help="Run only statements that cannot change data.")
@click.option("--dry-run", is_flag=True, help="Print what would run; connect nowhere.")
@click.option("--stop-on-diff", is_flag=True, help="Stop at the first differing statement.")
@click.option(
    "--allow-recorded-account",
    is_flag=True,
    help="Allow a target that is the account the session was recorded against.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the full report as JSON to FILE.",
)
@click.option(
    "--login-timeout",
    type=click.IntRange(min=1),
    default=engine.DEFAULT_LOGIN_TIMEOUT,
    show_default=True,
    help="Seconds to keep trying to log in to the sandbox.",
)
@store_options
@format_option
@archive_errors
def replay(
    session_id: str,
    connection: str | None,
    account: str | None,
    user: str | None,
    host: str | None,
    port: int | None,
    protocol: str | None,
    password_ref: str | None,
    private_key_ref: str | None,
    private_key_passphrase_ref: str | None,
    role: str | None,
    warehouse: str | None,
    read_only: bool,
    dry_run: bool,
    stop_on_diff: bool,
    allow_recorded_account: bool,
    report_path: Path | None,
    login_timeout: int,
    store: str,
    s3_endpoint_url: str | None,
    output_format: str,
) -> None:
    """Replay a recorded session against a sandbox and compare statement by statement.

    The statements run in their recorded order on one connection opened with the
    session's recorded database, schema, warehouse and role; USE statements run
    as recorded and bindings are sent with their recorded types. Each statement
    is compared on outcome, error code, row count, column names and, where the
    recording holds the result, the rows. Statements the gateway blocked never
    run, nor do statements recorded with a credential masked.

    It refuses a target whose account is the one the session was recorded
    against, unless --allow-recorded-account.

    \b
    Exit status: 0 every statement matched, 1 differences,
    2 usage error, unknown session, or the sandbox is unreachable.

    \b
    Examples:
      hoopgw replay 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f --connection sandbox
      hoopgw replay 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f --dry-run --read-only
      hoopgw replay 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f --account xy12345 \\
          --user replayer --private-key-ref file:/secrets/replayer.p8 --report out.json
    """
    explicit = (account, user, host, port, protocol, password_ref, private_key_ref)
    target: Target | None = None
    if connection or any(value is not None for value in explicit):
        try:
            target = resolve_target(
                connection=connection,
                account=account,
                user=user,
                host=host,
                port=port,
                protocol=protocol,
                password_ref=password_ref,
                private_key_ref=private_key_ref,
                private_key_passphrase_ref=private_key_passphrase_ref,
            )
        except TargetError as exc:
            raise CommandError(str(exc)) from None
        for remark in target.notes:
            note(f"note: {remark}")
        if connection:
            note(f"sandbox: {target.source}")
    elif not dry_run:
        raise click.UsageError(
            "no sandbox given: use --connection NAME, or --account/--user with "
            "--password-ref or --private-key-ref (or --dry-run)"
        )
    archive = open_archive(store, s3_endpoint_url)
    session = load_session(session_id, archive.read_session(session_id))
    overrides = {"role": role, "warehouse": warehouse}
    try:
        if dry_run:
            report = engine.dry_run(
                session,
                target,
                read_only=read_only,
                allow_recorded_account=allow_recorded_account,
                context_overrides=overrides,
            )
        else:
            assert target is not None
            report = _run_with_progress(
                session,
                target,
                read_only=read_only,
                stop_on_diff=stop_on_diff,
                allow_recorded_account=allow_recorded_account,
                context_overrides=overrides,
                login_timeout=login_timeout,
            )
    except TargetError as exc:
        raise CommandError(str(exc)) from None
    except ReplayConnectionError as exc:
        raise CommandError(str(exc)) from None
    if report_path is not None:
        _write_report(report_path, report)
    _print(report, output_format)
    if report.aborted:
        click.get_current_context().exit(2)
    if not report.matched:
        click.get_current_context().exit(EXIT_FINDING)


def _run_with_progress(session: Any, target: Target, **options: Any) -> ReplayReport:
    if not stderr_is_terminal():
        return engine.replay_session(session, target, **options)
    with click.progressbar(
        length=len(session.statements),
        label=f"replaying {session.session_id}",
        file=sys.stderr,
        show_pos=True,
    ) as bar:

        def advance(result: StatementResult) -> None:
            bar.update(1)

        return engine.replay_session(session, target, on_result=advance, **options)


def _write_report(path: Path, report: ReplayReport) -> None:
    try:
        path.write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2, default=str))
    except OSError as exc:
        raise CommandError(f"cannot write the report to {path}: {exc.strerror}") from None


def _print(report: ReplayReport, output_format: str) -> None:
    if output_format == "json":
        echo_json(report.to_dict())
    elif output_format == "jsonl":
        echo_jsonl(result.to_dict() for result in report.results)
    else:
        click.echo(render_report(report))
        if report.target is None and report.dry_run:
            note("no target given: the recorded-account check was not made")
