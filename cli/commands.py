"""Registers the `hoopgw` subcommands; each group lives in the module named after it."""

from __future__ import annotations

import click

from hoopgw.cli.approvals import approvals
from hoopgw.cli.inspection import export_command, inspect_command
from hoopgw.cli.keys import checkpoint_key, token_key
from hoopgw.cli.replay import replay
from hoopgw.cli.search import search
from hoopgw.cli.sessions import sessions
from hoopgw.cli.upstream_keys import upstream_keys
from hoopgw.cli.verify import verify


def register(group: click.Group) -> None:
    """Attach every subcommand module's commands to the top-level group."""
    group.add_command(export_command)
    group.add_command(inspect_command)
    group.add_command(token_key)
    group.add_command(checkpoint_key)
    group.add_command(upstream_keys)
    group.add_command(sessions)
    group.add_command(search)
    group.add_command(verify)
    group.add_command(replay)
    group.add_command(approvals)
