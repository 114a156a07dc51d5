"""`make demo` as a new user meets it: the demo starts, and its printed walkthrough works
when each line is copied into a shell (run here from the printed text, not rebuilt)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts import demo
from tests import stack
from tests.stack import REPO_ROOT

COMMAND_TIMEOUT = 60


@dataclass(frozen=True)
class Demo:
    proc: stack.Proc
    home: Path
    text: str
    env: dict[str, str]
    commands: list[str]

    def command(self, *needles: str) -> str:
        """The one printed command line holding every needle."""
        found = [line for line in self.commands if all(n in line for n in needles)]
        assert len(found) == 1, (needles, self.commands)
        return found[0]

    def run(self, line: str, **replace: str) -> subprocess.CompletedProcess[str]:
        for placeholder, value in replace.items():
            line = line.replace(f" {placeholder} ", f" {value} ").replace(
                f" {placeholder}", f" {value}"
            )
        return subprocess.run(
            shlex.split(line),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            cwd=REPO_ROOT,
            env=self.env,
        )


@pytest.fixture(scope="module")
def running_demo(tmp_path_factory) -> Iterator[Demo]:
    home = tmp_path_factory.mktemp("demo")
    proc = stack.Proc(
        "demo",
        [sys.executable, "-m", "scripts.demo", "--home", str(home)],
        home / "demo.out",
        cwd=REPO_ROOT,
    ).start()
    try:
        proc.wait_ready(lambda: "Press Ctrl-C" in proc.log(), timeout=120)
        text = proc.log()
        exports = re.findall(r"^  export (.+)$", text, re.MULTILINE)
        assert len(exports) == 1, text
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNOWFLAKE", "HOOPGW"))}
        env.update(item.split("=", 1) for item in shlex.split(exports[0]))
        commands = re.findall(r"^  (\.venv/bin/.+)$", text, re.MULTILINE)
        yield Demo(proc, home, text, env, commands)
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]
    assert "stopping..." in proc.log()


def test_identities_are_private_files_and_the_connection_entry_is_ready(running_demo):
    text = running_demo.text
    tokens = running_demo.home / "tokens"
    for name in (demo.AGENT, demo.APPROVER):
        token = tokens / f"{name}.token"
        assert str(token) in text
        assert token.stat().st_mode & 0o777 == 0o600
        assert token.read_text().count(".") == 2  # a JWT
        assert token.read_text() not in text
    connections = Path(running_demo.env["SNOWFLAKE_HOME"]) / "connections.toml"
    assert connections.stat().st_mode & 0o777 == 0o600
    entry = tomllib.loads(connections.read_text())[demo.CONNECTION]
    assert entry["authenticator"] == "oauth"
    assert entry["token_file_path"] == str(tokens / f"{demo.AGENT}.token")
    assert (entry["database"], entry["schema"]) == (demo.DATABASE, demo.SCHEMA)
    assert f'token_file_path = "{entry["token_file_path"]}"' in text

    connected = running_demo.run(running_demo.command("connection_name"))
    assert connected.returncode == 0, connected.stderr
    assert connected.stdout.strip() == f"[('{demo.DATABASE}',)]"
    assert "permission" not in connected.stderr.lower()


def test_the_walkthrough_refuses_holds_until_approved_and_masks(running_demo):
    refused = running_demo.run(running_demo.command("demo_client", demo.REFUSED))
    assert refused.returncode == 1
    refusal = "error 399003 (42501): Statement refused by hoopgw policy: rule 'agents-guard'"
    assert f"{refusal} denies DROP." in refused.stdout
    refused = running_demo.run(running_demo.command("demo_client", *demo.ALSO_REFUSED))
    assert refused.returncode == 1
    assert f"{refusal} requires a WHERE clause on DELETE FROM HOOPGW_DEMO.SHOP.ORDERS" in (
        refused.stdout
    )
    assert f"{refusal} denies GRANT." in refused.stdout

    held_line = running_demo.command("demo_client", demo.HELD)
    held = subprocess.Popen(
        shlex.split(held_line),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=running_demo.env,
    )
    try:
        listing = running_demo.command("approvals list")

        def pending() -> str | None:
            listed = running_demo.run(listing + " --format json")
            assert listed.returncode == 0, listed.stderr
            waiting = [a for a in json.loads(listed.stdout) if a["state"] == "pending"]
            return waiting[0]["id"] if waiting else None

        approval = stack.wait_until(pending, COMMAND_TIMEOUT, "the held UPDATE")
        assert held.poll() is None  # still waiting for the decision
        approved = running_demo.run(running_demo.command("approvals approve"), ID=str(approval))
        assert approved.returncode == 0, approved.stderr
        out, err = held.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if held.poll() is None:
            held.kill()
    assert held.returncode == 0, out + err
    assert "1 row(s) changed" in out

    masked = running_demo.run(running_demo.command("demo_client", demo.MASKED))
    assert masked.returncode == 0, masked.stderr
    assert "Ada Lovelace" in masked.stdout
    for kind in ("email", "phone", "credit_card"):
        assert masked.stdout.count(f"[MASKED:{kind}]") == 4, masked.stdout
    assert "@example" not in masked.stdout
    assert "4111" not in masked.stdout

    search = running_demo.command("search --outcome approved")

    def held_statement() -> list[dict] | None:
        found = running_demo.run(search + " --format json")
        assert found.returncode == 0, found.stderr
        return json.loads(found.stdout) or None

    statements = stack.wait_until(held_statement, COMMAND_TIMEOUT, "the approved statement")
    assert [s["sql"] for s in statements] == [demo.HELD]
    held_session = statements[0]["session_id"]
    listed = running_demo.run(running_demo.command("sessions list"))
    assert listed.returncode == 0, listed.stderr
    assert held_session in listed.stdout
    shown = running_demo.run(running_demo.command("sessions show"), SESSION=held_session)
    assert shown.returncode == 0, shown.stderr
    assert demo.HELD in shown.stdout
    assert "chain:      intact" in shown.stdout

    verified = running_demo.run(running_demo.command("verify"), SESSION=held_session)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"session {held_session}: intact" in verified.stdout

    # a connections.toml others may read is said in one line, not the connector's warning
    connections = Path(running_demo.env["SNOWFLAKE_HOME"]) / "connections.toml"
    connections.chmod(0o644)
    try:
        replayed = running_demo.run(running_demo.command("replay"), SESSION=held_session)
    finally:
        connections.chmod(0o600)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "1 statement: 1 match, 0 differs" in replayed.stdout
    assert f"note: {connections} may be read by others (mode 0644)" in replayed.stderr
    assert "Bad owner" not in replayed.stderr, replayed.stderr
    assert running_demo.command("inspect")
