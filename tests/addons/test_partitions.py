"""SqlApiPartitions: partition fetches tied to the statement's session, only for its caller."""

from __future__ import annotations

from mitmproxy.test import taddons

from hoopgw.addons.flowstate import Caller
from hoopgw.addons.partitions import PartitionTie, SqlApiPartitions, partition_request
from tests.addons import STATEMENTS_PATH, answered, classified, snowflake_flow

HANDLE = "01b2c3d4-0000-4000-8000-000000000042"


def caller(subject: str) -> Caller:
    return Caller(subject, None, ("agents",), "AGENTS", "https://issuer.example")


def partitioned_answer() -> dict:
    return {
        "statementHandle": HANDLE,
        "resultSetMetaData": {"numRows": 6, "partitionInfo": [{"rowCount": 2}] * 3},
        "data": [["1"], ["2"]],
    }


async def test_a_partition_fetch_is_recorded_in_the_statements_session_for_its_caller():
    addon = SqlApiPartitions()
    with taddons.context(addon):
        post = snowflake_flow("POST", STATEMENTS_PATH, {"statement": "select 1"})
        state = classified(post)
        state.caller, state.session_id = caller("ada"), "statement-session"
        answered(post, partitioned_answer())
        await addon.response(post)
        assert addon.ties[HANDLE] == PartitionTie(HANDLE, "statement-session", "ada", (2, 2, 2))
        assert post.metadata["hoopgw"]["partitions_fetched"] == 1

        for subject, number, session in [
            ("ada", 2, "statement-session"),
            ("bea", 2, "own"),  # another caller: not tied (query_ids refuses it before this)
            ("ada", 3, "own"),  # no such partition
            ("ada", 0, "own"),  # partition 0 came inline
        ]:
            get = snowflake_flow("GET", f"{STATEMENTS_PATH}/{HANDLE}?partition={number}")
            fetch_state = classified(get)
            fetch_state.caller, fetch_state.session_id = caller(subject), "own"
            await addon.request(get)
            assert fetch_state.session_id == session, (subject, number)


def test_partition_requests_are_read_from_the_path_only():
    flow = snowflake_flow("GET", f"{STATEMENTS_PATH}/{HANDLE}?partition=7")
    assert partition_request(flow.request) == (HANDLE, 7)
    flow = snowflake_flow("GET", f"{STATEMENTS_PATH}/{HANDLE}?partition=7&partition=8")
    assert partition_request(flow.request) == (HANDLE, None)
    flow = snowflake_flow("GET", f"{STATEMENTS_PATH}/{HANDLE}/cancel?partition=1")
    assert partition_request(flow.request) == (None, None)
