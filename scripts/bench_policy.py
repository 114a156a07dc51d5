"""Guardrails microbenchmark: microseconds per classify + policy check, cold and cached.

    .venv/bin/python -m scripts.bench_policy [--rounds 300] [--path-only]

"Cold" clears the classification cache before every call, so it measures a
full sqlglot tokenize + parse + analysis + check; "cached" is the same text
seen again (an agent repeating a query), which skips the parse. The policy is
the example of issue 7 plus one more object glob, checked for a caller in the
restricted `agents` group. Target: well under 1000 us per typical statement.

The last table ("one statement's SQL on the gateway path") times everything the
gateway does with a query's SQL text, each step and all of them in the
gateway's order: split, classify (both within `classify`), the policy check
and the statements' record form, the scan for functions that take a query id
(addons/query_ids.py), the SQL redaction of the request record (done twice,
for the body's `sqlText` and the record's `sql`) and, for a text with
bindings, whether a binding is a credential. Every text is new (its literals
carry a counter, as an agent's statements do), so no cache answers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import orjson

from hoopgw.addons import protocol
from hoopgw.addons.guardrails import parse_policy
from hoopgw.addons.query_ids import map_result_scans
from hoopgw.recorder.redaction import redact_sql
from hoopgw.recorder.statements import Statement, classify, clear_cache
from hoopgw.recorder.statements.credentials import binds_credential
from hoopgw.recorder.statements.splitting import split_statements

POLICY = parse_policy(
    b"""
[[rule]]
name = "readers-read-only"
groups = ["readers"]
read_only = true

[[rule]]
name = "agents-guard"
groups = ["agents"]
deny_kinds = ["DROP", "TRUNCATE", "GRANT", "REVOKE"]
deny_objects = ["*.PAYROLL.*", "*.*.SECRET*"]
require_where = true
""",
    "bench",
)
GROUPS = ("agents",)

STATEMENTS = {
    "point select": "select * from orders where id = ?",
    "join + filter": (
        "select o.id, c.name, sum(o.amount) as total from analytics.sales.orders o "
        "join customers c on o.customer_id = c.id where o.created_at > '2024-01-01' "
        "and c.region in ('EU', 'US') group by o.id, c.name order by total desc limit 100"
    ),
    "cte + window": (
        "with recent as (select customer_id, amount, row_number() over (partition by "
        "customer_id order by created_at desc) as rn from orders) select customer_id, "
        "avg(amount) from recent where rn <= 5 group by customer_id"
    ),
    "insert values": "insert into events (id, kind, payload) values (?, ?, parse_json(?))",
    "update with where": "update orders set status = 'shipped' where id = 42",
    "delete without where": "delete from staging.tmp_orders",
    "merge": (
        "merge into orders t using staging.orders s on t.id = s.id when matched then "
        "update set amount = s.amount when not matched then insert (id, amount) "
        "values (s.id, s.amount)"
    ),
    "use schema": "use schema analytics.reporting",
    "show tables": "show tables in schema analytics.reporting",
    "denied object": "select * from hr.payroll.salaries",
    "multi (3)": "use warehouse wh; select count(*) from orders; drop table orders_old",
    "call": "call analytics.refresh_rollups(7)",
}


PATH_STATEMENTS: dict[str, tuple[str, bool]] = {
    # label: (text with {n} where a unique literal goes, whether the request has bindings)
    "select, where+literals": (
        "select o.id, o.amount, c.name from analytics.sales.orders o join customers c "
        "on o.customer_id = c.id where o.status = 'shipped' and o.amount > {n} "
        "and c.region in ('EU', 'US') order by o.id limit 100",
        False,
    ),
    "multi (3)": (
        "use warehouse wh; select count(*) from orders where id > {n}; "
        "delete from staging.tmp_orders where batch = {n}",
        False,
    ),
    "insert with binds": (
        "insert into events (id, kind, batch, payload) values (?, ?, {n}, parse_json(?))",
        True,
    ),
    "cte + window": (
        "with recent as (select customer_id, amount, row_number() over (partition by "
        "customer_id order by created_at desc) as rn from orders where created_at > "
        "'2024-01-01'::date + {n}) select customer_id, avg(amount) from recent "
        "where rn <= 5 group by customer_id",
        False,
    ),
    "names a token column": (
        "select user_id, sum(token_count) from usage.daily where day > current_date - {n} "
        "group by user_id",
        False,
    ),
    "result_scan": (
        "select * from table(result_scan('01b2c3d4-0000-1111-0000-00000000{n:04d}')) "
        "where amount > {n}",
        False,
    ),
}


def _no_unbind(query_id: str) -> str:
    return query_id


def _path_steps(sql: str, bindings: bool) -> None:
    statements = classify(sql, database="ANALYTICS", schema="PUBLIC")
    POLICY.check(statements, GROUPS)
    [statement.as_record() for statement in statements]
    map_result_scans(sql, _no_unbind)
    redact_sql(sql)
    redact_sql(sql)
    if bindings:
        binds_credential(sql)


def _classified(sql: str) -> list[Statement]:
    return classify(sql, database="ANALYTICS", schema="PUBLIC")


PATH_STEPS: dict[str, object] = {
    "split": lambda sql, bindings: split_statements(sql),
    "classify": lambda sql, bindings: _classified(sql),
    "check": lambda statements, bindings: POLICY.check(statements, GROUPS),
    "id scan": lambda sql, bindings: map_result_scans(sql, _no_unbind),
    "redact": lambda sql, bindings: (redact_sql(sql), redact_sql(sql)),
    "binds": lambda sql, bindings: binds_credential(sql) if bindings else None,
    "all": _path_steps,
}


PREPARED_STEPS = {"check": _classified}


def measure_path(template: str, bindings: bool, rounds: int) -> dict[str, float]:
    """Median microseconds per step on `rounds` unique texts, each step on its own texts.

    The policy check is timed alone, on statements classified before its clock starts."""
    medians: dict[str, float] = {}
    for offset, (step, run) in enumerate(PATH_STEPS.items()):
        texts: list[Any] = [template.format(n=(offset + 1) * 100_000 + i) for i in range(rounds)]
        if step in PREPARED_STEPS:
            texts = [PREPARED_STEPS[step](sql) for sql in texts]
        samples: list[float] = []
        for sql in texts:
            start = time.perf_counter_ns()
            run(sql, bindings)  # type: ignore[operator]
            samples.append((time.perf_counter_ns() - start) / 1000)
        medians[step] = statistics.median(samples)
    return medians


def print_path(rounds: int) -> None:
    for template, bindings in PATH_STATEMENTS.values():  # first-call costs out of the way
        measure_path(template, bindings, 5)
    steps = list(PATH_STEPS)
    header = f"{'statement':<24}" + "".join(f"{step:>10}" for step in steps)
    print("one statement's SQL on the gateway path, unique texts (median us per step)")
    print(header)
    print("-" * len(header))
    for label, (template, bindings) in PATH_STATEMENTS.items():
        medians = measure_path(template, bindings, rounds)
        print(f"{label:<24}" + "".join(f"{medians[step]:>8.1f}us" for step in steps))
    print(
        "(classify includes split; check is the policy check alone; "
        "all = classify, check, records, id scan, redact x2, binds)"
    )


def measure(sql: str, rounds: int, cold: bool) -> list[float]:
    samples: list[float] = []
    for _ in range(rounds):
        if cold:
            clear_cache()
        start = time.perf_counter_ns()
        POLICY.check(classify(sql, database="ANALYTICS", schema="PUBLIC"), GROUPS)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def request_bodies() -> dict[str, bytes]:
    """Query-request bodies as drivers send them: one per statement, and a batch insert."""
    bodies = {
        label: orjson.dumps(
            {
                "sqlText": sql,
                "asyncExec": False,
                "sequenceId": 7,
                "querySubmissionTime": 1733500000000,
                "isInternal": False,
                "parameters": {"CLIENT_RESULT_CHUNK_SIZE": 160, "QUERY_TAG": "agent"},
                "bindings": {"1": {"type": "FIXED", "value": "42"}},
            }
        )
        for label, sql in (("typical statement", STATEMENTS["point select"]),)
    }
    rows = 10_000
    bodies[f"insert, {rows} rows"] = orjson.dumps(
        {
            "sqlText": STATEMENTS["insert values"],
            "bindings": {
                "1": {"type": "FIXED", "value": [str(i) for i in range(rows)]},
                "2": {"type": "TEXT", "value": [f"kind-{i % 7}" for i in range(rows)]},
                "3": {"type": "TEXT", "value": [f'{{"a": {i}}}' for i in range(rows)]},
            },
        }
    )
    return bodies


def measure_parse(body: bytes, rounds: int, parse: object) -> list[float]:
    samples: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        parse(body)  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--path-only", action="store_true", help="only the gateway-path table")
    args = parser.parse_args()
    if args.path_only:
        print_path(args.rounds * 3)
        return
    for sql in STATEMENTS.values():  # import-time and first-call costs out of the way
        measure(sql, 5, cold=True)
    header = f"{'statement':<22} {'cold p50':>9} {'cold p95':>9} {'cached p50':>11} {'decision':>9}"
    print(header)
    print("-" * len(header))
    colds: list[float] = []
    for label, sql in STATEMENTS.items():
        cold = measure(sql, args.rounds, cold=True)
        cached = measure(sql, args.rounds * 10, cold=False)
        colds.extend(cold)
        decision = POLICY.check(classify(sql, database="ANALYTICS", schema="PUBLIC"), GROUPS)
        print(
            f"{label:<22} {statistics.median(cold):>7.0f}us {percentile(cold, 0.95):>7.0f}us "
            f"{statistics.median(cached):>9.1f}us {decision.decision:>9}"
        )
    print("-" * len(header))
    print(
        f"{'all, cold':<22} {statistics.median(colds):>7.0f}us {percentile(colds, 0.95):>7.0f}us"
        "   (microseconds per classify + check; target well under 1000us)"
    )
    print()
    header = f"{'request body':<22} {'bytes':>9} {'orjson p50':>11} {'checked p50':>12}"
    print(header)
    print("-" * len(header))
    for label, body in request_bodies().items():
        rounds = args.rounds * 10 if len(body) < 4096 else max(10, args.rounds // 10)
        plain = measure_parse(body, rounds, orjson.loads)
        checked = measure_parse(body, rounds, protocol.parse_request_json)
        print(
            f"{label:<22} {len(body):>9} {statistics.median(plain):>9.1f}us "
            f"{statistics.median(checked):>10.1f}us"
        )
    print("(checked: parse_request_json, which refuses repeated keys and non-JSON numbers)")
    print()
    print_path(args.rounds * 3)


if __name__ == "__main__":
    main()
