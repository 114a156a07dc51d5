"""`hoopgw upstream-keys`: the statements that let the gateway's one key sign in as each user."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import click

from hoopgw.cli.common import CommandError
from hoopgw.recorder.secrets import SecretError, resolve_secret
from hoopgw.recorder.upstream_users import (
    load_private_key,
    parse_user_map,
    public_key_body,
    public_key_fingerprint,
    snowflake_user_name,
)


@click.command("upstream-keys")
@click.option(
    "--private-key",
    "private_key_ref",
    required=True,
    metavar="REF",
    help="The gateway's hoopgw_upstream_private_key: a secret reference "
    "(env:NAME, file:/path, aws-secretsmanager:ID). Only its public half is printed.",
)
@click.option(
    "--passphrase",
    "passphrase_ref",
    metavar="REF",
    help="Secret reference to the key's passphrase (hoopgw_upstream_private_key_passphrase).",
)
@click.option(
    "--user-map",
    "user_map",
    multiple=True,
    metavar="ENTRY",
    help="A hoopgw_upstream_user_map entry (repeatable): the users its group=USER and "
    "*=USER entries name get statements.",
)
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="NAME",
    help="A user name, or a claim value (an email, a preferred_username) that a "
    "claim: entry maps to a user name the way the gateway does (repeatable).",
)
def upstream_keys(
    private_key_ref: str,
    passphrase_ref: str | None,
    user_map: Sequence[str],
    users: Sequence[str],
) -> None:
    """Print the ALTER USER statements that register the gateway's public key.

    The gateway signs every key-pair login with its one private key; Snowflake
    accepts it for any user that carries the public key. Each user also gets
    DEFAULT_SECONDARY_ROLES = (), so a session holds only the role the gateway
    chose (what hoopgw_upstream_secondary_roles=none states). Run the output
    as a user administrator.

    \b
    Example:
      hoopgw upstream-keys --private-key file:/etc/hoopgw/upstream.p8 \\
        --user-map 'data-eng=SVC_DATA_ENG' --user-map '*=SVC_AGENT' \\
        --user ada.lovelace@example.com
    """
    try:
        passphrase = resolve_secret(passphrase_ref) if passphrase_ref else None
        key = load_private_key(resolve_secret(private_key_ref), passphrase)
    except (SecretError, ValueError) as exc:
        raise CommandError(f"--private-key: {exc}") from None
    try:
        rules = parse_user_map(user_map)
    except ValueError as exc:
        raise CommandError(f"--user-map: {exc}") from None
    names: list[str] = [rule.user for rule in rules if rule.user]
    for value in users:
        try:
            names.append(snowflake_user_name(value))
        except ValueError as exc:
            raise CommandError(f"--user {value!r} {exc}") from None
    if not names:
        raise CommandError("name at least one user: --user NAME, or --user-map group=USER")
    click.echo(f"-- the gateway's key {public_key_fingerprint(key)}")
    claims = [str(rule) for rule in rules if rule.claim]
    if claims:
        click.echo(f"-- {', '.join(claims)}: pass each person's claim value as --user")
    for statement in upstream_key_statements(public_key_body(key), dict.fromkeys(names)):
        click.echo(statement)


def upstream_key_statements(public_key: str, users: Iterable[str]) -> list[str]:
    """Two statements per user: the gateway's public key, and no default secondary roles."""
    statements = []
    for user in users:
        statements.append(f"ALTER USER {user} SET RSA_PUBLIC_KEY='{public_key}';")
        statements.append(f"ALTER USER {user} SET DEFAULT_SECONDARY_ROLES = ();")
    return statements
