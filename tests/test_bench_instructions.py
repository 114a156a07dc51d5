"""scripts/bench_instructions.py reads callgrind's dumps as callgrind writes them.

Not a benchmark: a dump in callgrind's format (name compression, relative
positions, call arcs) and a perf map as Python writes them, built here, must
give the inclusive counts and the table the bench prints.
"""

from __future__ import annotations

from pathlib import Path

from scripts import bench_instructions
from scripts.bench_instructions import Counted

DUMP = """\
version: 1
creator: callgrind-3.19.0
events: Ir
summary: 1000
ob=(1) /usr/lib/libpython3.12.so
fl=(1) ceval.c
fn=(1) _PyEval_EvalFrameDefault
10 300
cfn=(2) 0x0000000000001000
calls=2 0
+2 500
fn=(2)
0 5
cfn=(1)
calls=2 0
* 400
cfn=(3) 0x0000000000001010'2
calls=1 0
-1 90
fn=(4) 0x0000000000002000
0 1
cfn=(1)
calls=1 0
0 77
"""
PERF_MAP = """\
1000 b py::AddonManager.trigger_event:/site-packages/mitmproxy/addonmanager.py
1010 b py::traverse:/site-packages/mitmproxy/addonmanager.py
2000 b py::unrelated:/x.py
"""
OWN_PERF_MAP = f"""\
1000 b py::Recording.request:{bench_instructions.PROJECT}/addons/recording.py
1010 b py::traverse:{bench_instructions.PROJECT}/.venv/lib/python3.12/site-packages/m/a.py
2000 b py::<module>:{bench_instructions.PROJECT}/.venv/bin/mitmdump
"""


def test_inclusive_counts_come_from_the_trampolines_call_arcs(tmp_path: Path) -> None:
    dump, perf_map = tmp_path / "callgrind.1.1-01", tmp_path / "perf-1.map"
    dump.write_text(DUMP)
    perf_map.write_text(PERF_MAP)
    assert bench_instructions.summary(dump) == 1000
    counts = bench_instructions.inclusive_by_function(
        dump, perf_map, ("AddonManager.trigger_event", "traverse")
    )
    # the trampoline at 0x1000 called 400 + 90 instructions' worth; its recursive name
    # (0x1010'2) maps to the code object at 0x1010
    assert counts == {"AddonManager.trigger_event": 490.0}
    assert "traverse" not in counts  # 0x1010 made no calls of its own


def test_the_project_s_own_functions_are_told_from_installed_code(tmp_path: Path) -> None:
    dump, perf_map = tmp_path / "callgrind.1.1-01", tmp_path / "perf-1.map"
    dump.write_text(DUMP)
    perf_map.write_text(OWN_PERF_MAP)
    counts = bench_instructions.inclusive_counts(dump, perf_map)
    assert counts[f"<module>:{bench_instructions.PROJECT}/.venv/bin/mitmdump"] == 77.0
    own = bench_instructions.own_functions(counts)
    # the project's venv (its packages, mitmdump's script) is under the root but not its code
    assert own == {"Recording.request (addons/recording.py)": 490.0}


def test_the_table_lists_the_project_s_largest_functions() -> None:
    bare = Counted("bare", 100, 1_000_000, 1_000_000)
    own = {f"f{i} (addons/x.py)": float(i * 1000) for i in range(40)}
    gateway = Counted("gateway", 10, 450_000, 500_000, own=own)
    text = bench_instructions.table([bare, gateway])
    shown = [line for line in text.splitlines() if line.startswith("| `f")]
    assert len(shown) == bench_instructions.OWN_FUNCTIONS_SHOWN
    assert shown[0] == "| `f39 (addons/x.py)` | 3,900 |"  # the largest first, per statement
    assert "| `f9 (addons/x.py)` |" not in text  # past the largest shown


def test_the_table_compares_each_target_with_bare(tmp_path: Path) -> None:
    bare = Counted("bare", 100, 1_000_000, 1_000_000)
    gateway = Counted("gateway", 50, 450_000, 500_000, {"traverse": 5_000.0})
    text = bench_instructions.table([bare, gateway])
    assert "| bare | 100 | 10,000 | 10,000 | 1.00x |" in text
    assert "| gateway | 50 | 9,000 | 10,000 | 0.90x |" in text
    assert "| `traverse` | 0 | 100 |" in text
