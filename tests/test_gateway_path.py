"""The gateway in the data path: the real connector gets through it what it gets directly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import snowflake.connector
from snowflake.connector import ProgrammingError

from hoopgw.addons.lockdown import REMOVED
from tests import chain_report, stack


def run_workload(connection: snowflake.connector.SnowflakeConnection, db: str) -> dict:
    """DDL, DML, bound SELECT, executemany, async, a failing statement and a large result."""
    cur = connection.cursor()
    outcome: dict = {}
    cur.execute(f"create database if not exists {db}")
    cur.execute(f"create schema if not exists {db}.app")
    cur.execute(f"use schema {db}.app")
    cur.execute("create or replace table orders (id int, customer varchar, amount float)")
    cur.execute("insert into orders values (?, ?, ?)", (1, "ada", 10.5))
    cur.executemany(
        "insert into orders values (?, ?, ?)", [(2, "bob", 20.0), (3, "cy", 30.25), (4, "ada", 1.0)]
    )
    outcome["bound_select"] = cur.execute(
        "select id, customer, amount from orders where customer = ? order by id", ("ada",)
    ).fetchall()
    outcome["update"] = cur.execute("update orders set amount = amount * 2 where id = ?", (2,))
    outcome["update"] = cur.rowcount
    outcome["columns"] = [c.name for c in cur.execute("select * from orders").description]
    cur.execute_async("select count(*), sum(amount) from orders")
    query_id = cur.sfqid
    cur.get_results_from_sfqid(query_id)
    outcome["async"] = cur.fetchall()
    with pytest.raises(ProgrammingError) as failure:
        cur.execute("select * from no_such_table_anywhere")
    outcome["error"] = (failure.value.errno, failure.value.sqlstate, failure.value.msg)
    large = cur.execute(
        "select seq4() as n, 'row ' || seq4() as label from table(generator(rowcount => 100000))"
    )
    rows = large.fetchall()
    outcome["large"] = (len(rows), rows[0], rows[-1])
    return outcome


def test_workload_through_gateway_matches_direct(
    gateway, fakesnow_server, connect, unique_name, agent_token
):
    through = run_workload(connect(gateway, agent_token), unique_name("thru"))
    direct = run_workload(connect(fakesnow_server), unique_name("direct"))
    assert through == direct
    assert through["large"][0] == 100_000
    assert through["bound_select"] == [(1, "ada", 10.5), (4, "ada", 1.0)]
    assert through["error"][0] == 2003


def test_workload_over_tls(
    gateway_factory, fakesnow_server, connect, unique_name, tls, monkeypatch, agent_token
):
    secure = gateway_factory(fakesnow_server.url, certs=tls.server_pem, name="tls-gateway")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_bundle))
    outcome = run_workload(
        connect(secure, agent_token, disable_ocsp_checks=True), unique_name("tls")
    )
    assert secure.protocol == "https"
    assert outcome["large"][0] == 100_000


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("hoopgw_store", "ftp://bucket/x", "hoopgw_store: unsupported store URL (scheme 'ftp')"),
        ("hoopgw_role_map", "agents:ANALYST", "hoopgw_role_map"),
        ("hoopgw_upstream_password", "file:/nonexistent/secret", "hoopgw_upstream_password"),
        ("hoopgw_request_limit", "10", "hoopgw_request_limit must be at least 1024 bytes"),
        ("hoopgw_rollup_interval", "-1", "hoopgw_rollup_interval must not be negative"),
        ("modify_body", "|~q|SELECT|DROP TABLE t", "modify_body cannot be used with hoopgw"),
        ("map_remote", "|.*|https://elsewhere.example", "map_remote cannot be used with hoopgw"),
        ("flow_detail", "3", "flow_detail above 1 cannot be used with hoopgw"),
    ],
)
def test_bad_option_stops_startup_with_one_line(fakesnow_server, workdir, option, value, expected):
    home = workdir / f"bad-{option}"
    options = {**stack.embedded_gateway_options("http://127.0.0.1:9", "HOOPGW_PW"), option: value}
    argv = stack.gateway_argv(
        fakesnow_server.url, stack.free_port(), options, confdir=home / "conf"
    )
    argv = only_the_last_setting(argv, option)
    env = {**os.environ, "HOOPGW_PW": "only-for-this-test"}
    proc = stack.Proc("gateway", argv, home / "gateway.log", env=env, cwd=workdir).start()
    assert proc.process is not None
    status = proc.process.wait(timeout=30)
    output = proc.log()
    assert status == 1
    error_lines = [line for line in output.splitlines() if "invalid option" in line]
    assert len(error_lines) == 1, output
    assert expected in error_lines[0]
    assert "Traceback" not in output


def only_the_last_setting(argv: list[str], option: str) -> list[str]:
    """`argv` without earlier `--set option=...` (the rig sets flow_detail=0 itself)."""
    settings = [
        i
        for i, arg in enumerate(argv[:-1])
        if arg == "--set" and argv[i + 1].startswith(f"{option}=")
    ]
    dropped = {index for start in settings[:-1] for index in (start, start + 1)}
    return [arg for index, arg in enumerate(argv) if index not in dropped]


@pytest.mark.parametrize("change", ["removed", "broken"])
def test_gateway_exits_when_its_addons_are_unloaded(fakesnow_server, workdir, change):
    """mitmproxy drops a script whose file is removed or no longer loads, and would then
    forward requests with none of the gateway's hooks: the gateway exits instead."""
    home = workdir / f"unloaded-{change}"
    home.mkdir()
    script = home / "hoopgw_script.py"
    script.write_text(
        f"import runpy\n\naddons = runpy.run_path({str(stack.GATEWAY_SCRIPT)!r})['addons']\n"
    )
    gateway = stack.start_gateway(
        home,
        fakesnow_server.url,
        stack.embedded_gateway_options("http://127.0.0.1:9", "HOOPGW_PW"),
        env={"HOOPGW_PW": "only-for-this-test"},
        script=script,
    )
    process = gateway.proc.process
    assert process is not None and process.poll() is None
    try:
        if change == "removed":
            script.unlink()
        else:
            script.write_text("this is not Python\n")
            os.utime(script, (os.stat(script).st_atime, os.stat(script).st_mtime + 5))
        stack.wait_until(lambda: process.poll() is not None, 30, "the gateway to exit")
    finally:
        gateway.proc.stop()
    assert process.returncode == 70
    assert "hoopgw: the gateway's addons were unloaded" in gateway.proc.log()
    assert not stack.port_open(gateway.port)


def test_a_running_gateway_has_mitmproxys_flow_changing_addons_out_of_its_chain(
    gateway_factory, fakesnow_server, connect, agent_token
):
    """addons/lockdown.py and addons/chain.py in a real mitmdump: the addons and commands that
    would rewrite, redirect, replay or save flows after the gateway are gone, the rest are
    grouped around the scripts, and statements still run."""
    gateway = gateway_factory(
        fakesnow_server.url, name="lean-chain", extra_scripts=[Path(chain_report.__file__)]
    )
    stack.wait_until(lambda: chain_report.COMMANDS in gateway.log(), 30, "the chain report")
    lines = gateway.log().splitlines()
    chain = next(line for line in lines if chain_report.PREFIX in line)
    chain_names = set(chain.split(chain_report.PREFIX, 1)[1].split())
    top = next(line for line in lines if chain_report.TOP_LEVEL in line)
    # mitmproxy's own addons in one group before the scripts and one after (addons/chain.py)
    assert top.split(chain_report.TOP_LEVEL, 1)[1].split() == ["group", "scriptloader", "group"]
    commands = next(line for line in lines if chain_report.COMMANDS in line)
    command_names = set(commands.split(chain_report.COMMANDS, 1)[1].split())
    assert {"proxyserver", "scriptloader", "nextlayer", "tlsconfig", "errorcheck"} <= chain_names
    for item in REMOVED:
        assert item.name not in chain_names, item.name
    assert not command_names & {"replay.client", "replay.server", "export.file", "save.file"}
    assert "flow.resume" in command_names
    cursor = connect(gateway, agent_token).cursor()
    assert cursor.execute("select 1 + 1").fetchall() == [(2,)]
