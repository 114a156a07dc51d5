"""Run hoopgw end to end on embedded defaults, for a person to try (`make demo`).

Starts fakesnow (the Snowflake emulator) as the upstream, with a demo database
of customers and orders, oidc-provider-mock as the identity provider, and the
gateway (`mitmdump -s addons/gateway.py`) with the demo policy
(scripts/demo_policy.toml) and a local store under var/demo/. Writes an ID token
file for the demo agent and one for its approver, and a `connections.toml`, then
prints a walkthrough (a statement refused, one held and approved, one masked, the
recorded session listed, verified, replayed and inspected) and stops everything
on Ctrl-C. tests/test_demo.py follows that walkthrough.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests import stack

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY = REPO_ROOT / "scripts" / "demo_policy.toml"

AGENT = "alice"
AGENT_GROUPS = ("agents",)
APPROVER = "bob"
APPROVER_GROUPS = ("dba",)
DATABASE = "HOOPGW_DEMO"
SCHEMA = "SHOP"
ROLE = "AGENT"
WAREHOUSE = "DEMO_WH"
CONNECTION = "hoopgw-demo"
EMULATOR_CONNECTION = "emulator"
# fakesnow accepts any password; a real sandbox has its own credentials
EMULATOR_PASSWORD = "emulator-accepts-any-password"
UPSTREAM_PASSWORD_ENV = "HOOPGW_DEMO_UPSTREAM_PASSWORD"

CONNECTOR_ONE_LINER = (
    ".venv/bin/python -c 'import snowflake.connector as sf; "
    f'connection = sf.connect(connection_name="{CONNECTION}"); '
    'print(connection.cursor().execute("select current_database()").fetchall())\''
)

# The walkthrough's statements, as printed (tests/test_demo.py runs them).
REFUSED = "drop table orders"
ALSO_REFUSED = ("delete from orders", "grant role accountadmin to user alice")
HELD = "update customers set tier = 'gold' where id = 3"
MASKED = "select id, name, email, phone, card_number, city from customers order by id"

SEED = (
    "create or replace table customers (id int, name varchar, email varchar, phone varchar,"
    " card_number varchar, city varchar, tier varchar)",
    """insert into customers values
    (1, 'Ada Lovelace', 'ada.lovelace@example.com', '+44 20 7946 0958',
     '4111 1111 1111 1111', 'London', 'gold'),
    (2, 'Grace Hopper', 'grace.hopper@example.org', '+1 212 555 0143',
     '5555 5555 5555 4444', 'New York', 'silver'),
    (3, 'Katherine Johnson', 'kjohnson@example.net', '(757) 555-0172',
     '3782 822463 10005', 'Hampton', 'silver'),
    (4, 'Alan Turing', 'alan.turing@example.co.uk', '+44 161 496 0734',
     '6011 1111 1111 1117', 'Manchester', 'bronze')""",
    "create or replace table orders (id int, customer_id int, amount number(10, 2),"
    " ordered_at date, status varchar)",
    """insert into orders values
    (101, 1, 120.50, '2026-11-02', 'shipped'),
    (102, 2, 75.00, '2026-11-03', 'shipped'),
    (103, 1, 18.20, '2026-11-20', 'open'),
    (104, 3, 310.00, '2026-11-21', 'open'),
    (105, 4, 42.75, '2026-11-22', 'cancelled')""",
)


@dataclass(frozen=True)
class DemoFiles:
    """What the demo writes for its user, all readable by the owner only."""

    agent_token: Path
    approver_token: Path
    snowflake_home: Path

    @property
    def connections(self) -> Path:
        return self.snowflake_home / "connections.toml"


def gateway_options(home: Path, issuer: str) -> dict[str, object]:
    return {
        **stack.embedded_gateway_options(issuer, UPSTREAM_PASSWORD_ENV),
        "hoopgw_role_map": [f"agents={ROLE}:{WAREHOUSE}", "readers=READER"],
        "hoopgw_store": f"file:{home / 'store'}",
        "hoopgw_spool_dir": str(home / "spool"),
        "hoopgw_policy": str(POLICY),
    }


def seed(upstream: str) -> None:
    """The demo's data, written straight into the emulator (not through the gateway)."""
    import snowflake.connector

    host, port = upstream.removeprefix("http://").split(":")
    connection = snowflake.connector.connect(
        account="fakesnow",
        user="seed",
        password=EMULATOR_PASSWORD,
        host=host,
        port=int(port),
        protocol="http",
        database=DATABASE,
        schema=SCHEMA,
    )
    try:
        for statement in SEED:
            connection.cursor().execute(statement)
    finally:
        connection.close()


def write_private(path: Path, text: str) -> None:
    """Create or replace `path` with mode 0600 from the start (never readable by others)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def connections_toml(gateway: stack.Gateway, upstream: str, agent_token: Path) -> str:
    emulator_host, emulator_port = upstream.removeprefix("http://").split(":")
    return f"""\
# Written by `make demo`. [{CONNECTION}]: the demo agent through the gateway.
[{CONNECTION}]
account = "demo"
user = "{AGENT}"
authenticator = "oauth"
token_file_path = "{agent_token}"
host = "{gateway.host}"
port = {gateway.port}
protocol = "{gateway.protocol}"
database = "{DATABASE}"
schema = "{SCHEMA}"
warehouse = "{WAREHOUSE}"
role = "{ROLE}"

# [{EMULATOR_CONNECTION}]: the Snowflake emulator itself, a sandbox for `hoopgw replay`.
[{EMULATOR_CONNECTION}]
account = "sandbox"
user = "replayer"
password = "{EMULATOR_PASSWORD}"
host = "{emulator_host}"
port = {emulator_port}
protocol = "http"
database = "{DATABASE}"
schema = "{SCHEMA}"
"""


def write_files(
    home: Path, gateway: stack.Gateway, upstream: str, provider: stack.OidcProvider
) -> DemoFiles:
    files = DemoFiles(
        agent_token=home / "tokens" / f"{AGENT}.token",
        approver_token=home / "tokens" / f"{APPROVER}.token",
        snowflake_home=home / "snowflake",
    )
    write_private(files.agent_token, provider.mint(AGENT, AGENT_GROUPS))
    write_private(files.approver_token, provider.mint(APPROVER, APPROVER_GROUPS))
    write_private(files.connections, connections_toml(gateway, upstream, files.agent_token))
    return files


def walkthrough(gateway: stack.Gateway, files: DemoFiles, home: Path) -> str:
    store = f"file:{home / 'store'}"
    hoopgw = ".venv/bin/hoopgw"
    client = ".venv/bin/python -m scripts.demo_client"
    approver = files.approver_token
    return f"""
hoopgw is running.

  gateway       {gateway.url}  (in front of the Snowflake emulator)
  policy        {POLICY.relative_to(REPO_ROOT)}
  data          {DATABASE}.{SCHEMA}: CUSTOMERS (names, e-mails, phones, cards), ORDERS
  recordings    {home / "store"}
  gateway log   {gateway.proc.log_path}

Identities (ID tokens from the local OIDC provider, valid one hour, files 0600):

  {AGENT} (group {", ".join(AGENT_GROUPS)}), the agent  {files.agent_token}
  {APPROVER} (group {", ".join(APPROVER_GROUPS)}), the approver  {files.approver_token}

A ready connection, [{CONNECTION}] in {files.connections}:

  [{CONNECTION}]
  account = "demo"
  user = "{AGENT}"
  authenticator = "oauth"
  token_file_path = "{files.agent_token}"
  host = "{gateway.host}"
  port = {gateway.port}
  protocol = "{gateway.protocol}"
  database = "{DATABASE}"
  schema = "{SCHEMA}"
  warehouse = "{WAREHOUSE}"
  role = "{ROLE}"

Walkthrough. In every terminal you use, from {REPO_ROOT}, first:

  export SNOWFLAKE_HOME={files.snowflake_home} HOOPGW_STORE={store}

Any Snowflake tool reads that file, e.g.
  {CONNECTOR_ONE_LINER}

1. Refused by the policy (rule agents-guard denies DROP and GRANT, and DELETE without WHERE):
  {client} "{REFUSED}"
  {client} {" ".join(f'"{sql}"' for sql in ALSO_REFUSED)}

2. Held for approval (rule agents-review-changes): this waits ...
  {client} "{HELD}"
   ... until {APPROVER} approves it, from a second terminal:
  {hoopgw} approvals list --token-file {approver} --gateway {gateway.url}
  {hoopgw} approvals approve ID --token-file {approver} --gateway {gateway.url} --reason "ok"

3. Masked (rule agents-see-no-pii): the rows arrive, the e-mails, phones and cards do not:
  {client} "{MASKED}"

4. What was recorded: one session per client run (a session reaches the store when it
   ends). Find step 2's statement and its session, then use that id (a unique prefix will do):
  {hoopgw} sessions list
  {hoopgw} search --outcome approved
  {hoopgw} sessions show SESSION
  {hoopgw} verify SESSION
   Run it again in the emulator and compare (step 3's session would differ: the
   recording keeps the masked rows the agent received):
  {hoopgw} replay SESSION --connection {EMULATOR_CONNECTION}
   Read it in mitmweb (127.0.0.1 only, no proxy; open the URL it prints):
  {hoopgw} inspect SESSION

Press Ctrl-C to stop everything.
"""


@dataclass
class DemoStack:
    """The emulator with the demo data, the identity provider and the gateway, running."""

    home: Path
    processes: list[stack.Proc]
    gateway: stack.Gateway
    files: DemoFiles

    @property
    def store(self) -> str:
        return f"file:{self.home / 'store'}"


@contextlib.contextmanager
def running(home: Path, port: int | None = None) -> Iterator[DemoStack]:
    """Start everything under `home`; stop it all on leaving, whatever happened."""
    home.mkdir(parents=True, exist_ok=True)
    processes: list[stack.Proc] = []
    try:
        upstream_proc, upstream = stack.start_fakesnow(home)
        processes.append(upstream_proc)
        seed(upstream)
        oidc_proc, provider = stack.start_oidc(home)
        processes.append(oidc_proc)
        gateway = stack.start_gateway(
            home,
            upstream,
            gateway_options(home, provider.issuer),
            # the emulator accepts any password; a real deployment uses a key pair
            env={UPSTREAM_PASSWORD_ENV: secrets.token_urlsafe(16)},
            port=port,
        )
        processes.append(gateway.proc)
        files = write_files(home, gateway, upstream, provider)
        yield DemoStack(home, processes, gateway, files)
    finally:
        for proc in reversed(processes):
            proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO_ROOT / "var" / "demo")
    parser.add_argument("--port", type=int, default=None, help="gateway port (default: free)")
    args = parser.parse_args()

    try:
        with running(args.home.resolve(), args.port) as demo:
            print(walkthrough(demo.gateway, demo.files, demo.home), flush=True)
            stopped = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stopped.set())
            signal.signal(signal.SIGTERM, lambda *_: stopped.set())
            while not stopped.wait(1.0):
                for proc in demo.processes:
                    if not proc.alive():
                        print(f"{proc.name} stopped unexpectedly; see {proc.log_path}")
                        return 1
            print("\nstopping...", flush=True)
            return 0
    except stack.StartupError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
