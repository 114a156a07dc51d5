"""Masking benchmark: detection throughput per core, and what masking adds to a 10k-row answer.

    .venv/bin/python -m scripts.bench_masking [--rows 10000] [--repeat 5]

Prints a table (docs/masking.md and docs/performance.md quote it):

- throughput in MB/s of string data, one thread, every kind on, over whole
  answers (Arrow: `rowsetBase64` decoded, masked and encoded again; JSON
  rowsets: cells replaced) and over Arrow arrays alone (`arrays`: detection
  without the answer's base64 and IPC coding), for a "typical" result (ordinary
  text, ids, dates, about 1% sensitive values) and a "dense" one (the labelled
  sample of tests/masking_sample.py, three in four values sensitive);
- the time the Masking addon's response hook adds to a 10k-row query answer
  for a caller without mask rules, with a column rule only, and with every
  kind detected. The answer is parsed by addons/traffic.py whether or not
  masking runs, so that parse is not counted.

Run it as a module from the repository root: it imports tests.masking_sample.
"""

from __future__ import annotations

import argparse
import base64
import copy
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from hoopgw.recorder.masking import KINDS, ColumnPattern, MaskPlan, mask_answer
from hoopgw.recorder.masking.detectors import detect_array
from tests.masking_sample import WORDS, labelled_sample

ALL_KINDS = MaskPlan(detect=dict.fromkeys(KINDS, "mask"))
COLUMN_ONLY = MaskPlan(columns=(ColumnPattern.parse("*.*.*.EMAIL"),))
COLUMNS = ("ID", "EMAIL", "NOTE", "REF")


def typical_values(rows: int, r: random.Random) -> list[tuple[str, str, str]]:
    sample = [value for value, kind in labelled_sample(200, 0, seed=7) if kind]
    out = []
    for index in range(rows):
        note = "; ".join(r.choice(WORDS) for _ in range(r.randint(1, 3)))
        if index % 100 == 0:
            note = f"{note} {r.choice(sample)}"
        out.append((f"user{index}", note, f"REF-{r.randint(10**6, 10**7)}-{index:06d}"))
    return out


def dense_values(rows: int) -> list[tuple[str, str, str]]:
    sample = [value for value, _ in labelled_sample()]
    return [(sample[i % len(sample)], sample[(i * 7) % len(sample)], f"R{i}") for i in range(rows)]


def rowtype() -> list[dict[str, Any]]:
    types = {"ID": "fixed"}
    return [
        {
            "name": name,
            "type": types.get(name, "text"),
            "database": "D",
            "schema": "S",
            "table": "T",
        }
        for name in COLUMNS
    ]


def answers(values: list[tuple[str, str, str]]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The same rows as a JSON-rowset answer and an Arrow answer, and their text bytes."""
    rows = [[str(i), a, b, c] for i, (a, b, c) in enumerate(values)]
    text_bytes = sum(len(a.encode()) + len(b.encode()) + len(c.encode()) for a, b, c in values)
    table = pa.table(
        {
            "ID": pa.array(range(len(values)), pa.int64()),
            "EMAIL": pa.array([a for a, _, _ in values]),
            "NOTE": pa.array([b for _, b, _ in values]),
            "REF": pa.array([c for _, _, c in values]),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=4096)
    encoded = base64.b64encode(sink.getvalue().to_pybytes()).decode()
    json_answer = {"success": True, "data": {"rowtype": rowtype(), "rowset": rows}}
    arrow_answer = {"success": True, "data": {"rowtype": rowtype(), "rowsetBase64": encoded}}
    return json_answer, arrow_answer, text_bytes


def best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def timed_mask(answer: dict[str, Any], plan: MaskPlan, repeat: int) -> float:
    copies = [copy.deepcopy(answer) for _ in range(repeat)]
    times = []
    for each in copies:
        started = time.perf_counter()
        mask_answer(each, plan)
        times.append(time.perf_counter() - started)
    return min(times)


def hook_latency(answer: dict[str, Any], plan_name: str, repeat: int) -> float:
    """The Masking addon's response hook on a parsed 10k-row answer, in milliseconds."""
    from mitmproxy import http
    from mitmproxy.test import taddons

    from hoopgw.addons.flowstate import Caller
    from hoopgw.addons.guardrails import Guardrails, Policy, Rule
    from hoopgw.addons.masking import Masking
    from tests.addons import answered, classified, snowflake_flow
    from tests.bodies import query_body

    rules = {
        "none": (),
        "column": (Rule("c", frozenset({"g"}), mask_columns=COLUMN_ONLY.columns),),
        "detect": (Rule("d", frozenset({"g"}), detect=frozenset(KINDS)),),
    }[plan_name]
    guardrails = Guardrails()
    addon = Masking(guardrails)
    times = []
    with taddons.context(guardrails, addon):
        guardrails.file = type("Fixed", (), {"policy": Policy(rules, "bench", plan_name)})()  # type: ignore[assignment]
        for _ in range(repeat):
            flow = snowflake_flow("POST", "/queries/v1/query-request", query_body("select 1"))
            state = classified(flow)
            state.caller = Caller("bench", None, ("g",), None)
            answered(flow, answer)
            assert isinstance(flow.response, http.Response)
            started = time.perf_counter()
            addon.response(flow)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    r = random.Random(21)
    print(f"{'data':<10} {'format':<7} {'text MB':>8} {'MB/s per core':>14}")
    for name, values in (
        ("typical", typical_values(100_000, r)),
        ("dense", dense_values(50_000)),
    ):
        json_answer, arrow_answer, size = answers(values)
        megabytes = size / 1e6
        for label, answer in (("arrow", arrow_answer), ("json", json_answer)):
            seconds = timed_mask(answer, ALL_KINDS, args.repeat)
            print(f"{name:<10} {label:<7} {megabytes:>8.1f} {megabytes / seconds:>14.0f}")
        columns = [pa.array([row[i] for row in values]) for i in range(3)]
        seconds = best(
            lambda cs=columns: [detect_array(c, frozenset(KINDS)) for c in cs], args.repeat
        )
        print(f"{name:<10} {'arrays':<7} {megabytes:>8.1f} {megabytes / seconds:>14.0f}")
    print()
    json_answer, arrow_answer, _ = answers(typical_values(args.rows, r))
    print(f"added latency, {args.rows} rows (median ms of the Masking response hook)")
    print(f"{'caller rules':<24} {'arrow':>8} {'json':>8}")
    for plan_name, label in (
        ("none", "no mask rules"),
        ("column", "column rule only"),
        ("detect", "all kinds detected"),
    ):
        arrow_ms = hook_latency(arrow_answer, plan_name, args.repeat)
        json_ms = hook_latency(json_answer, plan_name, args.repeat)
        print(f"{label:<24} {arrow_ms:>8.3f} {json_ms:>8.3f}")


if __name__ == "__main__":
    main()
