"""`hoopgw approvals`: list, show, approve and deny statements a gateway holds for review.

The commands talk to a gateway's own desk, `/hoopgw/v1/approvals` on its
Snowflake port (docs/approval.md), with the approver's identity-provider ID
token as a Bearer. Any replica will do: requests and decisions live in the
store every replica reads.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from hoopgw.cli.common import echo_json, emit, format_option

TIMEOUT_SECONDS = 30


def _options(command: Any) -> Any:
    command = click.option(
        "--gateway",
        envvar="HOOPGW_GATEWAY",
        required=True,
        help="The gateway's URL, e.g. https://hoopgw.example.com:8443 (env HOOPGW_GATEWAY).",
    )(command)
    command = click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="File holding your ID token; else the env HOOPGW_TOKEN holds the token itself.",
    )(command)
    return click.option(
        "--ca-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="CA certificate(s) to trust for the gateway's TLS certificate.",
    )(command)


class Desk:
    """The gateway's approvals desk over HTTP."""

    def __init__(self, gateway: str, token: str, ca_file: Path | None) -> None:
        self.base = gateway.rstrip("/") + "/hoopgw/v1/approvals"
        self.token = token
        self.context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def call(self, method: str, path: str = "", body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path,
            data,
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(
                request, timeout=TIMEOUT_SECONDS, context=self.context
            ) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            try:
                problem = json.loads(exc.read()).get("error")
            except (ValueError, AttributeError):
                problem = None
            raise click.ClickException(
                f"the gateway refused: {problem or exc.reason} (HTTP {exc.code})"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise click.ClickException(f"cannot reach the gateway: {reason}") from None


def _desk(gateway: str, token_file: Path | None, ca_file: Path | None) -> Desk:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise click.ClickException(f"cannot read {token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get("HOOPGW_TOKEN", "").strip()
    if not token:
        raise click.ClickException("no token: use --token-file FILE or set HOOPGW_TOKEN")
    return Desk(gateway, token, ca_file)


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _who(identity: dict[str, Any] | None) -> str:
    identity = identity or {}
    return str(identity.get("email") or identity.get("subject") or "")


@click.group()
def approvals() -> None:
    """Statements a gateway holds for a human's decision (docs/approval.md).

    \b
    Example:
      export HOOPGW_GATEWAY=https://hoopgw.example.com:8443
      hoopgw approvals list --state pending --token-file ~/.hoopgw/id-token
    """


@approvals.command("list")
@_options
@click.option(
    "--state",
    type=click.Choice(["pending", "approved", "denied", "withdrawn", "timeout"]),
    help="Only requests in this state.",
)
@format_option
def list_approvals(
    gateway: str,
    token_file: Path | None,
    ca_file: Path | None,
    state: str | None,
    output_format: str,
) -> None:
    """Held and decided requests you may see, newest first.

    \b
    Columns: id, state, caller, age, rule, statement (redacted as in records), objects.

    \b
    Example:
      hoopgw approvals list --state pending --token-file ~/.hoopgw/id-token \\
          --gateway https://hoopgw.example.com:8443
    """
    query = f"?state={state}" if state else ""
    items = _desk(gateway, token_file, ca_file).call("GET", query)["approvals"]
    rows = [
        (
            item["id"],
            item["state"],
            _who(item["caller"]),
            _age(item["age_seconds"]),
            item["rule"],
            " ".join((item["sql"] or "").split())[:80],
            ", ".join(item["objects"]),
        )
        for item in items
    ]
    emit(
        output_format, ("ID", "STATE", "CALLER", "AGE", "RULE", "STATEMENT", "OBJECTS"), rows, items
    )


@approvals.command("show")
@_options
@click.argument("approval_id")
@format_option
def show_approval(
    gateway: str,
    token_file: Path | None,
    ca_file: Path | None,
    approval_id: str,
    output_format: str,
) -> None:
    """One request: statement, caller, rule, approvers and decision.

    \b
    Example:
      hoopgw approvals show 2a9968ad-488c-4cff-9296-05db87c87236 --token-file ~/.hoopgw/id-token
    """
    item = _desk(gateway, token_file, ca_file).call("GET", f"/{approval_id}")
    if output_format != "table":
        echo_json(item)
        return
    decision = item.get("decision") or {}
    for label, value in (
        ("id", item["id"]),
        ("state", item["state"]),
        ("caller", _who(item["caller"])),
        ("session", item["session_id"]),
        ("rule", item["rule"]),
        ("reason", item["reason"]),
        ("approvers", ", ".join(item["approvers"])),
        ("age", _age(item["age_seconds"])),
        ("expires", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(item["expires"]))),
        ("objects", ", ".join(item["objects"])),
        ("decided by", _who(decision.get("approver"))),
        ("decision reason", decision.get("reason") or ""),
    ):
        click.echo(f"{label:<16}{value}")
    click.echo(f"\n{item['sql']}")


def _decide(
    action: str,
    gateway: str,
    token_file: Path | None,
    ca_file: Path | None,
    approval_id: str,
    reason: str | None,
    output_format: str,
) -> None:
    item = _desk(gateway, token_file, ca_file).call(
        "POST", f"/{approval_id}/{action}", {"reason": reason}
    )
    if output_format != "table":
        echo_json(item)
    else:
        click.echo(f"{item['id']} {item['state']}")


@approvals.command("approve")
@_options
@click.argument("approval_id")
@click.option("--reason", help="Why; recorded with the decision.")
@format_option
def approve(
    gateway: str,
    token_file: Path | None,
    ca_file: Path | None,
    approval_id: str,
    reason: str | None,
    output_format: str,
) -> None:
    """Let the held statement run; the waiting driver gets Snowflake's answer.

    \b
    Example:
      hoopgw approvals approve 2a9968ad-488c-4cff-9296-05db87c87236 \\
          --token-file ~/.hoopgw/id-token --reason "tier change agreed in TICKET-123"
    """
    _decide("approve", gateway, token_file, ca_file, approval_id, reason, output_format)


@approvals.command("deny")
@_options
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why; the waiting driver shows it.")
@format_option
def deny(
    gateway: str,
    token_file: Path | None,
    ca_file: Path | None,
    approval_id: str,
    reason: str,
    output_format: str,
) -> None:
    """Refuse the held statement; the driver raises 399005 with your name and reason.

    \b
    Example:
      hoopgw approvals deny 2a9968ad-488c-4cff-9296-05db87c87236 \\
          --token-file ~/.hoopgw/id-token --reason "touches every customer; ask in #data"
    """
    _decide("deny", gateway, token_file, ca_file, approval_id, reason, output_format)
