"""The tools agents use, each through the gateway over TLS with the settings docs/clients.md gives.

snowflake-sqlalchemy, snowflake-cli (`snow sql`), dbt-snowflake (`dbt run-operation`),
the two MCP servers agents run (Snowflake-Labs `snowflake-labs-mcp` and
`mcp-snowflake-server`, started as stdio servers and called with the `mcp`
client library) and the SQL API v2 with curl. Each runs a statement with a
unique marker comment; the test finds it in the gateway's recording. All of
these sit on connector 3.x/4.x, which trust a private CA through
`REQUESTS_CA_BUNDLE`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clients.conftest import (
    ACCOUNT,
    DATABASE,
    SCHEMA,
    ClientStack,
    clean_env,
    drive,
    environment,
    marker,
    run,
    which,
)

pytestmark = pytest.mark.clients


def requests_env(client_stack: ClientStack, **extra: str) -> dict[str, str]:
    return clean_env(REQUESTS_CA_BUNDLE=str(client_stack.ca_bundle), **extra)


def connections_toml(client_stack: ClientStack, folder: Path, token_file: Path) -> Path:
    """A `connections.toml` entry as snowflake-cli and the connector read it (0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "connections.toml"
    path.write_text(
        "[hoopgw]\n"
        f'account = "{ACCOUNT}"\n'
        'user = "agent"\n'
        f'host = "{client_stack.host}"\n'
        f"port = {client_stack.port}\n"
        'protocol = "https"\n'
        'authenticator = "oauth"\n'
        f'token_file_path = "{token_file}"\n'
        f'database = "{DATABASE}"\n'
        f'schema = "{SCHEMA}"\n'
    )
    path.chmod(0o600)
    return path


def test_snowflake_sqlalchemy(installs, client_stack: ClientStack) -> None:
    """snowflake-sqlalchemy 2.1 installs connector 5.x: trust through SSL_CERT_FILE."""
    python = environment(installs, "sqlalchemy") / "bin" / "python"
    tag = marker("sqlalchemy")
    params = client_stack.connector_params(client_stack.token())
    answer = drive(
        python,
        {
            "client": "sqlalchemy",
            "url": f"snowflake://agent@{ACCOUNT}/{DATABASE}/{SCHEMA}",
            "params": {
                k: params[k] for k in ("host", "port", "protocol", "authenticator", "token")
            },
            "sql": f"select 'ok' as answer /*{tag}*/",
        },
        clean_env(SSL_CERT_FILE=str(client_stack.ca_bundle)),
    )
    assert answer["rows"] == [["ok"]]
    assert client_stack.recorded(tag)


def test_snowflake_cli_snow_sql(installs, client_stack: ClientStack, tmp_path: Path) -> None:
    """`snow sql` strips comments before it sends a statement: the marker is a literal."""
    snow = environment(installs, "snowcli") / "bin" / "snow"
    tag = marker("snowcli")
    token_file = client_stack.token_file(client_stack.token())
    home = tmp_path / "snowflake"
    connections_toml(client_stack, home, token_file)
    completed = run(
        [
            str(snow),
            "sql",
            "--connection",
            "hoopgw",
            "--format",
            "JSON",
            "--query",
            f"select '{tag}' as answer",
        ],
        env=requests_env(client_stack, SNOWFLAKE_HOME=str(home), HOME=str(tmp_path)),
        cwd=tmp_path,
    )
    assert json.loads(completed.stdout) == [{"ANSWER": tag}]
    assert client_stack.recorded(tag)


DBT_PROJECT = """\
name: hoopgw_clients
version: "1.0.0"
profile: hoopgw
macro-paths: ["macros"]
"""
DBT_MACRO = """\
{% macro hoopgw_marker(tag) %}
  {% set result = run_query("select 'ok' as answer /*" ~ tag ~ "*/") %}
  {% do log("answer=" ~ result.columns[0].values()[0], info=True) %}
{% endmacro %}
"""


def dbt_profile(client_stack: ClientStack) -> str:
    """The dbt profile docs/clients.md gives: `authenticator: oauth` and the token."""
    return f"""\
hoopgw:
  target: gateway
  outputs:
    gateway:
      type: snowflake
      account: {ACCOUNT}
      user: agent
      authenticator: oauth
      token: "{{{{ env_var('HOOPGW_TOKEN') }}}}"
      host: {client_stack.host}
      port: {client_stack.port}
      protocol: https
      database: {DATABASE}
      schema: {SCHEMA}
      threads: 1
"""


def test_dbt_snowflake_run_operation(installs, client_stack: ClientStack, tmp_path: Path) -> None:
    dbt = environment(installs, "dbt") / "bin" / "dbt"
    tag = marker("dbt")
    project = tmp_path / "project"
    (project / "macros").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(DBT_PROJECT)
    (project / "macros" / "marker.sql").write_text(DBT_MACRO)
    (project / "profiles.yml").write_text(dbt_profile(client_stack))
    completed = run(
        [
            str(dbt),
            "run-operation",
            "hoopgw_marker",
            "--args",
            json.dumps({"tag": tag}),
            "--project-dir",
            str(project),
            "--profiles-dir",
            str(project),
        ],
        env=requests_env(
            client_stack,
            HOOPGW_TOKEN=client_stack.token(),
            HOME=str(tmp_path),
            DBT_SEND_ANONYMOUS_USAGE_STATS="false",
            DBT_VERSION_CHECK="false",
        ),
        cwd=project,
    )
    assert "answer=ok" in completed.stdout
    assert client_stack.recorded(tag)


LABS_CONFIG = """\
other_services:
  object_manager: false
  query_manager: true
  semantic_manager: false
sql_statement_permissions:
  - Select: true
"""


def test_snowflake_labs_mcp(installs, client_stack: ClientStack, tmp_path: Path) -> None:
    """Snowflake-Labs/mcp reads its connection from `connections.toml` (no login flags given)."""
    folder = environment(installs, "snowflake-labs-mcp")
    tag = marker("labs-mcp")
    home = tmp_path / "snowflake"
    connections_toml(client_stack, home, client_stack.token_file(client_stack.token()))
    config = tmp_path / "tools.yaml"
    config.write_text(LABS_CONFIG)
    env = requests_env(
        client_stack,
        SNOWFLAKE_HOME=str(home),
        SNOWFLAKE_DEFAULT_CONNECTION_NAME="hoopgw",
        HOME=str(tmp_path),
    )
    answer = drive(
        folder / "bin" / "python",
        {
            "client": "mcp",
            "command": str(folder / "bin" / "mcp-server-snowflake"),
            "args": ["--service-config-file", str(config), "--transport", "stdio"],
            "env": env,
            "tool": "run_snowflake_query",
            "arguments": {"statement": f"select 'ok' as answer /*{tag}*/"},
        },
        env,
    )
    assert "run_snowflake_query" in answer["tools"]
    assert not answer["is_error"], answer["text"]
    assert "ok" in answer["text"]
    assert client_stack.recorded(tag)


def test_mcp_snowflake_server(installs, client_stack: ClientStack, tmp_path: Path) -> None:
    """mcp-snowflake-server takes any `--name value` as a connector parameter."""
    folder = environment(installs, "mcp-snowflake-server")
    tag = marker("mcp-server")
    env = requests_env(client_stack, HOME=str(tmp_path))
    connection = {
        "account": ACCOUNT,
        "user": "agent",
        "host": client_stack.host,
        "port": str(client_stack.port),
        "protocol": "https",
        "authenticator": "oauth",
        "token": client_stack.token(),
        "database": DATABASE,
        "schema": SCHEMA,
    }
    answer = drive(
        folder / "bin" / "python",
        {
            "client": "mcp",
            "command": str(folder / "bin" / "mcp_snowflake_server"),
            "args": [part for name, value in connection.items() for part in (f"--{name}", value)],
            "env": env,
            "tool": "read_query",
            "arguments": {"query": f"select 'ok' as answer /*{tag}*/"},
        },
        env,
    )
    assert "read_query" in answer["tools"]
    assert not answer["is_error"], answer["text"]
    assert "ok" in answer["text"]
    assert client_stack.recorded(tag)


def test_sql_api_v2_with_curl(client_stack: ClientStack, tmp_path: Path) -> None:
    tag = marker("sql-api")
    headers = tmp_path / "headers"
    headers.write_text(
        f"Authorization: Bearer {client_stack.token()}\n"
        "X-Snowflake-Authorization-Token-Type: OAUTH\n"
        "Content-Type: application/json\n"
        "Accept: application/json\n"
    )
    headers.chmod(0o600)
    body = {
        "statement": f"select 'ok' as answer /*{tag}*/",
        "timeout": 60,
        "database": DATABASE,
        "schema": SCHEMA,
    }
    completed = run(
        [
            which("curl"),
            "--silent",
            "--show-error",
            "--fail-with-body",
            "--cacert",
            str(client_stack.ca_bundle),
            "--header",
            f"@{headers}",
            "--data",
            json.dumps(body),
            f"{client_stack.url}/api/v2/statements",
        ],
        env=clean_env(),
    )
    answer = json.loads(completed.stdout)
    assert answer["statementHandle"]
    assert tag in json.dumps(answer["data"])
    assert client_stack.recorded(tag)
