"""Statement classification (recorder/statements/): kinds, objects, context, splitting."""

from __future__ import annotations

import gc
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot.errors import TokenError

from hoopgw.recorder import statements
from hoopgw.recorder.statements import (
    KINDS,
    Statement,
    classify,
    context_after,
    render_name,
    split_name,
    tokens,
)
from hoopgw.recorder.statements.splitting import split_statements
from hoopgw.recorder.statements.vocabulary import DIALECT

DB, SCHEMA = "DB", "S"
FUZZ = settings(max_examples=int(os.environ.get("HOOPGW_FUZZ_EXAMPLES", "200")), deadline=None)


def one(sql: str, database: str | None = DB, schema: str | None = SCHEMA) -> Statement:
    found = classify(sql, database=database, schema=schema)
    assert len(found) == 1, found
    return found[0]


# (sql, kind, reads, writes, read_only)
KIND_CASES: list[tuple[str, str, tuple[str, ...], tuple[str, ...], bool]] = [
    ("select * from t", "SELECT", ("DB.S.T",), (), True),
    ("SELECT a FROM x.y JOIN db2.s2.z ON 1=1", "SELECT", ("DB.X.Y", "DB2.S2.Z"), (), True),
    ("(select 1) union all (select 2 from u)", "SELECT", ("DB.S.U",), (), True),
    ("with c as (select * from src) select * from c", "SELECT", ("DB.S.SRC",), (), True),
    ("insert into a.b.c select * from d", "INSERT", ("DB.S.D",), ("A.B.C",), False),
    ("insert overwrite into t select 1", "INSERT", (), ("DB.S.T",), False),
    (
        "insert all into t1 into p.t2 select * from s",
        "INSERT",
        ("DB.S.S",),
        ("DB.P.T2", "DB.S.T1"),
        False,
    ),
    (
        "with c as (select * from src) insert into t select * from c",
        "INSERT",
        ("DB.S.SRC",),
        ("DB.S.T",),
        False,
    ),
    ("update t set x = 1 where id = 2", "UPDATE", (), ("DB.S.T",), False),
    (
        "update t set a = o.a from other o where t.id = o.id",
        "UPDATE",
        ("DB.S.OTHER",),
        ("DB.S.T",),
        False,
    ),
    ("delete from t where x = 1", "DELETE", (), ("DB.S.T",), False),
    ("delete from t using p.x where t.id = x.id", "DELETE", ("DB.P.X",), ("DB.S.T",), False),
    (
        "merge into t using p.s on t.id = s.id when matched then delete",
        "MERGE",
        ("DB.P.S",),
        ("DB.S.T",),
        False,
    ),
    ("create table t (x int)", "CREATE", (), ("DB.S.T",), False),
    ("create table t as select * from p.src", "CREATE", ("DB.P.SRC",), ("DB.S.T",), False),
    ("create table t clone p.src", "CREATE", ("DB.P.SRC",), ("DB.S.T",), False),
    ("create view v as select * from src", "CREATE", ("DB.S.SRC",), ("DB.S.V",), False),
    ("create schema sc", "CREATE", (), ("DB.SC",), False),
    ("create database d2", "CREATE", (), ("D2",), False),
    ("create warehouse w", "CREATE", (), (), False),
    ("create user u password = 'x'", "CREATE", (), (), False),
    ("alter table t add column y int", "ALTER", (), ("DB.S.T",), False),
    ("alter table t swap with p.u", "ALTER", (), ("DB.P.U", "DB.S.T"), False),
    ("alter table t rename to p.u", "ALTER", (), ("DB.P.U", "DB.S.T"), False),
    ("alter session set query_tag = 'x'", "ALTER", (), (), True),
    ("alter warehouse w suspend", "ALTER", (), (), False),
    ("drop table t", "DROP", (), ("DB.S.T",), False),
    ("drop view if exists x.v", "DROP", (), ("DB.X.V",), False),
    ("drop schema p", "DROP", (), ("DB.P",), False),
    ("drop database d2", "DROP", (), ("D2",), False),
    ("drop role r", "DROP", (), (), False),
    ("undrop table p.t", "UNDROP", (), ("DB.P.T",), False),
    ("truncate table t", "TRUNCATE", (), ("DB.S.T",), False),
    ("truncate t", "TRUNCATE", (), ("DB.S.T",), False),
    ("grant select on table t to role r", "GRANT", (), ("DB.S.T",), False),
    ("grant usage on schema p to role r", "GRANT", (), ("DB.P",), False),
    ("grant select on all tables in schema p to role r", "GRANT", (), ("DB.P",), False),
    ("grant role r to user u", "GRANT", (), (), False),
    ("grant usage on warehouse w to role r", "GRANT", (), (), False),
    ("revoke select on table p.t from role r", "REVOKE", (), ("DB.P.T",), False),
    ("use database d2", "USE", ("D2",), (), True),
    ("use schema p", "USE", ("DB.P",), (), True),
    ("use d2.s2", "USE", ("D2.S2",), (), True),
    ("use d2", "USE", ("D2",), (), True),
    ("use warehouse w", "USE", (), (), True),
    ("use role accountadmin", "USE", (), (), False),
    ("use secondary roles all", "USE", (), (), False),
    ("show tables", "SHOW", (), (), True),
    ("show tables in schema p", "SHOW", ("DB.P",), (), True),
    ("show columns in table p.t", "SHOW", ("DB.P.T",), (), True),
    ("show grants on schema p", "SHOW", ("DB.P",), (), True),
    ("show grants to role r", "SHOW", (), (), True),
    ("describe table p.t", "DESCRIBE", ("DB.P.T",), (), True),
    ("desc view v", "DESCRIBE", ("DB.S.V",), (), True),
    ("describe schema p", "DESCRIBE", ("DB.P",), (), True),
    ("describe result 'q'", "DESCRIBE", (), (), True),
    ("call p(1)", "CALL", ("DB.S.P",), (), False),
    ("call x.p((select count(*) from d.y.t))", "CALL", ("DB.X.P", "D.Y.T"), (), False),
    ("execute task x.tk", "EXECUTE", ("DB.X.TK",), (), False),
    ("copy into t from @st", "COPY", ("DB.S.ST",), ("DB.S.T",), False),
    ("copy into @p.stg/out/ from (select * from t)", "COPY", ("DB.S.T",), ("DB.P.STG",), False),
    ("copy into t from '@%t/x'", "COPY", (), ("DB.S.T",), False),
    ("put file:///tmp/f @p.st", "PUT", (), ("DB.P.ST",), False),
    ("put file:///tmp/f @~/x", "PUT", (), (), False),
    ("get @p.st/x file:///tmp", "GET", ("DB.P.ST",), (), True),
    ("list @p.st", "LIST", ("DB.P.ST",), (), True),
    ("ls @st", "LIST", ("DB.S.ST",), (), True),
    ("remove @%emp", "REMOVE", (), ("DB.S.EMP",), False),
    ("rm @p.st/x", "REMOVE", (), ("DB.P.ST",), False),
    ("set v = 1", "SET", (), (), True),
    ("set v = (select max(a) from p.t)", "SET", ("DB.P.T",), (), True),
    ("unset v", "UNSET", (), (), True),
    ("begin", "BEGIN", (), (), True),
    ("begin transaction", "BEGIN", (), (), True),
    ("begin work", "BEGIN", (), (), True),
    ("start transaction", "BEGIN", (), (), True),
    ("commit", "COMMIT", (), (), True),
    ("rollback", "ROLLBACK", (), (), True),
    ("explain select * from p.t", "EXPLAIN", ("DB.P.T",), (), True),
    ("explain using json delete from t", "EXPLAIN", ("DB.S.T",), (), True),
    ("comment on table p.t is 'x'", "COMMENT", (), ("DB.P.T",), False),
    ("select ) from", "UNKNOWN", (), (), False),
    ("frobnicate the table", "UNKNOWN", (), (), False),
]


@pytest.mark.parametrize(("sql", "kind", "reads", "writes", "read_only"), KIND_CASES)
def test_kind_objects_and_read_only(
    sql: str, kind: str, reads: tuple[str, ...], writes: tuple[str, ...], read_only: bool
) -> None:
    statement = one(sql)
    assert statement.kind == kind
    assert sorted(statement.reads) == sorted(reads)
    assert sorted(statement.writes) == sorted(writes)
    assert statement.read_only is read_only


def test_every_kind_is_covered() -> None:
    covered = {case[1] for case in KIND_CASES} | {"SCRIPT", "EXECUTE"}
    assert covered == KINDS


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select * from payroll.emp", "DB.PAYROLL.EMP"),
        ("select * from PayRoll.Emp", "DB.PAYROLL.EMP"),
        ("select * from prod.payroll.emp", "PROD.PAYROLL.EMP"),
        ("select * from emp", "DB.S.EMP"),
        ('select * from "Payroll"."emp"', "DB.Payroll.emp"),
        ('select * from "PAYROLL".EMP', "DB.PAYROLL.EMP"),
        ('select * from "my.db".s."t"', '"my.db".S.t'),
        ("select * from prod..emp", "PROD.PUBLIC.EMP"),
        ("select * from identifier('payroll.emp')", "DB.PAYROLL.EMP"),
        ("select * from identifier('\"Pay\".emp')", "DB.Pay.EMP"),
        ("select payroll.seq.nextval", "DB.PAYROLL.SEQ"),
        ("select payroll.secret_fn(1)", "DB.PAYROLL.SECRET_FN"),
        ("select * from table('payroll.emp')", "DB.PAYROLL.EMP"),
        ("select get_ddl('table', 'payroll.emp')", "DB.PAYROLL.EMP"),
        ("select get_ddl('schema', 'payroll')", "DB.PAYROLL"),
        ("select * from table(payroll.udtf(1))", "DB.PAYROLL.UDTF"),
        ("select $1 from @payroll.stage/file.csv", "DB.PAYROLL.STAGE"),
    ],
)
def test_names_resolve_like_snowflake(sql: str, expected: str) -> None:
    assert expected in one(sql).objects


def test_unknown_context_parts_are_marked() -> None:
    statement = one("select * from emp join s2.t", database=None, schema=None)
    assert set(statement.reads) == {"?.?.EMP", "?.S2.T"}
    assert split_name("?.?.EMP") == (None, None, "EMP")


def test_aliases_and_column_paths_are_not_objects() -> None:
    statement = one("select e.v.x, t.col from analytics.t e join t on true")
    assert set(statement.reads) == {"DB.ANALYTICS.T", "DB.S.T"}


@pytest.mark.parametrize(
    ("sql", "reads"),
    [
        ("with emp as (select 1) select * from emp", ()),
        ("with emp as (select * from emp) select * from emp", ("DB.S.EMP",)),
        ("select * from emp union all (with emp as (select 1 x) select * from emp)", ("DB.S.EMP",)),
        ("with recursive r as (select 1 union all select * from r) select * from r", ()),
    ],
)
def test_cte_names_shadow_tables_only_in_their_scope(sql: str, reads: tuple[str, ...]) -> None:
    assert one(sql).reads == reads


@pytest.mark.parametrize(
    ("sql", "kinds"),
    [
        ("select 1; drop table t", ["SELECT", "DROP"]),
        ("select 'a;b'; drop table t", ["SELECT", "DROP"]),
        ("select 1 -- ; drop table t\n", ["SELECT"]),
        ("select 1 // ; drop table t\n", ["SELECT"]),
        ("select 1 /* ; drop table t */", ["SELECT"]),
        ("select 1 /* /* */ ; drop table t", ["SELECT", "DROP"]),
        ("select $$ ; drop table t $$", ["SELECT"]),
        ('select "a;b" from t; drop table x', ["SELECT", "DROP"]),
        (r"select 'it\'s; fine'; truncate t", ["SELECT", "TRUNCATE"]),
        ("select 'it''s; fine'; truncate t", ["SELECT", "TRUNCATE"]),
        ("select 1;;; ; -- only a comment\n", ["SELECT"]),
        ("/* lead */ drop table t", ["DROP"]),
        ("show tables ->> delete from t", ["SHOW", "DELETE"]),
        ("select 1->>drop table t", ["SELECT", "DROP"]),
        ("call p() ->> drop table t", ["CALL", "DROP"]),
        ("execute immediate 'select 1' ->> truncate t; show", ["EXECUTE", "TRUNCATE", "SHOW"]),
        ("select '->>' as arrow", ["SELECT"]),
        ("", []),
        ("-- nothing", []),
    ],
)
def test_splitting_respects_strings_and_comments(sql: str, kinds: list[str]) -> None:
    assert [s.kind for s in classify(sql, database=DB, schema=SCHEMA)] == kinds


def test_statement_text_is_the_statement() -> None:
    first, second = classify("select 1 ;\n  drop table t  ", database=DB, schema=SCHEMA)
    assert (first.text, second.text) == ("select 1", "drop table t")


@pytest.mark.parametrize(
    ("sql", "has_where"),
    [
        ("delete from t", False),
        ("delete from t where id = 3", True),
        ("delete from t where 1 = 1", False),
        ("delete from t where true", False),
        ("DELETE FROM t WHERE 1=1 OR id = 3", False),
        ("update t set a = 1", False),
        ("update t set a = 1 where a is null", True),
        ("update t set a = 1 where 'x' = 'x'", False),
        ("delete from t where id in (select id from u)", True),
        ("delete from t where id = ?", True),
        ("delete from t where id = 1 or 2 > 1", False),
        ("delete from t where (id = 1 or (true))", False),
        ("delete from t where x is null or x is not null", False),
        ("delete from t where not false", False),
        ("delete from t where 1 = 0", False),
        ("delete from t where ? = ?", False),
        ("delete from t where " + " and ".join(f"c{i} = {i}" for i in range(2000)), True),
        ("delete from t where " + " or ".join(f"c{i} = {i}" for i in range(2000)) + " or 1", False),
    ],
)
def test_where_clause_that_restricts_rows(sql: str, has_where: bool) -> None:
    assert one(sql).has_where is has_where


def test_has_where_only_for_update_and_delete() -> None:
    assert one("select * from t where a = 1").has_where is None


@pytest.mark.parametrize(
    ("sql", "replaces"),
    [
        ("create or replace table t (x int)", True),
        ("create or replace view v as select 1", True),
        ("create table t (x int)", False),
        ("insert overwrite into t select 1", True),
        ("create or replace user u", True),
    ],
)
def test_replaces(sql: str, replaces: bool) -> None:
    assert one(sql).replaces is replaces


def test_use_changes_the_context_of_later_statements() -> None:
    found = classify(
        "use schema payroll; select * from emp; use database other; select * from t; "
        "use x.y; select * from z",
        database=DB,
        schema=SCHEMA,
    )
    assert [s.reads for s in found] == [
        ("DB.PAYROLL",),
        ("DB.PAYROLL.EMP",),
        ("OTHER",),
        ("OTHER.PUBLIC.T",),
        ("X.Y",),
        ("X.Y.Z",),
    ]
    assert context_after(found, DB, SCHEMA) == ("X", "Y")
    assert found[1].context == ("DB", "PAYROLL")


@pytest.mark.parametrize(
    ("sql", "context"),
    [
        ("select 1", ("DB", "S")),
        ("use schema p", ("DB", "P")),
        ('use schema "Mixed"', ("DB", "Mixed")),
        ("use database d2", ("D2", "PUBLIC")),
        ("create database d3", ("D3", "PUBLIC")),
        ("create schema d4.s4", ("D4", "S4")),
        ("drop schema s", ("DB", None)),
        ("drop schema other", ("DB", "S")),
        ("drop database db", (None, None)),
        ("use schema identifier($v)", ("DB", None)),
        ("execute immediate 'use schema p2'", ("DB", "P2")),
        ("use role r", ("DB", "S")),
    ],
)
def test_context_after(sql: str, context: tuple[str | None, str | None]) -> None:
    assert context_after(classify(sql, database=DB, schema=SCHEMA), DB, SCHEMA) == context


def test_nested_statements_are_found() -> None:
    cte = one("with x as (delete from payroll.t) select 1")
    assert cte.kind == "SELECT" and not cte.read_only
    assert [(s.kind, s.writes, s.has_where) for s in cte.inner] == [
        ("DELETE", ("DB.PAYROLL.T",), False)
    ]
    execute = one("execute immediate 'drop table p.t'")
    assert execute.kinds == ("EXECUTE", "DROP")
    assert execute.inner[0].writes == ("DB.P.T",)
    assert one("execute immediate $$ select 1 $$").read_only


@pytest.mark.parametrize(
    ("sql", "kind", "inner_kinds"),
    [
        ("execute immediate :stmt", "EXECUTE", ()),
        ("execute immediate 'select ) from'", "EXECUTE", ("UNKNOWN",)),
        ("begin drop table t; end", "SCRIPT", ("DROP",)),
        ("declare n int; begin delete from t; return 1; end;", "SCRIPT", ("DELETE",)),
        ("execute immediate from @st/setup.sql", "EXECUTE", ()),
        (
            "with p as procedure () returns int language sql as $$ begin drop table t; end $$ "
            "call p()",
            "CALL",
            (),
        ),
    ],
)
def test_what_cannot_be_seen_is_hidden(sql: str, kind: str, inner_kinds: tuple[str, ...]) -> None:
    statement = one(sql)
    assert statement.kind == kind
    assert statement.hidden is not None
    assert tuple(s.kind for s in statement.inner) == inner_kinds


@pytest.mark.parametrize(
    ("sql", "name", "read_only"),
    [
        ("select * from identifier($name)", "?.?.?", True),
        ("select * from table(:name)", "?.?.?", True),
        ("select get_ddl('schema', $s)", "?.?", True),
        ("delete from identifier(?) where a = 1", "?.?.?", False),
        ("explain select ) from", "?.?.?", True),
        ("use database identifier($d)", "?", True),
    ],
)
def test_objects_named_at_run_time_are_unknown(sql: str, name: str, read_only: bool) -> None:
    statement = one(sql)
    assert name in statement.objects
    assert statement.hidden is None
    assert statement.read_only is read_only


def test_script_runs_to_the_end_of_the_text() -> None:
    found = classify("select 1; begin drop table t; end; select 2", database=DB, schema=SCHEMA)
    assert [s.kind for s in found] == ["SELECT", "SCRIPT"]


@pytest.mark.parametrize(
    ("sql", "calls"),
    [
        ("select system$cancel_all_queries(1)", ("SYSTEM$CANCEL_ALL_QUERIES",)),
        ("select system$typeof(1), system$wait(1)", ()),
    ],
)
def test_state_changing_functions(sql: str, calls: tuple[str, ...]) -> None:
    statement = one(sql)
    assert statement.calls == calls
    assert statement.read_only is (not calls)


def test_search_path_names_schemas() -> None:
    statement = one("alter session set search_path = '$current, $public, payroll, d2.s2'")
    assert statement.reads == ("DB.PUBLIC", "DB.PAYROLL", "D2.S2")


def test_parse_errors_carry_no_sql() -> None:
    bad = one("select 'hunter2-secret' from ((( where")
    for statement in (bad, one("select 'unterminated hunter2-secret")):
        assert statement.kind == "UNKNOWN"
        assert statement.parse_error
        assert "hunter2" not in statement.parse_error
        assert "hunter2" not in repr(statement.as_record())


def test_as_record_shape() -> None:
    record = one("delete from p.t where a = 1").as_record()
    assert record == {
        "kind": "DELETE",
        "reads": [],
        "writes": ["DB.P.T"],
        "read_only": False,
        "has_where": True,
    }


def test_a_text_is_cached_from_its_second_sight() -> None:
    """A new text is not kept: each kept classification is objects the collector walks."""
    sql = "select * from cache_probe_table where id = 42"
    statements.clear_cache()
    first = classify(sql, database=DB, schema=SCHEMA)
    assert statements._classify_cached.cache_info().currsize == 0
    second = classify(sql, database=DB, schema=SCHEMA)
    third = classify(sql, database=DB, schema=SCHEMA)
    assert first == second == third
    info = statements._classify_cached.cache_info()
    assert (info.currsize, info.hits) == (1, 1)
    assert classify(sql, database="OTHER", schema=SCHEMA)[0].reads == ("OTHER.S.CACHE_PROBE_TABLE",)
    assert statements._classify_cached.cache_info().currsize == 1


def test_the_memory_of_texts_seen_once_is_bounded() -> None:
    statements.clear_cache()
    for index in range(statements.SEEN_MAX + 1):
        statements._seen_once[index] = None  # as hashes of texts seen once
    classify("select 1 from seen_probe", database=DB, schema=SCHEMA)
    assert len(statements._seen_once) == 1
    classify("select 1 from seen_probe", database=DB, schema=SCHEMA)
    assert statements._classify_cached.cache_info().currsize == 1


@pytest.mark.parametrize(
    "sql",
    [
        "select o.id, c.name from orders o join customers c on o.cid = c.id where o.total > 7",
        "update accounts set balance = 0 where id = 7",
        "delete from t where not a = 1",  # simplified first
        "insert into audit (a, b) select a, b from staging where b is not null",
    ],
)
def test_a_classified_statement_leaves_no_cycle_for_the_collector(sql: str) -> None:
    """The parse tree is freed by reference counting, not by the cyclic collector's
    passes on the gateway's event loop."""
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        classify(f"{sql} -- {os.urandom(4).hex()}", database=DB, schema=SCHEMA)  # not cached
        found = gc.collect()
        left = sorted({type(thing).__name__ for thing in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == 0, left


def test_every_writing_statement_type_marks_its_targets() -> None:
    """A root node type without a target marker would report its writes as reads."""
    from sqlglot import exp

    from hoopgw.recorder.statements.targets import _MARKERS
    from hoopgw.recorder.statements.vocabulary import WRITE_NODES

    assert set(WRITE_NODES) - {exp.Command} <= set(_MARKERS)


def test_long_texts_are_classified_uncached() -> None:
    sql = "select 1 as a" + ", 1 as a" * (statements.CACHE_MAX_CHARS // 8)
    assert one(sql).kind == "SELECT"


@FUZZ
@given(st.text(max_size=200))
def test_classify_never_raises(sql: str) -> None:
    for statement in classify(sql, database=DB, schema=SCHEMA):
        assert statement.kind in KINDS
        assert (statement.kind == "UNKNOWN") == (statement.parse_error is not None)


_PART = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)


@FUZZ
@given(st.lists(st.one_of(st.none(), _PART), min_size=1, max_size=3))
def test_render_and_split_names_round_trip(parts: list[Any]) -> None:
    assert split_name(render_name(parts)) == tuple(parts)


# --- issue 17: guardrails without known bypasses ----------------------------------------

TAUTOLOGIES = [
    "1=1",
    "1 = 1 OR id = 2",
    "id = 2 OR 1 = 1",
    "id = id",
    "t.id = t.id",
    "id >= id",
    "id <= id AND 1 = 1",
    "x IS NOT NULL OR x IS NULL",
    "x IS NULL OR NOT x IS NULL",
    "TRUE",
    "NOT FALSE",
    "'a' = 'a'",
    "1 IN (1)",
    "id IN (id)",
    "id + 1 > id",
    "id BETWEEN id - 1 AND id + 1",
    "x LIKE '%'",
    "x ILIKE '%%'",
    "id > 1 OR id <= 1",
    "id = 1 OR id <> 1",
    "(id = 1) OR (id = 2 OR (2 > 1))",
    "COALESCE(x, 0) = COALESCE(x, 0)",
    "other.id = 4",
]
RESTRICTING = [
    "id = 3",
    "id = 3 OR id = 4",
    "x IS NULL",
    "id IN (1, 2)",
    "id = 1 AND 1 = 1",
    "id = id AND y = 2",
    "t.id = 3",
    "a.id = 3",
    "id > ?",
    "id IN (SELECT id FROM u)",
    "x LIKE 'a%'",
    "a = b",
]


@pytest.mark.parametrize("condition", TAUTOLOGIES)
def test_conditions_that_restrict_nothing(condition: str) -> None:
    assert one(f"delete from t as a where {condition}").has_where is False
    assert one(f"update t set y = 1 where {condition}").has_where is False


@pytest.mark.parametrize("condition", RESTRICTING)
def test_conditions_that_restrict(condition: str) -> None:
    assert one(f"delete from t as a where {condition}").has_where is True


def test_delete_using_another_table_must_restrict_the_target() -> None:
    assert one("delete from t using s where s.id = 1").has_where is False
    assert one("delete from t using s where t.id = s.id").has_where is True
    assert one("update t set y = 1 from s where s.id = 1").has_where is False


@pytest.mark.parametrize(
    ("sql", "has_where"),
    [
        ("merge into t using s on 1 = 1 when matched then delete", False),
        ("merge into t using s on true when matched then update set y = 1", False),
        ("merge into t using s on t.id = t.id when matched then delete", False),
        ("merge into t using s on s.id = 1 when matched then delete", False),
        ("merge into t using s on t.id = s.id when matched then delete", True),
        ("merge into t using s on 1 = 1 when matched and t.y = 2 then delete", True),
        (
            "merge into t using s on 1 = 1 when matched and t.y = 2 then delete "
            "when matched then update set y = 3",
            False,
        ),
        ("merge into t using s on 1 = 1 when not matched then insert (y) values (1)", None),
    ],
)
def test_merge_restricts_the_rows_it_changes(sql: str, has_where: bool | None) -> None:
    assert one(sql).has_where is has_where


_COLUMNS = st.sampled_from(["id", "x", "t.id", '"Name"'])


@st.composite
def _tautology(draw: st.DrawFn) -> str:
    column = draw(_COLUMNS)
    return draw(
        st.sampled_from(
            [
                f"{column} = {column}",
                f"{column} >= {column}",
                f"{column} IS NULL OR {column} IS NOT NULL",
                f"{draw(st.integers(-9, 9))} = {draw(st.integers(-9, 9))} + 0 OR 1 = 1",
                "NOT FALSE",
                f"'{draw(st.sampled_from(['a', 'b']))}' = 'a' OR TRUE",
                f"{column} + {draw(st.integers(1, 9))} > {column}",
            ]
        )
    )


@FUZZ
@given(_tautology(), st.lists(st.tuples(_COLUMNS, st.integers(0, 99)), max_size=3), st.booleans())
def test_no_tautology_counts_as_a_where(
    tautology: str, others: list[tuple[str, int]], tautology_first: bool
) -> None:
    branches = [f"{column} = {value}" for column, value in others]
    branches.insert(0 if tautology_first else len(branches), f"({tautology})")
    assert one("delete from t where " + " or ".join(branches)).has_where is False


def test_alter_session_is_harmless_only_when_it_sets_parameters() -> None:
    assert one("alter session set query_tag = 'x'").read_only
    assert one("alter session unset search_path").read_only
    for sql in (
        "alter session policy p set session_idle_timeout_mins = 1",
        "alter session policy if exists p unset comment",
        "alter session policy p rename to q",
    ):
        statement = one(sql)
        assert statement.kind == "ALTER" and not statement.read_only, sql


SEARCH_PATH_SPELLINGS = [
    "$$payroll$$",
    "$$ PAYROLL $$",
    "'pay' || 'roll'",
    "concat('pay', 'roll')",
    "payroll",
    '"PAYROLL"',
    "$path",
    "identifier('payroll')",
]


@pytest.mark.parametrize("value", SEARCH_PATH_SPELLINGS)
@pytest.mark.parametrize("before", ["", "query_tag = 'x' ", "query_tag = 'x', "])
def test_search_path_values_are_read_however_spelled(value: str, before: str) -> None:
    reads = one(f"alter session set {before}search_path = {value}").reads
    assert "DB.PAYROLL" in reads or "?.?" in reads, reads


def test_search_path_string_spellings_name_their_schemas() -> None:
    assert one("alter session set search_path = $$payroll, $public$$").reads == (
        "DB.PAYROLL",
        "DB.PUBLIC",
    )
    assert one("alter session set search_path = 'pay\\'roll'").reads == ("DB.?",)


@pytest.mark.parametrize(
    "sql",
    [
        'select "SYSTEM$CANCEL_ALL_QUERIES"()',
        'select "system$cancel_all_queries"()',
        "select SYSTEM$CANCEL_ALL_QUERIES ( )",
        "select snowflake.system$cancel_all_queries()",
        'select snowflake."SYSTEM$CANCEL_ALL_QUERIES"()',
        "select 1 where system$cancel_all_queries() is not null",
        "call system$cancel_all_queries()",
        'call "SYSTEM$CANCEL_ALL_QUERIES"()',
    ],
)
def test_system_functions_however_spelled(sql: str) -> None:
    statement = one(sql)
    assert statement.calls == ("SYSTEM$CANCEL_ALL_QUERIES",) and not statement.read_only


def _deep_kinds(statement: Statement) -> list[tuple[str, bool]]:
    found = [(statement.kind, statement.read_only)]
    for inner in statement.inner:
        found.extend(_deep_kinds(inner))
    return found


@pytest.mark.parametrize(
    "sql",
    [
        "execute immediate 'use role accountadmin'",
        "execute immediate $$use secondary roles all$$",
        "execute immediate 'execute immediate ''use role r'''",
        "begin use role accountadmin; end",
        "declare x int; begin use secondary roles all; end",
        "begin execute immediate 'use role r'; end",
        "begin execute immediate $$ use role r $$; return 1; end",
        "execute immediate 'begin use role r; end'",
        "create procedure p() returns int language sql as $$ begin use role r; return 1; end $$",
        "create procedure p() returns int as 'begin use role r; return 1; end'",
    ],
)
def test_role_changes_are_seen_at_any_depth(sql: str) -> None:
    assert ("USE", False) in _deep_kinds(one(sql))


@pytest.mark.parametrize(
    "sql",
    [
        "alter user svc set default_secondary_roles = ()",
        "alter user svc set default_secondary_roles = ('ALL')",
        "alter user svc unset default_secondary_roles",
        'alter user "SVC" set "DEFAULT_ROLE" = r',
        "begin alter user svc set default_secondary_roles = ('ALL'); end",
        "execute immediate 'alter user svc set default_role = r'",
    ],
)
def test_changes_to_default_roles_are_marked(sql: str) -> None:
    def marked(statement: Statement) -> bool:
        return statement.changes_default_roles or any(marked(s) for s in statement.inner)

    assert marked(one(sql))
    assert not marked(one("alter user svc set comment = 'default_role'"))


def test_sql_procedure_bodies_are_classified_other_languages_are_not() -> None:
    created = one("create procedure p() returns int as $$ begin drop table x; end $$")
    assert "DROP" in created.kinds
    javascript = one(
        "create procedure p() returns int language javascript as 'return 1 /* drop table x */'"
    )
    assert javascript.inner == ()


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("begin work drop table t", "UNKNOWN"),
        ("commit drop table t", "UNKNOWN"),
        ("rollback work delete from t", "UNKNOWN"),
        ("unset a drop", "UNKNOWN"),
        ("begin transaction name t", "BEGIN"),
        ("start transaction", "BEGIN"),
        ("commit work", "COMMIT"),
        ("unset (a, b)", "UNSET"),
    ],
)
def test_harmless_lead_words_carry_nothing_more(sql: str, kind: str) -> None:
    statement = one(sql)
    assert statement.kind == kind
    assert statement.read_only is (kind != "UNKNOWN")


# --- tokens shared between the readers of one text ------------------------------------------


def test_a_text_is_tokenized_once_for_its_readers() -> None:
    sql = "select token_count from usage.daily where day > current_date - 41733"
    tokens.forget()
    parsed = [token for chunk in split_statements(sql) for token in chunk.tokens]
    read = tokens.tokenize(sql)
    assert read and all(a is b for a, b in zip(parsed, read, strict=True))
    read.clear()  # a reader's list is its own
    assert len(tokens.tokenize(sql)) == len(parsed)


def test_a_parser_never_gets_tokens_another_parser_had() -> None:
    """sqlglot's parser may add comments to the tokens it consumes."""
    sql = "insert /* first */ into t /* second */ select 1 -- 41734"
    tokens.forget()
    read = tokens.tokenize(sql)
    first = tokens.tokenize_for_parser(sql)
    second = tokens.tokenize_for_parser(sql)
    assert all(a is b for a, b in zip(read, first, strict=True))
    assert not any(a is b for a, b in zip(first, second, strict=True))
    assert [t.text for t in first] == [t.text for t in second]
    in_one = classify(sql, database="A", schema="B")
    in_other = classify(sql, database="C", schema="D")
    assert in_one[0].writes == ("A.B.T",) and in_other[0].writes == ("C.D.T",)


def test_long_texts_and_unreadable_ones_are_not_kept() -> None:
    tokens.forget()
    long_sql = "select 1 as a" + ", 1" * tokens.KEPT_MAX_CHARS
    assert tokens.tokenize(long_sql)[0] is not tokens.tokenize(long_sql)[0]
    for _ in range(2):
        with pytest.raises(TokenError):
            tokens.tokenize("select 'unterminated")
    oldest = tokens.tokenize("select 0")
    assert tokens.tokenize("select 0")[0] is oldest[0]
    for index in range(1, tokens.KEPT_TEXTS + 1):
        tokens.tokenize(f"select {index}")
    assert tokens.tokenize("select 0")[0] is not oldest[0]
    newest = tokens.tokenize(f"select {tokens.KEPT_TEXTS}")
    assert newest[0] is tokens.tokenize(f"select {tokens.KEPT_TEXTS}")[0]


def test_tokens_are_kept_safely_across_threads() -> None:
    texts = [f"select a, b from t{index} where c = 'x{index}'" for index in range(200)]
    expected = {sql: [(t.token_type, t.text) for t in DIALECT.tokenize(sql)] for sql in texts}

    def read(sql: str) -> bool:
        return [(t.token_type, t.text) for t in tokens.tokenize(sql)] == expected[sql]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(read, texts * 3))


def test_no_node_type_has_two_walk_roles() -> None:
    """The walk gives each node type one role, found once (recorder/statements/analysis.py)."""
    from sqlglot import exp

    from hoopgw.recorder.statements.analysis import _VISITS

    seen: set[type] = set()
    pending: list[type] = [exp.Expression]
    while pending:
        node_type = pending.pop()
        roles = [visit for types, visit in _VISITS if issubclass(node_type, types)]
        assert len(roles) <= 1, (node_type, roles)
        for subclass in node_type.__subclasses__():
            if subclass not in seen:
                seen.add(subclass)
                pending.append(subclass)
    assert len(seen) > 500


def test_kept_tokens_are_bounded_by_their_texts_length() -> None:
    tokens.forget()
    size = tokens.KEPT_MAX_CHARS - 40
    texts = [f"select {index} as n, '{'x' * size}' as pad" for index in range(20)]
    kept = [tokens.tokenize(sql)[0] for sql in texts]
    fitting = tokens.KEPT_TOTAL_CHARS // len(texts[0])
    assert tokens.tokenize(texts[-1])[0] is kept[-1]
    assert tokens.tokenize(texts[-fitting])[0] is kept[-fitting]
    assert tokens.tokenize(texts[-fitting - 1])[0] is not kept[-fitting - 1]


def test_resolved_names_are_remembered_only_when_short() -> None:
    from hoopgw.recorder.statements import names

    statements.clear_cache()
    assert names.resolve(["T"], 3, ("DB", "S")) == "DB.S.T"
    assert names.resolve(("T",), 3, ("DB", "S")) == "DB.S.T"
    assert names._remembered.cache_info().hits == 1
    long_part = "T" * names.RESOLVED_MAX_CHARS
    for _ in range(2):
        assert names.resolve([long_part], 3, ("DB", "S")) == f"DB.S.{long_part}"
    assert names._remembered.cache_info().currsize == 1
    statements.clear_cache()
    assert names._remembered.cache_info().currsize == 0
