"""A held statement from a client's point of view: it waits in execute, then gets its rows.

The client runs as a child process; the test finds its statement among the
gateway's pending approvals, checks the client is still waiting, approves it
with `hoopgw approvals approve` as a `dba`, and reads the client's rows.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from click.testing import CliRunner

from hoopgw.cli.main import main
from tests import stack
from tests.clients.conftest import HELD_TABLE, RUN_TIMEOUT, ClientStack

WAIT = 60.0


def held_query(tag: str, extra: str = "") -> str:
    return f"select id, label from {HELD_TABLE} order by id /*{tag}*/{extra}"


def approvals(client_stack: ClientStack, token_file: str, *args: str) -> Any:
    result = CliRunner().invoke(
        main,
        [
            "approvals",
            *args,
            "--gateway",
            client_stack.url,
            "--token-file",
            token_file,
            "--ca-file",
            str(client_stack.ca_bundle),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def approve_when_held(
    client_stack: ClientStack,
    tag: str,
    argv: list[str],
    job: dict[str, Any] | None,
    env: dict[str, str],
) -> dict[str, Any]:
    """Run the client, approve its held statement once it waits, and return its answer."""
    approver = str(client_stack.token_file(client_stack.token(groups=("dba",))))
    folder = client_stack.workdir / f"held-{tag}"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps(job) if job is not None else "")
    with (
        (folder / "job.json").open() as stdin,
        (folder / "stdout").open("w") as stdout,
        (folder / "stderr").open("w") as stderr,
    ):
        process = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=folder
        )
    try:

        def pending() -> dict[str, Any] | None:
            if process.poll() is not None:
                raise AssertionError(
                    "the client ended before its statement was held:\n"
                    + (folder / "stderr").read_text()[-5000:]
                )
            for item in approvals(client_stack, approver, "list", "--state", "pending"):
                if tag in (item.get("sql") or ""):
                    return item
            return None

        item: Any = stack.wait_until(pending, WAIT, f"the held statement {tag}")
        assert process.poll() is None, "the client did not wait for the decision"
        decided = approvals(client_stack, approver, "approve", item["id"], "--reason", "client")
        assert decided["state"] == "approved"
        process.wait(RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, (
        f"the client failed after approval:\n{(folder / 'stderr').read_text()[-5000:]}"
    )
    stdout_text = (folder / "stdout").read_text()
    return json.loads(stdout_text.strip().splitlines()[-1])
