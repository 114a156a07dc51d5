"""hoopgw's mitmproxy entry point.

    mitmdump -s addons/gateway.py --mode reverse:https://ACCOUNT.snowflakecomputing.com@8443

This module only builds the addon list; each concern lives in the module named
after it, and the order below is the order of the hooks (see addons/flowstate.py).
mitmproxy sees one addon, `Gateway` (addons/dispatch.py): it calls the
concerns' flow hooks in this order and keeps them registered as its sub-addons.
"""

from __future__ import annotations

from hoopgw.addons import names
from hoopgw.addons.approval import ApprovalDesk, Approvals, ApprovalShared
from hoopgw.addons.attribution import Attribution
from hoopgw.addons.authentication import Authentication
from hoopgw.addons.chain import ChainGroups
from hoopgw.addons.contentview import snowflake_view  # noqa: F401  (registers the view)
from hoopgw.addons.cortex import Cortex
from hoopgw.addons.dispatch import Gateway
from hoopgw.addons.egress import StorageEgress
from hoopgw.addons.failclosed import FailClosed
from hoopgw.addons.guardrails import Guardrails
from hoopgw.addons.inspection import Inspection
from hoopgw.addons.lockdown import MitmproxyLockdown
from hoopgw.addons.masking import Masking
from hoopgw.addons.mcp import McpCalls
from hoopgw.addons.partitions import PartitionRecords, SqlApiPartitions
from hoopgw.addons.query_ids import QueryIds, StreamedIdBinding
from hoopgw.addons.recording import Recording
from hoopgw.addons.results import ChunkFetch, ResultChunks
from hoopgw.addons.session_context import SessionContextTracker
from hoopgw.addons.shared_port import SharedPort
from hoopgw.addons.startup import (
    QuietCollector,
    ReadyAnnouncer,
    free_finished_streams,
    one_line_option_errors,
    pin_malloc_mmap_threshold,
    skip_message_typecheck,
)
from hoopgw.addons.traffic import SnowflakeTraffic
from hoopgw.addons.transport import ClientDeadlines, ClientHttp1, RequireTls

pin_malloc_mmap_threshold()
skip_message_typecheck()
free_finished_streams()
approvals = ApprovalShared()
result_chunks = ResultChunks()
authentication = Authentication()
guardrails = Guardrails()
masking = Masking(guardrails, result_chunks)
query_ids = QueryIds(authentication.tokens)
partitions = SqlApiPartitions()
recording = Recording()
egress = StorageEgress()

concerns = [
    one_line_option_errors(addon)
    for addon in (
        MitmproxyLockdown(),
        ChainGroups(),  # after the lockdown, which takes addons out of the top-level chain
        ClientDeadlines(),
        SnowflakeTraffic(),
        RequireTls(),
        ClientHttp1(),
        ApprovalDesk(approvals),
        result_chunks,
        authentication,
        SessionContextTracker(),
        Attribution(),
        query_ids,
        guardrails,
        McpCalls(guardrails, masking),
        masking,
        StreamedIdBinding(query_ids),
        partitions,
        Cortex(masking, recording),
        recording,
        Approvals(approvals),
        egress,
        ChunkFetch(result_chunks, egress),
        PartitionRecords(partitions),
        Inspection(),
        FailClosed(
            required=(
                names.TRANSPORT,
                names.AUTHENTICATION,
                names.ATTRIBUTION,
                names.QUERY_IDS,
                names.GUARDRAILS,
                names.RECORDING,
                names.APPROVAL,
            )
        ),
        SharedPort(),
        QuietCollector(),
        ReadyAnnouncer(),
    )
]

addons = [Gateway(concerns)]
