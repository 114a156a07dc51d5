"""Run hoopgw end to end on embedded defaults, for a person to try (`make demo`).

Starts fakesnow (the Snowflake emulator) as the upstream, oidc-provider-mock as
the identity provider and the gateway (`mitmdump -s addons/gateway.py`) with a
local store under var/demo/, prints how to connect and a fresh ID token, and
stops everything on Ctrl-C. `--smoke` runs one statement through the gateway
and exits instead (the test suite uses it to keep this command working).
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tests import stack

REPO_ROOT = Path(__file__).resolve().parent.parent

DEMO_USER = "alice"
DEMO_GROUPS = ("agents",)


UPSTREAM_PASSWORD_ENV = "HOOPGW_DEMO_UPSTREAM_PASSWORD"


def gateway_options(home: Path, issuer: str) -> dict[str, str | int | bool | Sequence[str]]:
    return {
        **stack.embedded_gateway_options(issuer, UPSTREAM_PASSWORD_ENV),
        "hoopgw_store": f"file:{home / 'store'}",
        "hoopgw_spool_dir": str(home / "spool"),
    }


def connection_hint(gateway: stack.Gateway, token: str) -> str:
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

See what was recorded (segments reach the store when a session ends):

  HOOPGW_STORE=file:{gateway.workdir / "store"} .venv/bin/hoopgw sessions list
  HOOPGW_STORE=file:{gateway.workdir / "store"} .venv/bin/hoopgw sessions show SESSION_ID

Press Ctrl-C to stop everything.
"""


def smoke(gateway: stack.Gateway, token: str) -> None:
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
        rows = connection.cursor().execute("select 'hello through hoopgw'").fetchall()
    finally:
        connection.close()
    print(f"smoke: {rows[0][0]}")


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
        if args.smoke:
            smoke(gateway, token)
            return 0
        print(connection_hint(gateway, token), flush=True)
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
