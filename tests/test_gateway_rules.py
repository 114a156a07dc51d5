"""Checks the gateway applies to every caller, with or without a policy file."""

from __future__ import annotations

import pytest
from snowflake.connector import ProgrammingError

from hoopgw.addons.protocol import CODE_GATEWAY_POLICY


@pytest.mark.parametrize(
    "sql", ["use role accountadmin", "USE  ROLE SYSADMIN", "use secondary roles all"]
)
def test_role_change_is_refused(gateway, connect, agent_token, sql):
    cursor = connect(gateway, agent_token).cursor()
    with pytest.raises(ProgrammingError) as refused:
        cursor.execute(sql)
    assert refused.value.errno == CODE_GATEWAY_POLICY
    assert "does not let a session change its role" in refused.value.msg
    assert cursor.execute("select current_role() is not null").fetchone() == (True,)


def test_search_path_parameter_is_refused(gateway, connect, agent_token):
    cursor = connect(gateway, agent_token).cursor()
    with pytest.raises(ProgrammingError) as refused:
        cursor.execute("select 1", _statement_params={"SEARCH_PATH": "PAYROLL.PUBLIC"})
    assert refused.value.errno == CODE_GATEWAY_POLICY
    assert "SEARCH_PATH" in refused.value.msg


def test_login_setting_search_path_is_refused(gateway, connect, agent_token):
    with pytest.raises(Exception) as refused:
        connect(gateway, agent_token, session_parameters={"SEARCH_PATH": "PAYROLL.PUBLIC"})
    assert "SEARCH_PATH" in str(refused.value)
