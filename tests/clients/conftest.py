"""The client matrix's rig: cached client installs, and one TLS gateway every client goes through.

The gateway listens on https with a certificate from a private CA (the `tls`
fixture of tests/conftest.py, for `localhost` and `127.0.0.1`); clients reach
it at `127.0.0.1`, a host name with dots, which snowflake-labs-mcp requires
(it refuses `localhost`). Behind it the strict upstream (tests/strict_upstream.py)
checks the gateway's key-pair login and answers SQL API calls, turns answers to
JSON rowsets or chunked results on request, and forwards the rest to fakesnow.
Its policy holds any statement that reads `CLIENTS.APP.HELD` for a `dba`'s
decision.

Installs begin once collection shows a client test is selected, and the client
tests run last, so the installs overlap with the rest of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hoopgw.recorder.secrets import new_token_key
from tests import stack
from tests.bodies import write_service_key
from tests.clients.environments import InstallFailed, Installs
from tests.cloud_storage import CloudStorage
from tests.raw_http import stored_records
from tests.strict_upstream import StrictUpstream

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "drive.py"
ACCOUNT = "clients"
SERVICE_USER = "svc_hoopgw"
DATABASE = "CLIENTS"
SCHEMA = "APP"
HELD_TABLE = f"{DATABASE}.{SCHEMA}.HELD"
HELD_ROWS = [[1, "first"], [2, "second"], [3, "third"]]
TOKEN_KEY_ENV = "HOOPGW_CLIENTS_TEST_TOKEN_KEY"
POLICY = f"""
[[rule]]
name = "clients-review-held"
groups = ["agents"]
review_objects = ["{HELD_TABLE}"]
approvers = ["dba"]
"""
RUN_TIMEOUT = 180.0

_installs: Installs | None = None


def _is_client_test(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Client tests last, and their installs begun now, so both overlap with the rest."""
    global _installs
    clients = [item for item in items if _is_client_test(item)]
    if not clients or config.option.collectonly:
        return
    items[:] = [item for item in items if not _is_client_test(item)] + clients
    if _installs is None:
        _installs = Installs.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """No install outlives the test session; the ones it finished stay cached."""
    if _installs is not None:
        _installs.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _installs is not None:
        terminalreporter.write_line(f"client installs: {_installs.summary()}")


@pytest.fixture(scope="session")
def installs() -> Installs:
    global _installs
    if _installs is None:
        _installs = Installs.start()
    return _installs


def environment(installs: Installs, name: str) -> Path:
    """A client's environment folder; the test skips (fails in CI) if it cannot be built."""
    install = installs.node if name == "node" else installs.python[name]
    if install is None:
        _unavailable("node: `node` or `npm` is not on PATH")
    try:
        return install.wait()
    except InstallFailed as exc:
        _unavailable(str(exc))
    raise AssertionError("unreachable")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"client not installable in CI: {reason}")
    pytest.skip(f"client not installable here: {reason}")


@dataclass(frozen=True)
class ClientStack:
    gateway: stack.Gateway
    strict: StrictUpstream
    storage: CloudStorage
    store: Path
    ca_bundle: Path
    workdir: Path
    oidc: stack.OidcProvider

    @property
    def host(self) -> str:
        return stack.LOOPBACK

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def token(self, subject: str | None = None, groups: tuple[str, ...] = ("agents",)) -> str:
        return self.oidc.mint(subject or f"client-{uuid.uuid4().hex[:6]}", list(groups))

    def token_file(self, token: str) -> Path:
        path = self.workdir / f"token-{uuid.uuid4().hex[:8]}"
        path.write_text(token)
        path.chmod(0o600)
        return path

    def connector_params(self, token: str) -> dict[str, Any]:
        """The connection parameters docs/clients.md gives for the Python connector."""
        return {
            "account": ACCOUNT,
            "user": "agent",
            "host": self.host,
            "port": self.port,
            "protocol": "https",
            "authenticator": "oauth",
            "token": token,
            "database": DATABASE,
            "schema": SCHEMA,
            "login_timeout": 60,
            "network_timeout": 120,
        }

    def recorded(self, marker: str) -> list[dict[str, Any]]:
        """The request records whose SQL carries `marker`, once the spool has stored them."""

        def find() -> list[dict[str, Any]]:
            return [
                record
                for record in stored_records(self.store)
                if record.get("kind") == "request" and marker in str(record.get("sql") or "")
            ]

        return stack.wait_until(find, 60, f"a recorded statement with {marker}")  # type: ignore[return-value]

    def recorded_chunks(self, marker: str, count: int) -> list[dict[str, Any]]:
        """The `chunk` records of the result of the statement carrying `marker`: the chunks
        the gateway fetched for the client (a client fetching from storage leaves none)."""

        def find() -> list[dict[str, Any]] | None:
            records = stored_records(self.store)
            flows = {
                record["flow_id"]
                for record in records
                if record.get("kind") == "request" and marker in str(record.get("sql") or "")
            }
            query_ids = {
                record.get("query_id")
                for record in records
                if record.get("kind") == "response" and record.get("flow_id") in flows
            } - {None}
            chunks = [
                record
                for record in records
                if record.get("kind") == "chunk" and record.get("query_id") in query_ids
            ]
            return chunks if len(chunks) >= count else None

        return stack.wait_until(find, 60, f"{count} chunk records for {marker}")  # type: ignore[return-value]


@pytest.fixture(scope="session")
def client_stack(
    installs, gateway_factory, fakesnow_server, oidc, tls, workdir
) -> Iterator[ClientStack]:
    home = workdir / "clients"
    home.mkdir(exist_ok=True)
    key_path = home / "service-key.p8"
    key, _ = write_service_key(key_path)
    _seed(fakesnow_server.url)
    storage = CloudStorage().start()
    strict = StrictUpstream(
        fakesnow_server.url,
        ACCOUNT,
        SERVICE_USER,
        public_key=key.public_key(),
        storage=storage,
    ).start()
    policy = home / "policy.toml"
    policy.write_text(POLICY)
    store = home / "store"
    options = {
        "hoopgw_upstream_account": ACCOUNT,
        "hoopgw_upstream_user": SERVICE_USER,
        "hoopgw_upstream_private_key": f"file:{key_path}",
        "hoopgw_upstream_password": "",
        "hoopgw_role_map": ["agents=AGENTS", "dba=DBA"],
        "hoopgw_allowed_groups": ["agents", "dba"],
        "hoopgw_token_key": f"env:{TOKEN_KEY_ENV}",
        "hoopgw_policy": str(policy),
        "hoopgw_store": f"file:{store}",
        "hoopgw_approval_check_ms": 200,
    }
    gateway = gateway_factory(
        strict.url,
        options,
        env={TOKEN_KEY_ENV: new_token_key()},
        certs=tls.server_pem,
        name="clients-gw",
    )
    yield ClientStack(gateway, strict, storage, store, tls.ca_bundle, home, oidc)
    strict.stop()
    storage.stop()


def _seed(fakesnow_url: str) -> None:
    import snowflake.connector

    host, port = fakesnow_url.removeprefix("http://").rsplit(":", 1)
    with snowflake.connector.connect(
        account="fake", user="admin", password="x", host=host, port=int(port), protocol="http"
    ) as admin:
        cursor = admin.cursor()
        cursor.execute(f"create database if not exists {DATABASE}")
        cursor.execute(f"create schema if not exists {DATABASE}.{SCHEMA}")
        cursor.execute(f"create or replace table {HELD_TABLE} (id int, label varchar)")
        values = ", ".join(f"({i}, '{label}')" for i, label in HELD_ROWS)
        cursor.execute(f"insert into {HELD_TABLE} values {values}")


def marker(client: str) -> str:
    return f"hoopgw-client-{client}-{uuid.uuid4().hex[:10]}"


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """A client command; its output is in the assertion message if it fails."""
    completed = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, (
        f"{argv[0]} exited {completed.returncode}\nstdout:\n{completed.stdout[-3000:]}"
        f"\nstderr:\n{completed.stderr[-5000:]}"
    )
    return completed


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that points a client at another trust store."""
    dropped = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
    env = {k: v for k, v in os.environ.items() if k not in dropped and k != "PYTHONPATH"}
    env.update(extra)
    return env


def drive(python: Path, job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run tests/clients/drive.py with a client environment's interpreter."""
    completed = run([str(python), str(DRIVER)], env=env, stdin=json.dumps(job))
    return answer_of(completed)


def answer_of(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON line a client script ends its output with."""
    lines = completed.stdout.strip().splitlines()
    assert lines, f"the client printed no answer; stderr:\n{completed.stderr[-5000:]}"
    return json.loads(lines[-1])


def which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        _unavailable(f"`{name}` is not on PATH")
    return str(found)
