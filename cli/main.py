"""The `hoopgw` command: thin click wrappers that parse, call the libraries, and print."""

from __future__ import annotations

import click

from hoopgw.cli import commands


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hoopgw")
def main() -> None:
    """Inspect, verify and replay sessions recorded by the hoopgw gateway.

    \b
    Example:
      hoopgw sessions list --store s3://audit/hoopgw --since 2026-11-01
    """


commands.register(main)

if __name__ == "__main__":
    main()
