"""Registers the `hoopgw` subcommands; each group lives in the module named after it."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Attach every subcommand module's commands to the top-level group."""
