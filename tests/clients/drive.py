"""Runs one query the way a client runs it, inside that client's own virtualenv.

Started by the client matrix (tests/clients/) with the client environment's
interpreter, so it imports nothing from hoopgw or the test suite: the job comes
as JSON on standard input, the answer goes out as one JSON line on standard
output (`{"rows": [...]}`), any failure as a traceback on standard error and a
non-zero exit.

Jobs (`"client"`):
- `connector`: `snowflake.connector.connect(**params)`, then `execute(sql)` and
  `fetchall()`; any connector release (4.x in the main venv, 5.x in its own).
- `sqlalchemy`: `create_engine(url, connect_args=params)` and `execute(text(sql))`.
- `mcp`: starts an MCP server as a stdio child (`command`, `args`, `env`), lists
  its tools, calls `tool` with `arguments`, and returns the tool's text content.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import sys
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, decimal.Decimal | datetime.date | datetime.datetime):
        return str(value)
    return value


def run_connector(job: dict[str, Any]) -> dict[str, Any]:
    import snowflake.connector

    with snowflake.connector.connect(**job["params"]) as connection:
        cursor = connection.cursor()
        rows = cursor.execute(job["sql"]).fetchall()
        return {
            "rows": [[_plain(v) for v in row] for row in rows],
            "version": snowflake.connector.__version__,
        }


def run_sqlalchemy(job: dict[str, Any]) -> dict[str, Any]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(job["url"], connect_args=job["params"])
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(job["sql"])).fetchall()
    finally:
        engine.dispose()
    return {"rows": [[_plain(v) for v in row] for row in rows], "version": sqlalchemy.__version__}


async def _call_tool(job: dict[str, Any]) -> dict[str, Any]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    server = StdioServerParameters(command=job["command"], args=job["args"], env=job["env"])
    async with (
        stdio_client(server) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = [tool.name for tool in (await session.list_tools()).tools]
        result = await session.call_tool(job["tool"], job["arguments"])
        texts = [getattr(part, "text", "") for part in result.content]
        return {"tools": tools, "is_error": bool(result.isError), "text": "\n".join(texts)}


def run_mcp(job: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(asyncio.wait_for(_call_tool(job), job.get("timeout", 120)))


RUNNERS = {"connector": run_connector, "sqlalchemy": run_sqlalchemy, "mcp": run_mcp}


def main() -> None:
    job = json.load(sys.stdin)
    answer = RUNNERS[job["client"]](job)
    sys.stdout.write(json.dumps(answer, default=str) + "\n")


if __name__ == "__main__":
    main()
