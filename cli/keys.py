"""`hoopgw token-key` and `hoopgw checkpoint-key`: fresh keys for the gateway's options."""

from __future__ import annotations

from pathlib import Path

import click

from hoopgw.cli.common import CommandError
from hoopgw.recorder.checkpoints import (
    CheckpointKeyError,
    key_id,
    load_signing_key,
    new_checkpoint_key,
    public_key_pem,
)
from hoopgw.recorder.secrets import SecretError, new_token_key, resolve_secret


@click.command("token-key")
def token_key() -> None:
    """Print a fresh hoopgw_token_key: 32 random bytes, base64url.

    Store it where the gateway's secret reference points, and give every
    replica the same key so any of them can open the others' tokens.

    \b
    Example:
      hoopgw token-key > /etc/hoopgw/token-key && chmod 600 /etc/hoopgw/token-key
      mitmdump -s addons/gateway.py --set hoopgw_token_key=file:/etc/hoopgw/token-key ...
    """
    click.echo(new_token_key())


@click.command("checkpoint-key")
@click.option(
    "--public-key-out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also write the public key (PEM) here, for `hoopgw verify --public-key`.",
)
@click.option(
    "--public-of",
    metavar="REF",
    help="Print the public key (PEM) of an existing key instead: a secret reference "
    "(env:NAME, file:/path, aws-secretsmanager:ID), as hoopgw_checkpoint_key takes.",
)
def checkpoint_key(public_key_out: Path | None, public_of: str | None) -> None:
    """Print a fresh hoopgw_checkpoint_key: an Ed25519 seed, base64url.

    The gateway signs its checkpoints with it; `hoopgw verify --public-key`
    checks them with the public half. Keep the private key where the gateway's
    secret reference points, and the public key where whoever can write the
    recordings cannot change it.

    \b
    Example:
      hoopgw checkpoint-key --public-key-out checkpoint-key.pub > /etc/hoopgw/checkpoint-key
      chmod 600 /etc/hoopgw/checkpoint-key
      mitmdump -s addons/gateway.py --set hoopgw_checkpoint_key=file:/etc/hoopgw/checkpoint-key
      hoopgw checkpoint-key --public-of aws-secretsmanager:hoopgw/checkpoint-key > key.pub
    """
    if public_of is not None:
        try:
            key = load_signing_key(resolve_secret(public_of))
        except (SecretError, CheckpointKeyError) as exc:
            raise CommandError(f"--public-of: {exc}") from None
        click.echo(public_key_pem(key), nl=False)
        return
    seed = new_checkpoint_key()
    if public_key_out is not None:
        key = load_signing_key(seed.encode())
        public_key_out.write_text(public_key_pem(key))
        click.echo(f"public key {key_id(key)} written to {public_key_out}", err=True)
    click.echo(seed)
