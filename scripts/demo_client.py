"""Run SQL through the demo gateway as the demo agent: `python -m scripts.demo_client "SQL" ...`.

The walkthrough `make demo` prints uses it so that each step is one short line to
copy. It connects as any Snowflake tool does: the connection `hoopgw-demo` of the
`connections.toml` under $SNOWFLAKE_HOME (the demo writes both and prints the
export), which logs in with the agent's ID token file (`authenticator = "oauth"`,
`token_file_path`). The statements run in order on one connection (one recorded
session); a refused or failed statement is printed with its error code and the
next one still runs. Exit status: 0 every statement ran, 1 one or more did not,
2 no connection.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

CONNECTION = "hoopgw-demo"


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table; values as `str()` shows them."""
    cells = [list(columns)] + [["NULL" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sql", nargs="+", help="statements, run in order on one connection")
    parser.add_argument("--connection", default=CONNECTION, help="name in connections.toml")
    args = parser.parse_args(argv)
    if not os.environ.get("SNOWFLAKE_HOME"):
        print(
            "demo_client: SNOWFLAKE_HOME is not set; run the export line `make demo` printed",
            file=sys.stderr,
        )
        return 2

    import snowflake.connector
    from snowflake.connector.errors import Error

    try:
        connection = snowflake.connector.connect(connection_name=args.connection)
    except Error as exc:
        print(f"demo_client: cannot connect: {exc}", file=sys.stderr)
        return 2
    failed = 0
    try:
        cursor = connection.cursor()
        for sql in args.sql:
            print(f"> {sql}", flush=True)
            try:
                cursor.execute(sql)
            except Error as exc:
                failed += 1
                print(f"error {exc}\n", flush=True)
                continue
            if cursor.description and cursor.description[0].name not in (
                "number of rows updated",
                "number of rows deleted",
                "number of rows inserted",
            ):
                columns = [column.name for column in cursor.description]
                print(format_rows(columns, cursor.fetchall()))
            else:
                print(f"{cursor.rowcount} row(s) changed")
            print(flush=True)
    finally:
        connection.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
