"""The guardrails policy (addons/guardrails.py): loading, checking, reloading, and fuzzing."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopgw.addons.guardrails import (
    Decision,
    Policy,
    PolicyError,
    PolicyFile,
    load_policy,
    parse_policy,
)
from hoopgw.recorder.statements import classify

FUZZ = settings(max_examples=int(os.environ.get("HOOPGW_FUZZ_EXAMPLES", "200")), deadline=None)

ISSUE_POLICY = """
[[rule]]
name = "readers-read-only"
groups = ["readers"]
read_only = true

[[rule]]
name = "agents-guard"
groups = ["agents"]
deny_kinds = ["DROP", "TRUNCATE", "GRANT", "REVOKE"]
deny_objects = ["*.PAYROLL.*"]
require_where = true
"""

POLICY = parse_policy(ISSUE_POLICY.encode(), "issue.toml")


def check(
    sql: str,
    groups: Sequence[str],
    policy: Policy = POLICY,
    database: str | None = "DB",
    schema: str | None = "S",
) -> Decision:
    return policy.check(classify(sql, database=database, schema=schema), groups)


def test_issue_policy_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(ISSUE_POLICY)
    policy = load_policy(path)
    assert [rule.name for rule in policy.rules] == ["readers-read-only", "agents-guard"]
    guard = policy.rules[1]
    assert guard.deny_kinds == {"DROP", "TRUNCATE", "GRANT", "REVOKE"}
    assert guard.require_where and not guard.read_only
    assert guard.on_unparsable == "deny"
    assert policy.digest is not None and len(policy.digest) == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]\nname = 'x'", "bad.toml: invalid TOML"),
        ("version = 1", "bad.toml: unknown top-level key 'version'"),
        ("rule = 'x'", "bad.toml: 'rule' must be an array of tables"),
        ("[[rule]]\ngroups = ['a']\nread_only = true", "bad.toml: rule #1: name: required"),
        ("[[rule]]\nname = 'r'\nread_only = true", "bad.toml: rule 'r': groups: required"),
        ("[[rule]]\nname = 'r'\ngroups = []", "bad.toml: rule 'r': groups: must name at least one"),
        (
            "[[rule]]\nname = 'r'\ngroups = ['a']\nreadonly = true",
            "rule 'r': readonly: unknown key",
        ),
        ("[[rule]]\nname = 'r'\ngroups = ['a']\nread_only = 'yes'", "rule 'r': read_only: must be"),
        (
            "[[rule]]\nname = 'r'\ngroups = ['a']\ndeny_kinds = ['DROPP']",
            "rule 'r': deny_kinds: unknown statement kind 'DROPP'",
        ),
        (
            "[[rule]]\nname = 'r'\ngroups = ['a']\nallow_kinds = ['SELECT', 'UNKNOWN']",
            "rule 'r': allow_kinds: 'UNKNOWN' is not a kind to list; use on_unparsable",
        ),
        (
            "[[rule]]\nname = 'r'\ngroups = ['a']\ndeny_objects = ['*PAYROLL*']",
            "rule 'r': deny_objects: '*PAYROLL*' must have three dot-separated parts",
        ),
        (
            "[[rule]]\nname = 'r'\ngroups = ['a']\non_unparsable = 'maybe'",
            'rule \'r\': on_unparsable: must be "deny" or "allow"',
        ),
        (
            "[[rule]]\nname = 'r'\ngroups = ['a']\n[[rule]]\nname = 'r'\ngroups = ['b']",
            "rule 'r': name: used by an earlier rule",
        ),
        ("[[rule]]\nname = 'r'\ngroups = 'agents'", "rule 'r': groups: must be a list"),
    ],
)
def test_policy_errors_name_file_rule_and_key(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as failure:
        parse_policy(text.encode(), "bad.toml")
    assert message in str(failure.value)
    assert "\n" not in str(failure.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nowhere\.toml: cannot be read"):
        load_policy(tmp_path / "nowhere.toml")


READ_ONLY_REFUSED = [
    "drop table t",
    "truncate table t",
    "grant select on table t to role r",
    "delete from t",
    "delete from t where id = 1",
    "create or replace table t (x int)",
    "select 1; drop table t",
    "insert into t values (1)",
    "use role accountadmin",
    "call p()",
    "select system$cancel_all_queries()",
    "with x as (delete from t) select 1",
    "execute immediate 'drop table t'",
    "begin drop table t; end",
    "put file:///tmp/x @st",
    "show tables ->> delete from t",
    "with p as procedure () returns int language sql as 'select 1' call p()",
]
READ_ONLY_ALLOWED = [
    "select * from t",
    "show tables",
    "describe table t",
    "use schema other",
    "use warehouse w",
    "explain delete from t",
    "alter session set query_tag = 'x'",
    "begin; select 1; commit",
    "execute immediate 'select 1'",
    "list @st",
]


@pytest.mark.parametrize("sql", READ_ONLY_REFUSED)
def test_read_only_group_is_refused_changes(sql: str) -> None:
    decision = check(sql, ["readers"])
    assert decision.blocked
    assert decision.rule == "readers-read-only"
    assert decision.reason is not None and decision.reason.startswith(
        "rule 'readers-read-only' is read-only"
    )


@pytest.mark.parametrize("sql", READ_ONLY_ALLOWED)
def test_read_only_group_may_read(sql: str) -> None:
    assert check(sql, ["readers"]).decision == "allow"


@pytest.mark.parametrize("sql", [*READ_ONLY_REFUSED, "select * from payroll.emp", "select ) from"])
def test_group_without_rules_is_unrestricted(sql: str) -> None:
    decision = check(sql, ["analysts"])
    assert decision == Decision(
        "allow", kinds=decision.kinds, objects=decision.objects, policy=decision.policy
    )
    assert check(sql, []).decision == "allow"


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("drop table t", "rule 'agents-guard' denies DROP"),
        ("DROP   TABLE db.s.t", "rule 'agents-guard' denies DROP"),
        ("truncate t", "rule 'agents-guard' denies TRUNCATE"),
        ("grant select on table t to role r", "rule 'agents-guard' denies GRANT"),
        ("revoke select on table t from role r", "rule 'agents-guard' denies REVOKE"),
        ("grant role r to user u", "rule 'agents-guard' denies GRANT"),
        ("select 1; drop table t", "rule 'agents-guard' denies DROP"),
        ("execute immediate 'drop table t'", "rule 'agents-guard' denies DROP (inside EXECUTE)"),
        ("delete from t", "rule 'agents-guard' requires a WHERE clause on DELETE FROM DB.S.T"),
        ("delete from t where 1 = 1", "requires a WHERE clause on DELETE FROM DB.S.T"),
        ("update a.b set x = 1", "rule 'agents-guard' requires a WHERE clause on UPDATE DB.A.B"),
        (
            "with x as (delete from t) select 1",
            "requires a WHERE clause on DELETE FROM DB.S.T (inside SELECT)",
        ),
        ("select ) from", "rule 'agents-guard' refuses statements it cannot parse"),
        ("begin delete from t where id = 1; end", "refuses statements it cannot see through"),
        ("execute immediate :sql", "refuses statements it cannot see through: this EXECUTE"),
    ],
)
def test_agents_guard_reasons(sql: str, reason: str) -> None:
    decision = check(sql, ["agents"])
    assert decision.blocked and decision.rule == "agents-guard"
    assert decision.reason is not None and reason in decision.reason


@pytest.mark.parametrize(
    "sql",
    [
        "select * from t",
        "delete from t where id = 1",
        "update t set x = 1 where id = 2",
        "create or replace table t (x int)",
        "insert into t select * from other.u",
        "use schema analytics",
        "use database payroll",
    ],
)
def test_agents_guard_allows_the_rest(sql: str) -> None:
    assert check(sql, ["agents"]).decision == "allow"


@pytest.mark.parametrize(
    ("sql", "database", "schema", "denied"),
    [
        ("select * from db.payroll.emp", "DB", "S", "DB.PAYROLL.EMP"),
        ("select * from payroll.emp", "DB", "S", "DB.PAYROLL.EMP"),
        ("select * from emp", "DB", "PAYROLL", "DB.PAYROLL.EMP"),
        ("select * from PayRoll.Emp", "DB", "S", "DB.PAYROLL.EMP"),
        ('select * from "PAYROLL"."EMP"', "DB", "S", "DB.PAYROLL.EMP"),
        ('select * from "payroll"."emp"', "DB", "S", "DB.payroll.emp"),
        ("use schema payroll", "DB", "S", "DB.PAYROLL"),
        ("use other.payroll", "DB", "S", "OTHER.PAYROLL"),
        ("use schema payroll; select 1", "DB", "S", "DB.PAYROLL"),
        ("select 1; use database x; select * from payroll.t", "DB", "S", "X.PAYROLL.T"),
        ("show tables in schema payroll", "DB", "S", "DB.PAYROLL"),
        ("insert into t select * from payroll.emp", "DB", "S", "DB.PAYROLL.EMP"),
        ("delete from payroll.emp where id = 1", "DB", "S", "DB.PAYROLL.EMP"),
        ("select * from identifier('payroll.emp')", "DB", "S", "DB.PAYROLL.EMP"),
        ("copy into @payroll.stage from t", "DB", "S", "DB.PAYROLL.STAGE"),
        ("alter session set search_path = '$current, payroll'", "DB", "S", "DB.PAYROLL"),
        ("explain select * from payroll.emp", "DB", "S", "DB.PAYROLL.EMP"),
        ("execute immediate 'select * from payroll.emp'", "DB", "S", "DB.PAYROLL.EMP"),
        ("select * from payroll.emp", None, None, "?.PAYROLL.EMP"),
    ],
)
def test_denied_objects_however_written(
    sql: str, database: str | None, schema: str | None, denied: str
) -> None:
    decision = check(sql, ["agents"], database=database, schema=schema)
    assert decision.blocked
    assert decision.reason is not None
    assert f"denies access to {denied} (*.PAYROLL.*)" in decision.reason


@pytest.mark.parametrize(
    ("sql", "database", "schema", "name"),
    [
        ("select * from emp", None, None, "?.?.EMP"),
        ("select * from emp", "DB", None, "DB.?.EMP"),
        ("select * from identifier($t)", "DB", "S", "?.?.?"),
        ("select * from table(:name)", "DB", "S", "?.?.?"),
        ("select get_ddl('table', $t)", "DB", "S", "?.?.?"),
        ("use schema identifier($s)", "DB", "S", "?.?"),
        ("use schema identifier($s); select * from t", "DB", "PUBLIC", "?.?"),
        ("explain select ) from", "DB", "S", "?.?.?"),
    ],
)
def test_objects_the_gateway_cannot_name_are_refused_where_objects_are_denied(
    sql: str, database: str | None, schema: str | None, name: str
) -> None:
    decision = check(sql, ["agents"], database=database, schema=schema)
    assert decision.reason == (
        f"rule 'agents-guard' denies access to *.PAYROLL.* and cannot tell whether {name} "
        "is one of those objects: name it literally and fully qualified"
    )
    assert not check(sql, ["readers"], database=database, schema=schema).blocked
    assert not check(sql, ["g"], _policy('deny_kinds = ["DROP"]')).blocked


def test_deny_role_change() -> None:
    policy = _policy("deny_role_change = true")
    for sql in ("use role accountadmin", "use secondary roles all", 'USE ROLE "Admin"'):
        assert check(sql, ["g"], policy).reason == (
            "rule 'r' denies changing the role (USE ROLE, USE SECONDARY ROLES)"
        ), sql
    for sql in ("use warehouse w", "use schema s", "use database d"):
        assert not check(sql, ["g"], policy).blocked


def _policy(body: str) -> Policy:
    return parse_policy(f'[[rule]]\nname = "r"\ngroups = ["g"]\n{body}'.encode(), "p.toml")


@pytest.mark.parametrize(
    ("pattern", "sql", "blocked"),
    [
        ("PROD.*.*", "use database prod", True),
        ("PROD.*.*", "use schema prod.x", True),
        ("PROD.*.*", "select * from prod.x.y", True),
        ("PROD.*.*", "select * from dev.x.y", False),
        ("*.PAYROLL.SALARY*", "select * from payroll.salary_2024", True),
        ("*.PAYROLL.SALARY*", "select * from payroll.emp", False),
        ("*.PAYROLL.SALARY*", "use schema payroll", False),
        ("*.*.SECRET", "select * from a.b.secret", True),
        ("*.*.SECRET", "use schema a.b", False),
        ('"My Db".*.*', 'select * from "My Db".s.t', True),
        ('"My Db".*.*', "select * from my_db.s.t", False),
        ("DB.S.T?", "select * from t1", True),
        ("DB.S.T?", "select * from t12", False),
    ],
)
def test_object_globs(pattern: str, sql: str, blocked: bool) -> None:
    policy = _policy(f"deny_objects = ['{pattern}']")
    assert check(sql, ["g"], policy).blocked is blocked


@pytest.mark.parametrize(
    ("setting", "blocked"),
    [("", True), ('on_unparsable = "deny"', True), ('on_unparsable = "allow"', False)],
)
def test_unparsable_follows_the_configured_default(setting: str, blocked: bool) -> None:
    policy = _policy(f'deny_kinds = ["DROP"]\n{setting}')
    for sql in ("select ) from", "execute immediate :v", "begin select 1; end"):
        assert check(sql, ["g"], policy).blocked is blocked, sql


def test_rule_without_restrictions_allows_unparsable() -> None:
    assert not check("select ) from", ["g"], _policy("")).blocked


def test_allow_kinds() -> None:
    policy = _policy('allow_kinds = ["SELECT", "SHOW"]')
    assert not check("select 1; show tables", ["g"], policy).blocked
    decision = check("select 1; insert into t values (1)", ["g"], policy)
    assert decision.reason == "rule 'r' allows only SELECT, SHOW statements, not INSERT"
    assert decision.statement_index == 1
    assert check("with x as (delete from t) select 1", ["g"], policy).blocked


def test_deny_replace() -> None:
    policy = _policy("deny_replace = true")
    assert check("create or replace table t (x int)", ["g"], policy).reason == (
        "rule 'r' denies CREATE OR REPLACE"
    )
    assert check("insert overwrite into t select 1", ["g"], policy).reason == (
        "rule 'r' denies INSERT OVERWRITE"
    )
    assert not check("create table t (x int)", ["g"], policy).blocked


def test_every_applicable_rule_is_checked_and_the_first_blocker_reported() -> None:
    policy = parse_policy(
        b"""
[[rule]]
name = "no-drop"
groups = ["a", "b"]
deny_kinds = ["DROP"]

[[rule]]
name = "no-payroll"
groups = ["b"]
deny_objects = ["*.PAYROLL.*"]

[[rule]]
name = "everyone-where"
groups = ["*"]
require_where = true
""",
        "p.toml",
    )
    assert check("select * from payroll.x", ["a"], policy).decision == "allow"
    assert check("select * from payroll.x", ["a", "b"], policy).rule == "no-payroll"
    assert check("drop table payroll.x", ["b"], policy).rule == "no-drop"
    assert check("delete from t", ["nobody-listed"], policy).rule == "everyone-where"
    decision = check("select 1; select * from payroll.x; drop table t", ["b"], policy)
    assert (decision.rule, decision.statement_index) == ("no-payroll", 1)


def test_decision_record() -> None:
    decision = check("use schema payroll; select * from emp", ["agents"])
    record = decision.as_record()
    assert record["decision"] == "block"
    assert record["rule"] == "agents-guard"
    assert record["statement_index"] == 0
    assert record["kinds"] == ["USE", "SELECT"]
    assert record["objects"] == ["DB.PAYROLL", "DB.PAYROLL.EMP"]
    assert POLICY.digest is not None and record["policy"] == POLICY.digest[:16]
    allowed = check("select * from t", ["agents"]).as_record()
    assert allowed["decision"] == "allow" and allowed["rule"] is None
    assert allowed["objects"] == ["DB.S.T"]


def test_empty_policy_allows_everything() -> None:
    assert check("drop database prod", ["agents"], Policy()).decision == "allow"


# Reloading


def test_policy_file_reloads_valid_changes_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(ISSUE_POLICY)
    watched = PolicyFile(path)
    first = watched.policy
    assert watched.refresh() is False

    path.write_text(ISSUE_POLICY + '\n[[rule]]\nname = "more"\ngroups = ["x"]\n')
    assert watched.refresh() is True
    assert [rule.name for rule in watched.policy.rules][-1] == "more"
    second = watched.policy
    assert second.digest != first.digest

    caplog.set_level(logging.INFO, logger="hoopgw.addons.guardrails")
    path.write_text(ISSUE_POLICY.replace('"DROP"', '"DROPP"'))
    assert watched.refresh() is False
    assert watched.policy is second
    refused = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refused) == 1
    assert "policy change refused" in refused[0]
    assert "rule 'agents-guard': deny_kinds: unknown statement kind 'DROPP'" in refused[0]
    assert watched.refresh() is False
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    path.unlink()
    assert watched.refresh() is False
    assert watched.policy is second

    path.write_text(ISSUE_POLICY)
    assert watched.refresh() is True
    assert watched.policy.digest == first.digest


# Property: no statement of a denied kind gets through, however it is written.

_SEPARATORS = st.sampled_from(
    [" ", "  ", "\n", "\t", " \r\n ", " /* note; drop */ ", " -- note ; x\n", " // note;\n"]
)
_NAMES = st.sampled_from(
    ["t", "T1", "s.t", "db.s.t", '"My Table"', '"s"."t"', "db..t", "identifier('s.t')"]
)
_BENIGN = st.sampled_from(
    [
        "select 1",
        "select 'a;b' as x",
        "use warehouse w",
        "select * from t where x = ';'",
        "show tables",
    ]
)


def _spell(word: str, flips: list[bool]) -> str:
    if word.startswith(("'", '"')) or "(" in word:
        return word
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(word, flips, strict=False))


@st.composite
def _denied_statement(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(_NAMES)
    templates = {
        "DROP": [["drop", "table", name], ["drop", "view", "if", "exists", name]],
        "TRUNCATE": [["truncate", "table", name], ["truncate", name]],
        "GRANT": [
            ["grant", "select", "on", "table", name, "to", "role", "r"],
            ["grant", "role", "r", "to", "user", "u"],
            ["grant", "usage", "on", "warehouse", "w", "to", "role", "r"],
        ],
        "REVOKE": [["revoke", "select", "on", "table", name, "from", "role", "r"]],
        "DELETE": [
            ["delete", "from", name],
            ["delete", "from", name, "where", "1", "=", "1"],
            ["delete", "from", name, "where", "true"],
        ],
        "UPDATE": [["update", name, "set", "x", "=", "1"]],
    }
    kind = draw(st.sampled_from(sorted(templates)))
    words = draw(st.sampled_from(templates[kind]))
    flips = draw(st.lists(st.booleans(), min_size=40, max_size=40))
    pieces = [_spell(word, flips) for word in words]
    text = pieces[0]
    for piece in pieces[1:]:
        text += draw(_SEPARATORS) + piece
    wrapper = draw(st.sampled_from(["plain", "plain", "execute", "script"]))
    if wrapper == "execute":
        text = "execute immediate '" + text.replace("'", "''") + "'"
    elif wrapper == "script":
        text = "begin " + text + "; end"
    return kind, text


@FUZZ
@given(
    denied=_denied_statement(),
    before=st.lists(_BENIGN, max_size=3),
    after=st.lists(_BENIGN, max_size=2),
    lead=_SEPARATORS,
    chain=st.sampled_from([";", ";\n", " ->> ", "->>"]),
)
def test_no_denied_statement_gets_through(
    denied: tuple[str, str], before: list[str], after: list[str], lead: str, chain: str
) -> None:
    kind, text = denied
    sql = lead + chain.join([*before, text, *after])
    agents = check(sql, ["agents"])
    readers = check(sql, ["readers"])
    assert agents.blocked, (kind, sql)
    assert readers.blocked, (kind, sql)
    assert agents.statement_index == len(before), (kind, sql)


_PAYROLL_REFERENCES = st.sampled_from(
    [
        "payroll.emp",
        "PAYROLL.EMP",
        "PayRoll.Emp",
        '"PAYROLL"."EMP"',
        '"payroll".emp',
        "db.payroll.emp",
        "OTHER.Payroll.x",
        "identifier('payroll.emp')",
    ]
)


@FUZZ
@given(
    reference=_PAYROLL_REFERENCES,
    shape=st.sampled_from(
        [
            "select * from {}",
            "select count(*) from t join {} p on true",
            "insert into t select * from {}",
            "with c as (select * from {}) select * from c",
            "select * from t where id in (select id from {})",
            "describe table {}",
        ]
    ),
    separator=_SEPARATORS,
    before=st.lists(_BENIGN, max_size=2),
)
def test_no_denied_object_gets_through(
    reference: str, shape: str, separator: str, before: list[str]
) -> None:
    statement = shape.format(reference).replace(" ", separator)
    sql = ";".join([*before, statement])
    decision = check(sql, ["agents"])
    assert decision.blocked, sql
    assert decision.reason is not None and "(*.PAYROLL.*)" in decision.reason


# --- issue 17: guardrails without known bypasses ----------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "delete from t where id = 3 or 1 = 1",
        "delete from t where 1 = 1 or id = 3",
        "delete from t where id = id",
        "update t set a = 1 where a >= a",
        "delete from t where x is not null or x is null",
        "delete from t where 1 in (1)",
        "merge into t using s on 1 = 1 when matched then delete",
        "merge into t using s on true when matched then update set a = 1",
        "execute immediate 'delete from t where id = id'",
    ],
)
def test_require_where_refuses_conditions_that_restrict_nothing(sql: str) -> None:
    decision = check(sql, ["agents"])
    assert decision.blocked and decision.rule == "agents-guard"
    assert "requires" in (decision.reason or "")


@pytest.mark.parametrize(
    "sql",
    [
        "delete from t where id = 3",
        "merge into t using s on t.id = s.id when matched then delete",
        "merge into t using s on 1 = 1 when not matched then insert (a) values (1)",
    ],
)
def test_require_where_allows_conditions_that_restrict(sql: str) -> None:
    assert not check(sql, ["agents"]).blocked


@pytest.mark.parametrize(
    "sql",
    [
        "alter session policy p set session_idle_timeout_mins = 1",
        'select "SYSTEM$CANCEL_ALL_QUERIES"()',
        "select snowflake.system$cancel_all_queries()",
        "call system$cancel_all_queries()",
        "execute immediate $$alter session policy p unset comment$$",
    ],
)
def test_read_only_refuses_what_shares_a_prefix_or_a_name_with_a_harmless_form(sql: str) -> None:
    assert check(sql, ["readers"]).blocked


@FUZZ
@given(
    st.sampled_from(["$$", "'"]),
    st.lists(st.booleans(), min_size=7, max_size=7),
    st.sampled_from(["", " ", "  ", "\n"]),
    st.sampled_from(["{v}", "{v} || ''", "'' || {v}", "concat({v}, '')"]),
)
def test_search_path_to_a_denied_schema_is_refused_however_spelled(
    quote: str, flips: list[bool], space: str, wrap: str
) -> None:
    value = wrap.format(v=f"{quote}{space}{_spell('payroll', flips)}{space}{quote}")
    sql = f"alter session set search_path = {value}"
    assert check(sql, ["agents"]).blocked, sql
