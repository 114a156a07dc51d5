"""Guardrails microbenchmark: microseconds per classify + policy check, cold and cached.

    .venv/bin/python -m scripts.bench_policy [--rounds 300]

"Cold" clears the classification cache before every call, so it measures a
full sqlglot tokenize + parse + analysis + check; "cached" is the same text
seen again (an agent repeating a query), which skips the parse. The policy is
the example of issue 7 plus one more object glob, checked for a caller in the
restricted `agents` group. Target: well under 1000 us per typical statement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson

from hoopgw.addons import protocol
from hoopgw.addons.guardrails import parse_policy
from hoopgw.recorder.statements import classify, clear_cache

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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
