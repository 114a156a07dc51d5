"""A bounded memory of keys seen once, so that a cache keeps only what comes back."""

from __future__ import annotations


class SeenOnce(dict[int, None]):
    """Hashes of keys seen once. Integers, so the cyclic collector never walks it; when
    full it starts afresh (a key then counts as new once more). A hash collision only
    lets a key count as seen one sight early."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def seen_before(self, key_hash: int) -> bool:
        """True for a key seen before; otherwise remember it and say False."""
        if key_hash in self:
            return True
        if len(self) >= self.limit:
            self.clear()
        self[key_hash] = None
        return False
