"""Run hoopgw end to end on embedded defaults, for a person to try (`make demo`).

Starts fakesnow (the Snowflake emulator) as the upstream, oidc-provider-mock as
the identity provider and the gateway (`mitmdump -s addons/gateway.py`) with a
local store under var/demo/, prints how to connect and a fresh ID token, and
stops everything on Ctrl-C. `--smoke` runs one statement through the gateway
and exits instead (the test suite uses it to keep this command working).
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tests import stack

REPO_ROOT = Path(__file__).resolve().parent.parent

DEMO_USER = "alice"
DEMO_GROUPS = ("agents",)
DEMO_APPROVER = "bob"
DEMO_APPROVER_GROUPS = ("dba",)
DEMO_POLICY = """\
# The demo's guardrails (docs/policy.md): agents' DELETEs wait for a dba's approval.
[[rule]]
name = "agents-review-deletes"
groups = ["agents"]
review_kinds = ["DELETE"]
approvers = ["dba"]
review_timeout = 600
"""


UPSTREAM_PASSWORD_ENV = "HOOPGW_DEMO_UPSTREAM_PASSWORD"


def gateway_options(home: Path, issuer: str) -> dict[str, str | int | bool | Sequence[str]]:
    policy = home / "policy.toml"
    policy.write_text(DEMO_POLICY)
    return {
        **stack.embedded_gateway_options(issuer, UPSTREAM_PASSWORD_ENV),
        "hoopgw_store": f"file:{home / 'store'}",
        "hoopgw_spool_dir": str(home / "spool"),
        "hoopgw_policy": str(policy),
    }


def connection_hint(gateway: stack.Gateway, token: str, approver: Path) -> str:
    return f"""
hoopgw is running.

  gateway      {gateway.url}  (reverse proxy in front of the Snowflake emulator)
  recordings   {gateway.workdir / "store"}
  gateway log  {gateway.proc.log_path}

Connect with any Snowflake driver, authenticating with an OIDC ID token:

  import snowflake.connector
  conn = snowflake.connector.connect(
      account="demo", user="{DEMO_USER}", authenticator="oauth", token=TOKEN,
      host="{gateway.host}", port={gateway.port}, protocol="{gateway.protocol}",
  )
  print(conn.cursor().execute("select 'hello through hoopgw'").fetchall())

TOKEN (an ID token for {DEMO_USER}, groups {", ".join(DEMO_GROUPS)}; valid one hour):

{token}

A DELETE waits for approval (policy {gateway.workdir / "policy.toml"}); decide it as
{DEMO_APPROVER} (group {", ".join(DEMO_APPROVER_GROUPS)}):

  export HOOPGW_GATEWAY={gateway.url}
  .venv/bin/hoopgw approvals list --token-file {approver}
  .venv/bin/hoopgw approvals approve ID --token-file {approver} --reason "looks fine"

See what was recorded (segments reach the store when a session ends):

  HOOPGW_STORE=file:{gateway.workdir / "store"} .venv/bin/hoopgw sessions list
  HOOPGW_STORE=file:{gateway.workdir / "store"} .venv/bin/hoopgw sessions show SESSION_ID

Press Ctrl-C to stop everything.
"""


def smoke(gateway: stack.Gateway, token: str, approver: Path) -> None:
    import snowflake.connector

    connection = snowflake.connector.connect(
        account="demo",
        user=DEMO_USER,
        authenticator="oauth",
        token=token,
        host=gateway.host,
        port=gateway.port,
        protocol=gateway.protocol,
        login_timeout=30,
    )
    try:
        cursor = connection.cursor()
        rows = cursor.execute("select 'hello through hoopgw'").fetchall()
        print(f"smoke: {rows[0][0]}")
        cursor.execute("create database if not exists hoopgw_demo")
        cursor.execute("create schema if not exists hoopgw_demo.public")
        cursor.execute("create or replace table hoopgw_demo.public.held (id int)")
        cursor.execute("insert into hoopgw_demo.public.held values (1), (2)")
        held = threading.Thread(
            target=lambda: cursor.execute("delete from hoopgw_demo.public.held")
        )
        held.start()
        approval_id = stack.wait_until(lambda: _pending(gateway, approver), 60, "the held DELETE")
        _approvals(gateway, approver, "approve", str(approval_id), "--reason", "smoke test")
        held.join(60)
        print(f"smoke: held DELETE approved, {cursor.rowcount} rows deleted")
    finally:
        connection.close()


def _approvals(gateway: stack.Gateway, token_file: Path, *args: str) -> str:
    command = [sys.executable, "-m", "hoopgw.cli.main", "approvals", *args]
    command += ["--gateway", gateway.url, "--token-file", str(token_file), "--format", "json"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _pending(gateway: stack.Gateway, token_file: Path) -> str | None:
    pending = json.loads(_approvals(gateway, token_file, "list", "--state", "pending"))
    return pending[0]["id"] if pending else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run one statement and exit")
    parser.add_argument("--home", type=Path, default=REPO_ROOT / "var" / "demo")
    parser.add_argument("--port", type=int, default=None, help="gateway port (default: free)")
    args = parser.parse_args()

    home: Path = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    processes: list[stack.Proc] = []
    try:
        upstream_proc, upstream = stack.start_fakesnow(home)
        processes.append(upstream_proc)
        oidc_proc, provider = stack.start_oidc(home)
        processes.append(oidc_proc)
        gateway = stack.start_gateway(
            home,
            upstream,
            gateway_options(home, provider.issuer),
            # the emulator accepts any password; a real deployment uses a key pair
            env={UPSTREAM_PASSWORD_ENV: secrets.token_urlsafe(16)},
            port=args.port,
        )
        processes.append(gateway.proc)
        token = provider.mint(DEMO_USER, DEMO_GROUPS)
        approver = home / "approver-token"
        approver.write_text(provider.mint(DEMO_APPROVER, DEMO_APPROVER_GROUPS))
        approver.chmod(0o600)
        if args.smoke:
            smoke(gateway, token, approver)
            return 0
        print(connection_hint(gateway, token, approver), flush=True)
        stopped = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stopped.set())
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        while not stopped.wait(1.0):
            for proc in processes:
                if not proc.alive():
                    print(f"{proc.name} stopped unexpectedly; see {proc.log_path}")
                    return 1
        print("\nstopping...")
        return 0
    except stack.StartupError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(processes):
            proc.stop()


if __name__ == "__main__":
    sys.exit(main())
