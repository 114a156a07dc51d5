"""Each open session's hash chain, and the writer id rotation that keeps the table small."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from hoopgw.recorder.schema import GENESIS_HASH

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Chain:
    """Chain state of one session's stream."""

    writer: str
    next_seq: int = 0
    prev_hash: str = GENESIS_HASH
    ended: bool = False
    last_append: float = 0.0


class ChainTable:
    """The chains of the sessions being recorded, by session id.

    No lock of its own: the writer touches it only under its queue lock, so that a
    record's seq and its place in the queue are taken together.
    """

    def __init__(
        self, writer_id: str, max_streams: int, max_finished_streams: int, idle_seconds: float
    ) -> None:
        self.writer_id = writer_id
        self.max_streams = max_streams
        self.max_finished_streams = max_finished_streams
        self.idle_seconds = idle_seconds
        self.chains: dict[str, Chain] = {}
        self.current_writer = writer_id
        self._finished = 0
        self._rotations = 0
        self._limit = max_streams

    def __len__(self) -> int:
        return len(self.chains)

    def new(self, session_id: str) -> Chain:
        """Forgets ended and idle sessions once enough have ended or the table is full."""
        if self._finished >= self.max_finished_streams or len(self.chains) >= self._limit:
            idle_before = time.monotonic() - self.idle_seconds
            self.chains = {
                sid: chain
                for sid, chain in self.chains.items()
                if not chain.ended and chain.last_append >= idle_before
            }
            self._finished = 0
            self._rotations += 1
            self.current_writer = f"{self.writer_id}r{self._rotations}"
            self._limit = max(self.max_streams, 2 * len(self.chains))
            logger.info("spool writer id rotated to %s", self.current_writer)
        chain = Chain(self.current_writer)
        self.chains[session_id] = chain
        return chain

    def mark_ended(self, chain: Chain) -> None:
        if not chain.ended:
            chain.ended = True
            self._finished += 1
