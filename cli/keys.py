"""`hoopgw token-key`: a fresh key for the gateway's sealed session tokens."""

from __future__ import annotations

import click

from hoopgw.recorder.secrets import new_token_key


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
